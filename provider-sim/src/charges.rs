//! `POST /v1/charges` and `GET /v1/charges/{key}`: taking charges, idempotently.
//!
//! A charge carries `Idempotency-Key: <paymentId>` and a JSON body
//! `{paymentId, amount, currency, description}` (amount a decimal string with exactly two
//! places). The first acceptable attempt for a key is answered `202 Accepted` and its
//! callbacks are scheduled; the same key with the same body again gets the same answer and
//! schedules nothing; the same key with another body is `409`. An attempt answered `503`
//! (a configured fault, or too many callbacks pending) takes nothing, so a retry with the
//! same key may still succeed. Invalid requests are `400`/`422` and are not remembered.
//!
//! The store of keys is bounded ([`crate::SimConfig::charges_max`]); when it is full the
//! oldest key is forgotten, and a charge repeated after that would be taken a second time.
//! A real provider keeps keys for a day or so; the bound only has to exceed what is in
//! flight.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use paystream_schemas::Amount;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::callbacks;
use crate::decide::Plan;
use crate::server::Sim;

/// The request header that names a charge.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Longest idempotency key accepted.
pub const KEY_BYTES_MAX: usize = 255;
/// Longest description accepted (the API's own limit for a payment).
pub const DESCRIPTION_CHARS_MAX: usize = 500;

/// The body of `POST /v1/charges`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChargeBody {
    payment_id: Uuid,
    amount: String,
    currency: String,
    description: String,
}

/// A valid charge request; two attempts with the same key are the same charge when these
/// are equal (whatever the JSON's spacing or field order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub payment_id: Uuid,
    pub amount: Amount,
    pub currency: String,
    pub description: String,
}

/// Why a request is not a charge: a `400` or `422` with a problem type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub status: StatusCode,
    pub slug: &'static str,
    pub detail: String,
}

fn invalid(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Invalid {
    Invalid { status, slug, detail: detail.into() }
}

/// Validates a charge request: the key, the JSON and every field.
pub fn validate(key: Option<&str>, body: &[u8]) -> Result<(String, Charge), Invalid> {
    let key = match key.map(str::trim) {
        Some(key) if !key.is_empty() && key.len() <= KEY_BYTES_MAX => key.to_owned(),
        _ => {
            return Err(invalid(
                StatusCode::BAD_REQUEST,
                "missing-idempotency-key",
                "Idempotency-Key (the paymentId) is required",
            ))
        }
    };
    let body: ChargeBody = serde_json::from_slice(body).map_err(|error| {
        let status = match error.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        invalid(status, "malformed-charge", error.to_string())
    })?;
    if Uuid::from_str(&key).ok() != Some(body.payment_id) {
        return Err(invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-mismatch",
            "Idempotency-Key must be the paymentId",
        ));
    }
    let amount = parse_amount(&body.amount).ok_or_else(|| {
        invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-amount",
            format!("amount {:?} is not a positive decimal string with two places", body.amount),
        )
    })?;
    if !(body.currency.len() == 3 && body.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-currency",
            format!("currency {:?} is not an ISO 4217 code", body.currency),
        ));
    }
    if body.description.chars().count() > DESCRIPTION_CHARS_MAX {
        return Err(invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-description",
            format!("description is longer than {DESCRIPTION_CHARS_MAX} characters"),
        ));
    }
    Ok((
        key,
        Charge {
            payment_id: body.payment_id,
            amount,
            currency: body.currency,
            description: body.description,
        },
    ))
}

/// `"12.30"`: digits, a point, exactly two digits, within the amount's bounds.
fn parse_amount(text: &str) -> Option<Amount> {
    let (units, cents) = text.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(units) && units.len() <= 9 && cents.len() == 2 && digits(cents)) {
        return None;
    }
    Amount::from_str(text).ok()
}

/// What the store knows about a key.
#[derive(Clone, Debug)]
pub(crate) enum Entry {
    /// Every attempt so far was answered 503; nothing was taken.
    Refused { attempts: u32 },
    /// Taken: the charge as first accepted and what was decided about it.
    Accepted { charge: Charge, attempts: u32, plan: Plan, callbacks_delivered: u32 },
}

/// The idempotency store: keys in arrival order, bounded, oldest forgotten first.
pub(crate) struct Store {
    entries: HashMap<String, Entry>,
    /// Keys in insertion order, for eviction; each key appears once.
    order: VecDeque<String>,
    /// Most keys kept.
    max: usize,
}

impl Store {
    pub(crate) fn new(max: usize) -> Self {
        assert!(max >= 1, "the configuration is validated");
        Self { entries: HashMap::new(), order: VecDeque::new(), max }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.entries.get_mut(key)
    }

    /// Sets `key`'s entry, forgetting the oldest key when a new one would pass the bound.
    pub(crate) fn put(&mut self, key: &str, entry: Entry) {
        if let Some(existing) = self.entries.get_mut(key) {
            *existing = entry;
            return;
        }
        while self.entries.len() >= self.max {
            let Some(oldest) = self.order.pop_front() else { break };
            self.entries.remove(&oldest);
        }
        self.entries.insert(key.to_owned(), entry);
        self.order.push_back(key.to_owned());
        debug_assert_eq!(self.entries.len(), self.order.len());
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// What the store decided for one attempt.
enum Decision {
    /// A new charge: schedule its callbacks, holding the pending slot until they are sent.
    Accept(Plan, tokio::sync::OwnedSemaphorePermit),
    /// The same charge again.
    Replay,
    /// The same key, another charge.
    Conflict,
    /// 503 by the fault rate.
    Unavailable,
    /// 503 because every pending slot is taken.
    Overloaded,
}

/// `POST /v1/charges`.
pub(crate) async fn create(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers.get(IDEMPOTENCY_KEY_HEADER).and_then(|v| v.to_str().ok());
    let (key, charge) = match validate(key, &body) {
        Ok(valid) => valid,
        Err(invalid) => {
            sim.metrics.charge("invalid");
            tracing::info!(slug = invalid.slug, detail = %invalid.detail, "charge refused");
            return problem(invalid.status, invalid.slug, &invalid.detail);
        }
    };
    let decision = decide(&sim, &key, &charge);
    match decision {
        Decision::Accept(plan, slot) => {
            sim.metrics.charge("accepted");
            tracing::info!(
                key = %key,
                verdict = plan.verdict.symbol(),
                fate = plan.fate.label(),
                delay_ms = plan.delay.as_millis() as u64,
                "charge accepted"
            );
            callbacks::schedule(sim.clone(), key, charge.payment_id, plan, slot);
            accepted(charge.payment_id)
        }
        Decision::Replay => {
            sim.metrics.charge("replayed");
            accepted(charge.payment_id)
        }
        Decision::Conflict => {
            sim.metrics.charge("conflict");
            problem(StatusCode::CONFLICT, "idempotency-key-reused", "this key was used for another charge")
        }
        Decision::Unavailable => {
            sim.metrics.charge("unavailable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "simulated outage; retry with the same key",
            )
        }
        Decision::Overloaded => {
            sim.metrics.charge("overloaded");
            problem(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many charges pending; retry later")
        }
    }
}

/// The store's part, under its lock (no `.await` inside).
fn decide(sim: &Sim, key: &str, charge: &Charge) -> Decision {
    // A panic while holding the lock leaves a consistent map (every change is one
    // statement), so a poisoned lock is used as it is.
    let mut store = sim.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let attempts = match store.get_mut(key) {
        Some(Entry::Accepted { charge: first, attempts, .. }) => {
            *attempts = attempts.saturating_add(1);
            return if first == charge { Decision::Replay } else { Decision::Conflict };
        }
        Some(Entry::Refused { attempts }) => attempts.saturating_add(1),
        None => 1,
    };
    if sim.config.rates.charge_fails(key, attempts) {
        store.put(key, Entry::Refused { attempts });
        return Decision::Unavailable;
    }
    let Ok(slot) = sim.pending_slots.clone().try_acquire_owned() else {
        store.put(key, Entry::Refused { attempts });
        return Decision::Overloaded;
    };
    let plan = sim.config.rates.plan(key);
    store.put(key, Entry::Accepted { charge: charge.clone(), attempts, plan, callbacks_delivered: 0 });
    Decision::Accept(plan, slot)
}

/// The answer to a charge taken (the first time and every replay).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    charge_id: String,
    payment_id: Uuid,
    status: &'static str,
}

fn accepted(payment_id: Uuid) -> Response {
    let body = Accepted { charge_id: format!("ch_{}", payment_id.simple()), payment_id, status: "PENDING" };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn problem(status: StatusCode, slug: &str, detail: &str) -> Response {
    let body = json!({ "type": format!("/problems/{slug}"), "status": status.as_u16(), "detail": detail });
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

/// `GET /v1/charges/{key}`: what the simulator decided and did, for people and tests.
pub(crate) async fn show(State(sim): State<Arc<Sim>>, Path(key): Path<String>) -> Response {
    let store = sim.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match store.get(&key) {
        None => problem(StatusCode::NOT_FOUND, "not-found", "no charge with this key is remembered"),
        Some(Entry::Refused { attempts }) => {
            Json(json!({ "key": key, "state": "REFUSED", "attempts": attempts })).into_response()
        }
        Some(Entry::Accepted { charge, attempts, plan, callbacks_delivered }) => Json(json!({
            "key": key,
            "state": "ACCEPTED",
            "paymentId": charge.payment_id,
            "amount": charge.amount.to_string(),
            "currency": charge.currency,
            "attempts": attempts,
            "verdict": plan.verdict.symbol(),
            "fate": plan.fate.label(),
            "delayMs": plan.delay.as_millis() as u64,
            "callbacksDelivered": callbacks_delivered,
        }))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::decide::{Fate, Verdict};

    const ID: &str = "6a3c2f4e-1b2d-4c5e-8f90-0123456789ab";

    fn body(amount: &str, currency: &str) -> String {
        format!(r#"{{"paymentId":"{ID}","amount":"{amount}","currency":"{currency}","description":"tea"}}"#)
    }

    #[test]
    fn a_valid_charge_and_what_is_refused() {
        let (key, charge) = validate(Some(ID), body("12.30", "RUB").as_bytes()).unwrap();
        assert_eq!(key, ID);
        assert_eq!(charge.amount.minor(), 1_230);
        let refused = |key: Option<&str>, body: &str| validate(key, body.as_bytes()).unwrap_err().slug;
        assert_eq!(refused(None, &body("1.00", "RUB")), "missing-idempotency-key");
        assert_eq!(refused(Some(" "), &body("1.00", "RUB")), "missing-idempotency-key");
        assert_eq!(
            refused(Some(&Uuid::new_v4().to_string()), &body("1.00", "RUB")),
            "idempotency-key-mismatch"
        );
        for amount in ["1", "1.0", "1.005", "-1.00", "0.00", "1e2", "1000000000.00", ".50", "1.5O"] {
            assert_eq!(refused(Some(ID), &body(amount, "RUB")), "invalid-amount", "{amount}");
        }
        for currency in ["rub", "RUBL", "RU", "R1B"] {
            assert_eq!(refused(Some(ID), &body("1.00", currency)), "invalid-currency", "{currency}");
        }
        let malformed = validate(Some(ID), b"{not json").unwrap_err();
        assert_eq!((malformed.status, malformed.slug), (StatusCode::BAD_REQUEST, "malformed-charge"));
        let numeric = validate(Some(ID), format!(r#"{{"paymentId":"{ID}","amount":1.5}}"#).as_bytes());
        assert_eq!(numeric.unwrap_err().status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn the_store_forgets_the_oldest_key_first_and_stays_bounded() {
        let mut store = Store::new(2);
        let plan = Plan { verdict: Verdict::Succeeded, delay: Duration::ZERO, fate: Fate::Normal };
        let (_, charge) = validate(Some(ID), body("1.00", "RUB").as_bytes()).unwrap();
        store.put("a", Entry::Refused { attempts: 1 });
        store.put("b", Entry::Refused { attempts: 1 });
        store.put("a", Entry::Accepted { charge, attempts: 2, plan, callbacks_delivered: 0 });
        assert_eq!(store.len(), 2, "updating a key adds nothing");
        store.put("c", Entry::Refused { attempts: 1 });
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none(), "the oldest key goes first");
        assert!(store.get("b").is_some() && store.get("c").is_some());
    }
}
