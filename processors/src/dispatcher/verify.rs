//! The saga's provider requests: status queries, voids and refunds (`ProviderRequest` on
//! `payments.provider-requests`), answered as `DispatchOutcome`s whose `commandId` is the
//! request's id.
//!
//! | request | HTTP | answers |
//! |---|---|---|
//! | status query | `GET /v1/charges/{key}` | `CHARGED` (a successful charge), `NOT_CHARGED` (none, declined, voided, refunded; or 404 with `charge: NONE`), `PENDING` |
//! | void | `POST /v1/charges/{key}/void` | `VOIDED` (the key can never be charged; also a declined or refunded one), `CHARGED` (409 already charged), `PENDING` (409 pending) |
//! | refund | `POST /v1/charges/{key}/refund` `{amount, currency}` | `REFUNDED`, `NOT_CHARGED` (409 nothing to refund), `PENDING` |
//!
//! A timeout, a connection error, a 5xx, 408 or 429 is retried with the charges' policy;
//! when the attempts run out, or the provider answers something this module cannot read
//! as one of the rows above (another 4xx, a body without the state), the answer is
//! `UNANSWERED`: the saga asks again later and alerts past its bound, never guessing. Every
//! request is idempotent at the provider, so repeating one (a retry here, a redelivery after a
//! crash) is harmless; the saga keeps only the answer to the request it has outstanding.
//!
//! Requests have a topic and a consumer loop of their own, so a verification never waits
//! behind charges stuck in `payments.provider-commands`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use paystream_schemas::events::{DispatchOutcome, DispatchResult, ProviderAction, ProviderRequest};
use paystream_schemas::time;
use paystream_stack::trace;
use paystream_topology::dlq::truncate;
use serde_json::{json, Value};
use tracing::Instrument;

use super::provider::{self, AttemptError, ANSWER_EXCERPT_BYTES_MAX};
use super::{Dispatch, DispatchError, DETAIL_BYTES_MAX};
use crate::consumer::{Context, Handled, Handler, Stop};
use crate::dispatcher::dedup::DedupWindow;

/// What one HTTP answer means for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// The provider decided: report this.
    Decided(DispatchResult),
    /// Worth another attempt (5xx, 408, 429, a timeout, no connection).
    Retry(AttemptError),
    /// An answer that decides nothing and that a retry will not change (another 4xx, an
    /// unreadable body): reported UNANSWERED at once.
    Undecidable(String),
}

/// The `charge` state in an answer's body, if any.
fn charge_state(body: &Value) -> Option<&str> {
    body.get("charge").and_then(Value::as_str)
}

/// Reads the provider's answer `status` + `body` to `action`. Pure: the table of the module doc.
pub fn read(action: &ProviderAction, status: u16, body: &Value) -> Reading {
    let problem = body.get("type").and_then(Value::as_str).unwrap_or_default();
    let state = charge_state(body);
    let excerpt = || truncate(&body.to_string(), ANSWER_EXCERPT_BYTES_MAX).to_owned();
    match status {
        500..=599 => return Reading::Retry(AttemptError::ServerError { status, excerpt: excerpt() }),
        408 | 429 => return Reading::Retry(AttemptError::Throttled { status, excerpt: excerpt() }),
        _ => {}
    }
    let decided = match (action, status, state, problem) {
        (_, 409, _, "/problems/charge-pending") | (_, 200..=299, Some("PENDING"), _) => {
            DispatchResult::Pending
        }
        (ProviderAction::StatusQuery { .. }, 200..=299, Some("SUCCEEDED"), _) => DispatchResult::Charged,
        (
            ProviderAction::StatusQuery { .. },
            200..=299,
            Some("NONE" | "DECLINED" | "VOIDED" | "REFUNDED"),
            _,
        )
        | (ProviderAction::StatusQuery { .. }, 404, Some("NONE"), _) => DispatchResult::NotCharged,
        (ProviderAction::Void { .. }, 200..=299, Some("VOIDED" | "DECLINED" | "REFUNDED"), _) => {
            DispatchResult::Voided
        }
        (ProviderAction::Void { .. }, 409, _, "/problems/already-charged") => DispatchResult::Charged,
        (ProviderAction::Refund { .. }, 200..=299, Some("REFUNDED"), _) => DispatchResult::Refunded,
        (ProviderAction::Refund { .. }, 409, _, "/problems/not-charged") => DispatchResult::NotCharged,
        _ => return Reading::Undecidable(format!("provider answered {status}: {}", excerpt())),
    };
    Reading::Decided(decided)
}

/// Calls the provider's status, void and refund endpoints, one attempt at a time.
#[derive(Clone, Debug)]
pub struct RequestClient {
    /// Pooled connections, with the dispatcher's connect and request timeouts.
    http: reqwest::Client,
    /// `{provider}/v1/charges`.
    charges_url: String,
}

impl RequestClient {
    /// A client for the provider at `base_url`, with the charges' timeouts.
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            http: provider::http_client(connect_timeout, request_timeout)?,
            charges_url: provider::charges_url(base_url),
        })
    }

    /// One attempt of `request`, in a client span of its own (named like the simulator's route,
    /// `GET /v1/charges/{key}`, …) whose trace context the request carries (`traceparent`), so the
    /// saga's verification and its undoing stay in the payment's trace as its charge does.
    pub async fn attempt(&self, request: &ProviderRequest) -> Reading {
        let (method, route) = match &request.action {
            ProviderAction::StatusQuery { .. } => ("GET", "/v1/charges/{key}"),
            ProviderAction::Void { .. } => ("POST", "/v1/charges/{key}/void"),
            ProviderAction::Refund { .. } => ("POST", "/v1/charges/{key}/refund"),
        };
        let span = tracing::info_span!(
            "provider request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "client",
            payment_id = %request.payment_id,
            request = request.action.label(),
            http.request.method = method,
            url.full = %format_args!("{}{}", self.charges_url, route.trim_start_matches("/v1/charges")),
        );
        self.attempt_once(request).instrument(span).await
    }

    async fn attempt_once(&self, request: &ProviderRequest) -> Reading {
        let key = request.payment_id;
        let mut trace_headers = reqwest::header::HeaderMap::new();
        trace::inject_http(&mut trace_headers);
        let sent = match &request.action {
            ProviderAction::StatusQuery { .. } => self.http.get(format!("{}/{key}", self.charges_url)),
            ProviderAction::Void { .. } => self.http.post(format!("{}/{key}/void", self.charges_url)),
            ProviderAction::Refund { amount, currency, .. } => self
                .http
                .post(format!("{}/{key}/refund", self.charges_url))
                .json(&json!({ "amount": amount.to_string(), "currency": currency })),
        }
        .headers(trace_headers)
        .send();
        let response = match sent.await {
            Ok(response) => response,
            Err(error) if error.is_timeout() => return Reading::Retry(AttemptError::Timeout),
            Err(error) if error.is_connect() => {
                return Reading::Retry(AttemptError::Connect(error.to_string()))
            }
            Err(error) => return Reading::Retry(AttemptError::Other(error.to_string())),
        };
        let status = response.status().as_u16();
        // The answers are small JSON documents; one that is not JSON reads as undecidable.
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        read(&request.action, status, &body)
    }
}

/// The handler of the requests loop.
pub(super) struct Verify {
    /// The dispatcher's outcome producer, HTTP policy, semaphore and metrics.
    pub(super) dispatch: Arc<Dispatch>,
    /// The provider's status, void and refund endpoints.
    pub(super) client: RequestClient,
    /// Request ids answered recently (saves calls; the provider's idempotency is the guarantee).
    pub(super) dedup: Mutex<DedupWindow>,
}

impl Verify {
    fn lock_dedup(&self) -> std::sync::MutexGuard<'_, DedupWindow> {
        // Every change to the window is a single call; a panic elsewhere leaves it usable.
        self.dedup.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks the provider until it decides, the attempts run out or the answer is undecidable;
    /// `None` when the stop signal arrives first.
    async fn ask(&self, request: &ProviderRequest, stop: &Stop) -> Option<(DispatchResult, u32, String)> {
        let policy = self.dispatch.config.http_retry;
        let metrics = &self.dispatch.config.metrics;
        let attempts_max = policy.attempts_max.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reading = {
                let _permit = tokio::select! {
                    biased;
                    () = stop.requested() => return None,
                    // The semaphore is never closed, so acquiring only waits.
                    permit = self.dispatch.calls.acquire() => permit.ok()?,
                };
                metrics.in_flight().inc();
                let reading = self.client.attempt(request).await;
                metrics.in_flight().dec();
                reading
            };
            let error = match reading {
                Reading::Decided(answer) => {
                    return Some((answer, attempt, format!("provider answered {}", answer.symbol())))
                }
                Reading::Undecidable(detail) => return Some((DispatchResult::Unanswered, attempt, detail)),
                Reading::Retry(error) => error,
            };
            if attempt >= attempts_max {
                let detail = format!("no answer after {attempt} attempts; last: {error}");
                return Some((DispatchResult::Unanswered, attempt, detail));
            }
            let delay = policy.full_jitter(attempt, &mut rand::rng());
            tracing::warn!(
                payment_id = %request.payment_id,
                request = request.action.label(),
                attempt,
                %error,
                delay_ms = delay.as_millis() as u64,
                "provider request failed; retrying"
            );
            tokio::select! {
                () = stop.requested() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl Handler for Verify {
    type Event = ProviderRequest;
    type Error = DispatchError;

    /// Deduplicates, asks the provider and reports its answer to one request.
    async fn handle(&self, request: &ProviderRequest, context: &mut Context<'_>) -> Handled<DispatchError> {
        let metrics = &self.dispatch.config.metrics;
        if self.lock_dedup().contains(&request.request_id) {
            metrics.record_duplicate();
            return Handled::Done;
        }
        let Some((answer, attempts, detail)) = self.ask(request, context.stop).await else {
            return Handled::Interrupted;
        };
        let outcome = DispatchOutcome {
            command_id: request.request_id,
            payment_id: request.payment_id,
            outcome: answer,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            detail: truncate(&detail, DETAIL_BYTES_MAX).to_owned(),
            decided_at: time::now(),
        };
        match self.dispatch.publish(&outcome, context).await {
            Handled::Done => {}
            unfinished => return unfinished,
        }
        self.lock_dedup().insert(request.request_id);
        metrics.record_request(request.action.label(), answer);
        tracing::info!(
            payment_id = %request.payment_id,
            request_id = %request.request_id,
            request = request.action.label(),
            answer = answer.symbol(),
            attempts,
            %detail,
            "provider request answered"
        );
        Handled::Done
    }
}

#[cfg(test)]
mod tests {
    use paystream_schemas::Amount;

    use super::*;

    fn status() -> ProviderAction {
        ProviderAction::StatusQuery { reason: "timer".into() }
    }
    fn void() -> ProviderAction {
        ProviderAction::Void { reason: "no charge".into() }
    }
    fn refund() -> ProviderAction {
        ProviderAction::Refund {
            amount: Amount::from_minor(100).unwrap(),
            currency: "RUB".into(),
            reason: "late".into(),
        }
    }
    fn state(charge: &str) -> Value {
        json!({ "key": "k", "charge": charge })
    }
    fn problem(slug: &str) -> Value {
        json!({ "type": format!("/problems/{slug}"), "status": 409, "charge": "X" })
    }
    fn decided(result: DispatchResult) -> Reading {
        Reading::Decided(result)
    }

    #[test]
    fn a_status_query_reads_charged_not_charged_or_pending() {
        assert_eq!(read(&status(), 200, &state("SUCCEEDED")), decided(DispatchResult::Charged));
        for none in ["NONE", "DECLINED", "VOIDED", "REFUNDED"] {
            assert_eq!(read(&status(), 200, &state(none)), decided(DispatchResult::NotCharged), "{none}");
        }
        assert_eq!(read(&status(), 404, &state("NONE")), decided(DispatchResult::NotCharged));
        assert_eq!(read(&status(), 200, &state("PENDING")), decided(DispatchResult::Pending));
        assert!(
            matches!(read(&status(), 404, &json!({"error": "no route"})), Reading::Undecidable(_)),
            "a 404 that does not say NONE is not evidence of no charge"
        );
    }

    #[test]
    fn a_void_reads_voided_charged_or_pending() {
        for harmless in ["VOIDED", "DECLINED", "REFUNDED"] {
            assert_eq!(read(&void(), 200, &state(harmless)), decided(DispatchResult::Voided), "{harmless}");
        }
        assert_eq!(read(&void(), 409, &problem("already-charged")), decided(DispatchResult::Charged));
        assert_eq!(read(&void(), 409, &problem("charge-pending")), decided(DispatchResult::Pending));
        assert!(matches!(read(&void(), 200, &state("SUCCEEDED")), Reading::Undecidable(_)));
    }

    #[test]
    fn a_refund_reads_refunded_not_charged_or_pending() {
        assert_eq!(read(&refund(), 200, &state("REFUNDED")), decided(DispatchResult::Refunded));
        assert_eq!(read(&refund(), 409, &problem("not-charged")), decided(DispatchResult::NotCharged));
        assert_eq!(read(&refund(), 409, &problem("charge-pending")), decided(DispatchResult::Pending));
        assert!(matches!(read(&refund(), 422, &problem("refund-mismatch")), Reading::Undecidable(_)));
    }

    #[test]
    fn outages_are_retried_and_nothing_else_is_guessed() {
        for action in [status(), void(), refund()] {
            assert!(matches!(
                read(&action, 503, &Value::Null),
                Reading::Retry(AttemptError::ServerError { .. })
            ));
            assert!(matches!(
                read(&action, 429, &Value::Null),
                Reading::Retry(AttemptError::Throttled { .. })
            ));
            assert!(matches!(read(&action, 400, &Value::Null), Reading::Undecidable(_)));
            assert!(matches!(read(&action, 200, &Value::Null), Reading::Undecidable(_)));
            assert!(matches!(read(&action, 302, &Value::Null), Reading::Undecidable(_)));
        }
    }
}
