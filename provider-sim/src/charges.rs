//! `POST /v1/charges`, `GET /v1/charges/{key}` and `POST /v1/charges/{key}/void|refund`:
//! taking, showing, voiding and refunding charges, idempotently.
//!
//! A charge carries `Idempotency-Key: <paymentId>` and a JSON body
//! `{paymentId, amount, currency, description}` (amount a decimal string with exactly two
//! places). The first acceptable attempt for a key is answered `202 Accepted` and its
//! callbacks are scheduled; the same key with the same body again gets the same answer and
//! schedules nothing; the same key with another body is `409`. An attempt answered `503`
//! (a configured fault, or too many callbacks pending) takes nothing, so a retry with the
//! same key may still succeed. Invalid requests are `400`/`422` and are not remembered.
//!
//! A taken charge is PENDING until its planned delay has passed, then SUCCEEDED (charged) or
//! DECLINED, whenever its callback goes (or is lost). `GET` answers that as `charge` (and
//! `charged: true` only for SUCCEEDED); a key never taken is `404` with `charge: NONE`.
//! A **void** makes a key that holds no charge unchargeable for good: a later charge attempt with
//! it gets a definite `410` (`/problems/charge-voided`); voiding a charged key is `409`
//! `/problems/already-charged`, a pending one `409` `/problems/charge-pending` (ask again), a
//! declined or refunded one answers 200 with that state (nothing is charged). A **refund** gives
//! a charged key back (`200`, `charge: REFUNDED`); a key with nothing charged is `409`
//! `/problems/not-charged`, a pending one `409` `/problems/charge-pending`. Both are idempotent:
//! the same request again gets the same answer and changes nothing. Status queries, voids and
//! refunds are answered `503` at the configured request fault rate, changing nothing.
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
use crate::decide::{Operation, Plan, Verdict};
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
    Accepted {
        charge: Charge,
        attempts: u32,
        plan: Plan,
        callbacks_delivered: u32,
        /// When it was taken: the verdict holds from `accepted_at + plan.delay` on.
        accepted_at: std::time::Instant,
        /// Given back by a refund.
        refunded: bool,
    },
    /// Voided before anything was charged: no charge with this key is ever taken.
    Voided { attempts: u32 },
}

/// Where a key's charge stands, as `GET /v1/charges/{key}` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargeState {
    /// Never taken (or only refused with 503).
    None,
    /// Taken, the verdict not reached yet.
    Pending,
    /// Charged.
    Succeeded,
    /// Declined: nothing charged, and a replay of the charge changes nothing.
    Declined,
    /// Voided before any charge: can never be charged.
    Voided,
    /// Charged, then given back.
    Refunded,
}

impl ChargeState {
    /// The `charge` field of the answers.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Voided => "VOIDED",
            Self::Refunded => "REFUNDED",
        }
    }
}

impl Entry {
    /// The charge's state at `now`.
    pub(crate) fn state(&self, now: std::time::Instant) -> ChargeState {
        match self {
            Entry::Refused { .. } => ChargeState::None,
            Entry::Voided { .. } => ChargeState::Voided,
            Entry::Accepted { refunded: true, .. } => ChargeState::Refunded,
            Entry::Accepted { plan, accepted_at, .. } if now < *accepted_at + plan.delay => {
                ChargeState::Pending
            }
            Entry::Accepted { plan, .. } => match plan.verdict {
                Verdict::Succeeded => ChargeState::Succeeded,
                Verdict::Failed => ChargeState::Declined,
            },
        }
    }
}

/// The idempotency store: keys in arrival order, bounded, oldest forgotten first. A voided key
/// is forgotten like any other: the bound must exceed the keys the saga may still verify.
pub(crate) struct Store {
    entries: HashMap<String, Entry>,
    /// Keys in insertion order, for eviction; each key appears once.
    order: VecDeque<String>,
    /// Most keys kept.
    max: usize,
    /// Attempts of status queries, voids and refunds per key (for their seeded 503s),
    /// bounded like the entries.
    requests: HashMap<(String, Operation), u32>,
    /// Their keys in insertion order, for eviction.
    requests_order: VecDeque<(String, Operation)>,
}

impl Store {
    pub(crate) fn new(max: usize) -> Self {
        assert!(max >= 1, "the configuration is validated");
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            max,
            requests: HashMap::new(),
            requests_order: VecDeque::new(),
        }
    }

    /// Counts an attempt of `operation` on `key` and returns its number (1-based).
    pub(crate) fn count_request(&mut self, key: &str, operation: Operation) -> u32 {
        let id = (key.to_owned(), operation);
        if let Some(attempts) = self.requests.get_mut(&id) {
            *attempts = attempts.saturating_add(1);
            return *attempts;
        }
        while self.requests.len() >= self.max {
            let Some(oldest) = self.requests_order.pop_front() else { break };
            self.requests.remove(&oldest);
        }
        self.requests.insert(id.clone(), 1);
        self.requests_order.push_back(id);
        1
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
    /// 410: the key was voided; it can never be charged.
    Voided,
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
    paystream_api::http_trace::record_payment(charge.payment_id);
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
        Decision::Voided => {
            sim.metrics.charge("voided");
            tracing::info!(key = %key, "charge refused: the key is voided");
            problem(StatusCode::GONE, "charge-voided", "this key was voided; it can never be charged")
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
        Some(Entry::Voided { attempts }) => {
            *attempts = attempts.saturating_add(1);
            return Decision::Voided;
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
    let entry = Entry::Accepted {
        charge: charge.clone(),
        attempts,
        plan,
        callbacks_delivered: 0,
        accepted_at: std::time::Instant::now(),
        refunded: false,
    };
    store.put(key, entry);
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

fn problem_with_state(
    status: StatusCode,
    slug: &str,
    detail: &str,
    key: &str,
    state: ChargeState,
) -> Response {
    let body = json!({
        "type": format!("/problems/{slug}"),
        "status": status.as_u16(),
        "detail": detail,
        "key": key,
        "charge": state.symbol(),
        "charged": state == ChargeState::Succeeded,
    });
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

fn answer(key: &str, state: ChargeState) -> Response {
    Json(json!({ "key": key, "charge": state.symbol(), "charged": state == ChargeState::Succeeded }))
        .into_response()
}

/// Locks the store; a panic while holding the lock leaves a consistent map (every change is one
/// statement), so a poisoned lock is used as it is.
fn lock(sim: &Sim) -> std::sync::MutexGuard<'_, Store> {
    sim.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A key from the path, if it is one (1 to 255 bytes).
fn path_key(key: &str) -> Option<&str> {
    let key = key.trim();
    (!key.is_empty() && key.len() <= KEY_BYTES_MAX).then_some(key)
}

/// The 400 for a path that names no key.
fn invalid_key() -> Response {
    problem(StatusCode::BAD_REQUEST, "invalid-key", "the key must be 1 to 255 bytes")
}

/// The 503 of a seeded request fault, if this attempt draws one (counting it either way).
fn request_fault(sim: &Sim, store: &mut Store, key: &str, operation: Operation) -> Option<Response> {
    let attempt = store.count_request(key, operation);
    if !sim.config.rates.request_fails(key, operation, attempt) {
        return None;
    }
    sim.metrics.request(operation, "unavailable");
    Some(problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "simulated outage; nothing changed, retry"))
}

/// Tags the request's span with the payment its key names (the dispatcher's idempotency keys are
/// paymentIds), as a charge's is: the saga's status queries, voids and refunds are found in the
/// payment's trace by the same tag.
fn record_key(key: &str) {
    if let Ok(payment_id) = Uuid::parse_str(key) {
        paystream_api::http_trace::record_payment(payment_id);
    }
}

/// `GET /v1/charges/{key}`: where the charge stands (`charge`, `charged`), plus what the simulator
/// decided and did, for people and tests.
pub(crate) async fn show(State(sim): State<Arc<Sim>>, Path(key): Path<String>) -> Response {
    let Some(key) = path_key(&key) else { return invalid_key() };
    record_key(key);
    let mut store = lock(&sim);
    if let Some(unavailable) = request_fault(&sim, &mut store, key, Operation::Status) {
        return unavailable;
    }
    let now = std::time::Instant::now();
    let state = store.get(key).map_or(ChargeState::None, |entry| entry.state(now));
    sim.metrics.request(Operation::Status, state.symbol());
    let charged = state == ChargeState::Succeeded;
    match store.get(key) {
        None => problem_with_state(
            StatusCode::NOT_FOUND,
            "not-found",
            "no charge with this key is remembered",
            key,
            ChargeState::None,
        ),
        Some(Entry::Refused { attempts }) => Json(json!({
            "key": key, "state": "REFUSED", "attempts": attempts, "charge": state.symbol(), "charged": charged,
        }))
        .into_response(),
        Some(Entry::Voided { attempts }) => Json(json!({
            "key": key, "state": "VOIDED", "refusedAttempts": attempts, "charge": state.symbol(), "charged": charged,
        }))
        .into_response(),
        Some(Entry::Accepted { charge, attempts, plan, callbacks_delivered, refunded, .. }) => Json(json!({
            "key": key,
            "state": "ACCEPTED",
            "charge": state.symbol(),
            "charged": charged,
            "refunded": refunded,
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

/// `POST /v1/charges/{key}/void`: makes a key that holds no charge unchargeable for good.
pub(crate) async fn void(State(sim): State<Arc<Sim>>, Path(key): Path<String>) -> Response {
    let Some(key) = path_key(&key) else { return invalid_key() };
    record_key(key);
    let mut store = lock(&sim);
    if let Some(unavailable) = request_fault(&sim, &mut store, key, Operation::Void) {
        return unavailable;
    }
    let state = store.get(key).map_or(ChargeState::None, |entry| entry.state(std::time::Instant::now()));
    sim.metrics.request(Operation::Void, state.symbol());
    match state {
        ChargeState::None => {
            store.put(key, Entry::Voided { attempts: 0 });
            tracing::info!(key, "key voided: it can never be charged");
            answer(key, ChargeState::Voided)
        }
        ChargeState::Voided | ChargeState::Declined | ChargeState::Refunded => answer(key, state),
        ChargeState::Pending => problem_with_state(
            StatusCode::CONFLICT,
            "charge-pending",
            "the charge is being processed; ask again",
            key,
            state,
        ),
        ChargeState::Succeeded => problem_with_state(
            StatusCode::CONFLICT,
            "already-charged",
            "the key is already charged; refund it instead",
            key,
            state,
        ),
    }
}

/// The optional body of `POST /v1/charges/{key}/refund`: when given, it must name the charge.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefundBody {
    amount: String,
    currency: String,
}

/// `POST /v1/charges/{key}/refund`: gives a charge back, in full.
pub(crate) async fn refund(State(sim): State<Arc<Sim>>, Path(key): Path<String>, body: Bytes) -> Response {
    let Some(key) = path_key(&key) else { return invalid_key() };
    record_key(key);
    let asked = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<RefundBody>(&body) {
            Ok(asked) => Some(asked),
            Err(error) => {
                return problem(StatusCode::UNPROCESSABLE_ENTITY, "malformed-refund", &error.to_string())
            }
        }
    };
    let mut store = lock(&sim);
    if let Some(unavailable) = request_fault(&sim, &mut store, key, Operation::Refund) {
        return unavailable;
    }
    let state = store.get(key).map_or(ChargeState::None, |entry| entry.state(std::time::Instant::now()));
    sim.metrics.request(Operation::Refund, state.symbol());
    if let (Some(asked), Some(Entry::Accepted { charge, .. })) = (&asked, store.get(key)) {
        if parse_amount(&asked.amount) != Some(charge.amount) || asked.currency != charge.currency {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refund-mismatch",
                "the refund must be the whole charge",
            );
        }
    }
    match state {
        ChargeState::Succeeded => {
            if let Some(Entry::Accepted { refunded, .. }) = store.get_mut(key) {
                *refunded = true;
            }
            tracing::info!(key, "charge refunded");
            answer(key, ChargeState::Refunded)
        }
        ChargeState::Refunded => answer(key, state),
        ChargeState::Pending => problem_with_state(
            StatusCode::CONFLICT,
            "charge-pending",
            "the charge is being processed; ask again",
            key,
            state,
        ),
        ChargeState::None | ChargeState::Declined | ChargeState::Voided => problem_with_state(
            StatusCode::CONFLICT,
            "not-charged",
            "nothing is charged with this key; nothing to refund",
            key,
            state,
        ),
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
        let accepted_at = std::time::Instant::now();
        store.put(
            "a",
            Entry::Accepted {
                charge,
                attempts: 2,
                plan,
                callbacks_delivered: 0,
                accepted_at,
                refunded: false,
            },
        );
        assert_eq!(store.len(), 2, "updating a key adds nothing");
        store.put("c", Entry::Refused { attempts: 1 });
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none(), "the oldest key goes first");
        assert!(store.get("b").is_some() && store.get("c").is_some());
        assert_eq!(
            (store.count_request("a", Operation::Void), store.count_request("a", Operation::Void)),
            (1, 2)
        );
        store.count_request("b", Operation::Void);
        store.count_request("c", Operation::Void);
        assert_eq!(store.count_request("a", Operation::Void), 1, "request counts are bounded too");
    }

    #[test]
    fn a_charge_is_pending_until_its_verdict_then_charged_or_declined() {
        let (_, charge) = validate(Some(ID), body("1.00", "RUB").as_bytes()).unwrap();
        let at = std::time::Instant::now();
        let delay = Duration::from_secs(2);
        let entry = |verdict, refunded| Entry::Accepted {
            charge: charge.clone(),
            attempts: 1,
            plan: Plan { verdict, delay, fate: Fate::Lost },
            callbacks_delivered: 0,
            accepted_at: at,
            refunded,
        };
        assert_eq!(entry(Verdict::Succeeded, false).state(at), ChargeState::Pending);
        assert_eq!(entry(Verdict::Succeeded, false).state(at + delay), ChargeState::Succeeded);
        assert_eq!(entry(Verdict::Failed, false).state(at + delay), ChargeState::Declined);
        assert_eq!(entry(Verdict::Succeeded, true).state(at), ChargeState::Refunded);
        assert_eq!(Entry::Refused { attempts: 3 }.state(at), ChargeState::None);
        assert_eq!(Entry::Voided { attempts: 0 }.state(at), ChargeState::Voided);
    }
}
