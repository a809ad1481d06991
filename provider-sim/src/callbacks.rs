//! Delivering callbacks: at the planned time, signed, retried within bounds.
//!
//! Each accepted charge holds one pending slot ([`crate::SimConfig::callbacks_in_flight_max`])
//! from acceptance until its last callback is delivered, given up or abandoned; its task
//! sleeps until the planned delay has passed, then posts what its [`Fate`] says. A POST is
//! signed anew on every attempt (`Paystream-Signature: t=…,v1=…`, with the first configured
//! secret, by `paystream_api::signature::sign`, the function the API verifies with). The
//! event's id travels inside the signed body (`eventId`), so a redelivery is recognisable as
//! the same event and nobody without the secret can give a captured callback another id; the
//! `X-Provider-Event-Id` header repeats it for logs only (the API does not read unsigned
//! headers). A 5xx, 408, 429, timeout or connection
//! error is retried with full-jitter backoff up to `callback_attempts_max` attempts; any
//! other 4xx means the API refuses it for good (a wrong secret, a malformed body) and is
//! logged as an error and not retried. At most `callback_concurrency_max` POSTs are on the
//! wire at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_api::{signature, timestamp};
use rand::Rng;
use serde_json::json;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::Instrument;
use uuid::Uuid;

use crate::charges::Entry;
use crate::decide::{Fate, Plan, Verdict};
use crate::server::Sim;

/// The header repeating the provider's event id, for logs and proxies; not signed, so the API
/// deduplicates by the body's `eventId` instead.
pub const EVENT_ID_HEADER: &str = "x-provider-event-id";

/// One callback, ready to post.
#[derive(Clone, Debug)]
pub struct Notice {
    /// The body's `eventId` (and `X-Provider-Event-Id`): the same for a redelivery, another
    /// for another event.
    pub event_id: String,
    /// The status it reports.
    pub verdict: Verdict,
    /// The JSON body, byte for byte what is signed.
    pub body: Vec<u8>,
}

impl Notice {
    /// The callback `{paymentId, status, description, timestamp, eventId}` of
    /// `api/src/callbacks.rs`, the timestamp in the seeds' `yyyyMMdd-HH:mm:ss:SSSSSS` form.
    pub fn new(
        payment_id: Uuid,
        verdict: Verdict,
        sequence: u32,
        description: &str,
        at: DateTime<Utc>,
    ) -> Self {
        let event_id = format!("evt_{}_{sequence}", payment_id.simple());
        let body = json!({
            "paymentId": payment_id,
            "status": verdict.symbol(),
            "description": description,
            "timestamp": timestamp::format(at),
            "eventId": event_id,
        });
        Self {
            event_id,
            verdict,
            // Serialising a `Value` built from strings cannot fail.
            body: serde_json::to_vec(&body).expect("a JSON value serialises"),
        }
    }
}

fn description(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Succeeded => "approved by the simulated provider",
        Verdict::Failed => "declined by the simulated provider",
    }
}

/// Decrements the pending gauge when the charge's task ends, however it ends.
struct PendingGuard(prometheus::IntGauge);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Starts the task that delivers `payment_id`'s callbacks according to `plan`; `slot` is
/// released when it ends.
pub(crate) fn schedule(sim: Arc<Sim>, key: String, payment_id: Uuid, plan: Plan, slot: OwnedSemaphorePermit) {
    sim.metrics.pending().inc();
    let guard = PendingGuard(sim.metrics.pending().clone());
    let accepted_at = Utc::now();
    // The callbacks' span, a child of the charge request's: each POST carries its context, so the
    // API's callback joins the payment's trace.
    let span = tracing::info_span!(
        "provider callbacks",
        otel.name = "provider-sim callbacks",
        otel.kind = "producer",
        payment_id = %payment_id,
        delay_ms = plan.delay.as_millis() as u64,
    );
    let delivery = async move {
        let _slot = slot;
        let _guard = guard;
        let mut abandon = sim.abandon.clone();
        if !pause(plan.delay, &mut abandon).await {
            return abandoned(&sim, &key);
        }
        let verdict = Notice::new(payment_id, plan.verdict, 2, description(plan.verdict), Utc::now());
        let kind = if plan.fate == Fate::Reordered { Fate::Reordered } else { Fate::Normal };
        let second = match plan.fate {
            Fate::Lost => {
                sim.metrics.callback(plan.verdict, Fate::Lost);
                tracing::info!(key, status = plan.verdict.symbol(), "callback lost on purpose");
                return;
            }
            Fate::Normal => None,
            Fate::Duplicate => Some((verdict.clone(), Fate::Duplicate)),
            Fate::Reordered => {
                // An event the provider decided halfway through (and timestamped so), which
                // arrives after the final verdict.
                let earlier = accepted_at + chrono::Duration::from_std(plan.delay / 2).unwrap_or_default();
                let stale = plan.verdict.opposite();
                Some((
                    Notice::new(payment_id, stale, 1, "provisional answer, superseded", earlier),
                    Fate::Reordered,
                ))
            }
        };
        if !deliver(&sim, &key, &verdict, kind, &mut abandon).await {
            return abandoned(&sim, &key);
        }
        if let Some((notice, kind)) = second {
            if !pause(sim.config.second_callback_delay, &mut abandon).await
                || !deliver(&sim, &key, &notice, kind, &mut abandon).await
            {
                abandoned(&sim, &key);
            }
        }
    };
    tokio::spawn(delivery.instrument(span));
}

fn abandoned(sim: &Sim, key: &str) {
    sim.metrics.delivery("abandoned");
    tracing::warn!(key, "shutting down: a pending callback is abandoned");
}

/// Sleeps `delay`; false when abandoned first.
async fn pause(delay: Duration, abandon: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = abandoned_signal(abandon) => false,
    }
}

/// Completes when the server gives up on pending callbacks (or is gone).
async fn abandoned_signal(abandon: &mut watch::Receiver<bool>) {
    let _ = abandon.wait_for(|abandon| *abandon).await;
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// A 4xx other than 408/429: retrying cannot help.
    Refused(u16),
    Transient(String),
}

/// Posts `notice` until it is delivered, refused or out of attempts; false when abandoned.
async fn deliver(
    sim: &Sim,
    key: &str,
    notice: &Notice,
    kind: Fate,
    abandon: &mut watch::Receiver<bool>,
) -> bool {
    sim.metrics.callback(notice.verdict, kind);
    let attempts_max = sim.config.callback_attempts_max;
    for attempt in 1..=attempts_max {
        let outcome = tokio::select! {
            outcome = post(sim, notice) => outcome,
            () = abandoned_signal(abandon) => return false,
        };
        match outcome {
            Attempt::Delivered => {
                sim.metrics.delivery("delivered");
                mark_delivered(sim, key);
                tracing::info!(key, event_id = %notice.event_id, status = notice.verdict.symbol(), kind = kind.label(), "callback delivered");
                return true;
            }
            Attempt::Refused(status) => {
                sim.metrics.delivery("refused");
                tracing::error!(key, event_id = %notice.event_id, status, "the API refused the callback (wrong secret or URL?); not retried");
                return true;
            }
            Attempt::Transient(error) if attempt < attempts_max => {
                sim.metrics.callback_retry();
                let delay = full_jitter(
                    attempt,
                    sim.config.callback_backoff_initial,
                    sim.config.callback_backoff_max,
                );
                tracing::warn!(key, event_id = %notice.event_id, attempt, %error, delay_ms = delay.as_millis() as u64, "callback failed; retrying");
                if !pause(delay, abandon).await {
                    return false;
                }
            }
            Attempt::Transient(error) => {
                sim.metrics.delivery("gave-up");
                tracing::error!(key, event_id = %notice.event_id, attempts = attempts_max, %error, "callback given up");
                return true;
            }
        }
    }
    true
}

/// One signed POST, within the concurrency bound.
async fn post(sim: &Sim, notice: &Notice) -> Attempt {
    // The semaphore is never closed, so acquiring only waits.
    let Ok(_slot) = sim.posting.acquire().await else { return Attempt::Transient("closed".into()) };
    let signed = signature::sign(&sim.config.signing_secret, Utc::now().timestamp(), &notice.body);
    let mut trace_headers = reqwest::header::HeaderMap::new();
    paystream_stack::trace::inject_http(&mut trace_headers);
    let sent = sim
        .http
        .post(&sim.config.callback_url)
        .headers(trace_headers)
        .header("content-type", "application/json")
        .header(signature::HEADER, signed)
        .header(EVENT_ID_HEADER, &notice.event_id)
        .body(notice.body.clone())
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => Attempt::Delivered,
        Ok(response) => {
            let status = response.status().as_u16();
            if matches!(status, 408 | 429) || status >= 500 {
                Attempt::Transient(format!("answered {status}"))
            } else {
                Attempt::Refused(status)
            }
        }
        Err(error) => {
            // reqwest's own message is generic ("error sending request"); the cause is in
            // its sources.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            Attempt::Transient(text)
        }
    }
}

fn mark_delivered(sim: &Sim, key: &str) {
    let mut store = sim.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(Entry::Accepted { callbacks_delivered, .. }) = store.get_mut(key) {
        *callbacks_delivered += 1;
    }
}

/// Full jitter (AWS's "exponential backoff and jitter"): uniform in `0..=ceiling`, where
/// the ceiling doubles from `initial` per failure and stops at `max`.
pub fn full_jitter(failures: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
    let ceiling = initial.saturating_mul(factor).min(max);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_the_api_s_callback_body() {
        let id = Uuid::new_v4();
        let at = DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
        let notice = Notice::new(id, Verdict::Failed, 1, "declined", at);
        let body: serde_json::Value = serde_json::from_slice(&notice.body).unwrap();
        assert_eq!(body["paymentId"], id.to_string());
        assert_eq!(body["status"], "FAILED");
        assert_eq!(body["description"], "declined");
        assert_eq!(timestamp::parse(body["timestamp"].as_str().unwrap()), Some(at));
        assert_eq!(notice.event_id, format!("evt_{}_1", id.simple()));
        assert_eq!(body["eventId"], notice.event_id, "the event id is signed with the body");
    }

    #[test]
    fn full_jitter_stays_under_its_ceiling() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(1_000));
        for failures in [1, 2, 3, 4, 10, 40, u32::MAX] {
            let ceiling = initial.saturating_mul(1u32.checked_shl(failures - 1).unwrap_or(u32::MAX)).min(max);
            for _ in 0..200 {
                assert!(full_jitter(failures, initial, max) <= ceiling, "{failures}");
            }
        }
    }
}
