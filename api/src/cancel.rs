//! `POST /api/v1/payments/{paymentId}/cancel` and `GET` of the same path: the owner cancels a
//! payment, and reads what became of the cancel (issue 16).
//!
//! The API decides nothing about the payment's fate: it records the owner's request in the
//! wallet database (`payment_cancel_requests`, at most one per payment) together with its
//! `PaymentCancelRequested` outbox row, in ONE transaction, and Debezium routes the event to
//! `payments.cancel-requests`, keyed by the paymentId, where the saga takes it up (a void at the
//! provider; CANCELED only if the provider confirms it holds no charge). Nothing here talks to
//! Kafka.
//!
//! How the API learns the outcome: from the payment's own `wallet_transactions` row, which
//! settlement updates in the transaction that applies the payment's one result. So the answer
//! is a function of that row and of whether a cancel was recorded:
//!
//! | the row | POST answers | GET answers |
//! |---|---|---|
//! | PENDING | `202 Accepted`, `Location: …/cancel`, `{status: PENDING}` (the cancel is recorded once; again, the same answer) | `{status: PENDING}` |
//! | settled CANCELED | `200 {status: CANCELED}` | the same |
//! | settled otherwise, a cancel recorded | `409 /problems/cancel-refused`: the provider had already charged it (COMPLETED) or it failed first | `{status: REFUSED}` |
//! | settled otherwise, no cancel recorded | `409 /problems/cancel-refused`: the payment is already terminal (nothing recorded) | 404 |
//!
//! Someone else's payment, or no such payment, is 404 either way (whether a payment id exists is
//! not the caller's business unless it is theirs). The same cancel twice answers the same: a
//! second request while the first is pending writes nothing and answers 202 again; once the
//! payment is settled every request answers the settled outcome.
//!
//! The row is locked `FOR SHARE` while the cancel is recorded, so settlement (which takes it
//! `FOR UPDATE`) cannot settle the payment between the check and the write; a payment settled
//! just before is answered as settled and no cancel is recorded.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use paystream_schemas::events::PaymentCancelRequested;
use paystream_schemas::time;
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::state::AppState;
use crate::timestamp;

/// The outbox `type` of a cancel request (the Kafka header `eventType`).
pub const CANCEL_REQUESTED_TYPE: &str = "PaymentCancelRequested";
/// The reason recorded for a cancel (the request has no body: a cancel needs no words).
pub const OWNER_REASON: &str = "requested by its owner";
/// The problem type of a refused cancel.
pub const REFUSED_SLUG: &str = "cancel-refused";

/// Where the cancel of `payment_id` is read (the `Location` of a 202).
pub fn location(payment_id: Uuid) -> String {
    format!("/api/v1/payments/{payment_id}/cancel")
}

/// What became of a cancel.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelStatus {
    /// Recorded; the saga is asking the provider to void the charge.
    Pending,
    /// The provider voided the charge: the payment is CANCELED and its reservation released.
    Canceled,
    /// The payment ended otherwise: the provider had already charged it (COMPLETED), or it
    /// failed before the cancel took effect (its reservation is released all the same).
    Refused,
}

/// The answer about a cancel.
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelState {
    payment_id: Uuid,
    status: CancelStatus,
    /// The payment's own status: PENDING, or its result (COMPLETED, FAILED, FAILED_TIMEOUT,
    /// CANCELED).
    #[schema(pattern = "^(PENDING|COMPLETED|FAILED|FAILED_TIMEOUT|CANCELED)$")]
    payment_status: String,
    /// For people: what happened, and why.
    detail: String,
    /// When the cancel was first recorded.
    #[schema(value_type = timestamp::Timestamp)]
    requested_at: String,
}

/// The payment as the cancel sees it.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    owner: Uuid,
    /// `result_status` once settled; `None` while PENDING.
    result_status: Option<String>,
    result_reason: Option<String>,
    cancel_requested_at: Option<DateTime<Utc>>,
}

const SELECT: &str = "
    SELECT w.user_id AS owner, t.result_status, t.result_reason, c.requested_at AS cancel_requested_at
      FROM wallet_transactions t
      JOIN wallets w ON w.wallet_id = t.wallet_id
      LEFT JOIN payment_cancel_requests c ON c.payment_id = t.payment_id
     WHERE t.payment_id = $1";

/// The caller's payment, or 404 (none, or someone else's).
async fn owned(
    conn: &mut PgConnection,
    caller: &Caller,
    payment_id: Uuid,
    lock: bool,
) -> Result<Row, ApiError> {
    let sql = if lock { format!("{SELECT} FOR SHARE OF t") } else { SELECT.to_owned() };
    let row: Option<Row> = sqlx::query_as(&sql).bind(payment_id).fetch_optional(conn).await?;
    match row {
        Some(row) if row.owner == caller.user_id => Ok(row),
        _ => Err(ApiError::NotFound("payment")),
    }
}

/// What a settled payment answers: CANCELED, or the reason the cancel is refused.
fn settled(
    payment_id: Uuid,
    result: &str,
    reason: Option<&str>,
    requested: Option<DateTime<Utc>>,
) -> Result<CancelState, ApiError> {
    let reason = reason.unwrap_or("no reason recorded");
    let state = |status, detail: String, at: DateTime<Utc>| CancelState {
        payment_id,
        status,
        payment_status: result.to_owned(),
        detail,
        requested_at: timestamp::format(at),
    };
    match (result, requested) {
        ("CANCELED", Some(at)) => Ok(state(CancelStatus::Canceled, format!("the payment is cancelled: {reason}"), at)),
        ("COMPLETED", Some(_)) => Err(refused(format!(
            "the cancel is refused: the provider had already charged the payment, which is COMPLETED ({reason})"
        ))),
        (_, Some(_)) => Err(refused(format!(
            "the cancel is refused: the payment ended {result} before the cancel took effect; its reservation is released ({reason})"
        ))),
        (_, None) => Err(refused(format!("the payment is already {result}; a terminal payment cannot be cancelled"))),
    }
}

fn refused(detail: String) -> ApiError {
    ApiError::Conflict { slug: REFUSED_SLUG, detail, wallet_id: None }
}

fn pending(payment_id: Uuid, at: DateTime<Utc>) -> CancelState {
    CancelState {
        payment_id,
        status: CancelStatus::Pending,
        payment_status: "PENDING".into(),
        detail: "the cancel is recorded; the provider is being asked to void the charge".into(),
        requested_at: timestamp::format(at),
    }
}

/// The answer to a POST: 202 with `Location` while pending, 200 once cancelled.
fn answer(state: CancelState) -> Response {
    let status = match state.status {
        CancelStatus::Pending => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    let location = location(state.payment_id);
    let mut response = (status, Json(state)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Cancels one of the caller's payments: recorded once, with its `PaymentCancelRequested` in the
/// outbox, in one transaction; the saga voids the charge at the provider and the payment ends
/// CANCELED only if the provider holds no charge.
///
/// Answers 202 while the provider is being asked (poll the `Location`, or POST again: the same
/// answer, nothing written twice), 200 once the payment is CANCELED. Problems: 401
/// `unauthorized`; 404 `not-found` (no such payment, or someone else's); 409 `cancel-refused`
/// (the provider had already charged it, or it failed first, or it was already terminal); 422
/// `validation` (`path`: not a UUID); 503 `unavailable`.
#[utoipa::path(
    post,
    path = "/api/v1/payments/{paymentId}/cancel",
    tag = "payments",
    params(
        ("paymentId" = Uuid, Path, description = "The payment's id"),
        ("traceparent" = Option<String>, Header,
         description = "W3C trace context; travels with the event (a new one is made if absent or invalid)"),
    ),
    responses(
        (status = 200, description = "The payment is cancelled", body = CancelState),
        (status = 202, description = "Recorded; the provider is being asked to void the charge",
         body = CancelState, headers(("Location" = String, description = "Where the cancel is read"))),
        (status = 401, response = crate::error::Problem),
        (status = 404, response = crate::error::Problem),
        (status = 409, response = crate::error::Problem),
        (status = 422, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(payment_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    // Checked before the transaction, so that the registry round trip of the encoding (on
    // first use) holds no lock, and a refused cancel costs no write.
    let mut conn = state.db.acquire().await?;
    let row = owned(&mut conn, &caller, payment_id, false).await?;
    drop(conn);
    if let Some(result) = &row.result_status {
        return settled(payment_id, result, row.result_reason.as_deref(), row.cancel_requested_at)
            .map(answer);
    }
    if let Some(at) = row.cancel_requested_at {
        return Ok(answer(pending(payment_id, at)));
    }

    let requested_at = time::now();
    let event = PaymentCancelRequested {
        event_id: Uuid::new_v4(),
        payment_id,
        user_id: caller.user_id,
        reason: OWNER_REASON.into(),
        requested_at,
    };
    let payload = state.codec.encode(&event).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;

    let mut tx = state.db.begin().await?;
    let row = owned(&mut tx, &caller, payment_id, true).await?;
    if let Some(result) = &row.result_status {
        return settled(payment_id, result, row.result_reason.as_deref(), row.cancel_requested_at)
            .map(answer);
    }
    if let Some(at) = row.cancel_requested_at {
        return Ok(answer(pending(payment_id, at)));
    }
    let recorded = record(&mut tx, &state, &event, &payload, &headers).await?;
    tx.commit().await?;
    tracing::info!(%payment_id, event_id = %event.event_id, recorded, "cancel requested");
    // A concurrent request recorded it first: its time is the cancel's.
    let at = match recorded {
        true => requested_at,
        false => {
            let mut conn = state.db.acquire().await?;
            owned(&mut conn, &caller, payment_id, false).await?.cancel_requested_at.unwrap_or(requested_at)
        }
    };
    Ok(answer(pending(payment_id, at)))
}

/// Records the cancel and its outbox row in `tx`; false if a concurrent request recorded it
/// first (then nothing is written).
async fn record(
    tx: &mut Transaction<'_, Postgres>,
    state: &AppState,
    event: &PaymentCancelRequested,
    payload: &[u8],
    headers: &HeaderMap,
) -> Result<bool, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO payment_cancel_requests (payment_id, event_id, requested_by, reason, requested_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(event.payment_id)
    .bind(event.event_id)
    .bind(event.user_id)
    .bind(&event.reason)
    .bind(event.requested_at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    let key = event.payment_id.to_string();
    let traceparent = crate::payments::traceparent(headers);
    paystream_wallet::outbox::write(
        tx,
        &paystream_wallet::outbox::OutboxRow {
            id: event.event_id,
            topic: &state.topics.cancel_requests,
            key: &key,
            event_type: CANCEL_REQUESTED_TYPE,
            payload,
            traceparent: &traceparent,
        },
    )
    .await?;
    Ok(true)
}

/// What became of the caller's cancel of a payment.
///
/// Problems: 401 `unauthorized`; 404 `not-found` (no such payment, someone else's, or no cancel
/// was ever requested for it); 422 `validation` (`path`); 503 `unavailable`.
#[utoipa::path(
    get,
    path = "/api/v1/payments/{paymentId}/cancel",
    tag = "payments",
    params(("paymentId" = Uuid, Path, description = "The payment's id")),
    responses(
        (status = 200, description = "The cancel and the payment's status", body = CancelState),
        (status = 401, response = crate::error::Problem),
        (status = 404, response = crate::error::Problem),
        (status = 422, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(payment_id): ApiPath<Uuid>,
) -> Result<Json<CancelState>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let row = owned(&mut conn, &caller, payment_id, false).await?;
    let Some(at) = row.cancel_requested_at else {
        return Err(ApiError::NotFound("cancel of this payment"));
    };
    let Some(result) = &row.result_status else { return Ok(Json(pending(payment_id, at))) };
    match settled(payment_id, result, row.result_reason.as_deref(), Some(at)) {
        Ok(state) => Ok(Json(state)),
        Err(ApiError::Conflict { detail, .. }) => Ok(Json(CancelState {
            payment_id,
            status: CancelStatus::Refused,
            payment_status: result.clone(),
            detail,
            requested_at: timestamp::format(at),
        })),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_payment_answers_canceled_or_a_refusal_that_says_why() {
        let id = Uuid::new_v4();
        let at = Utc::now();
        let canceled = settled(id, "CANCELED", Some("voided"), Some(at)).unwrap();
        assert_eq!(canceled.status, CancelStatus::Canceled);
        let charged = settled(id, "COMPLETED", Some("charged"), Some(at)).unwrap_err();
        assert!(charged.to_string().contains("already charged"), "{charged}");
        let failed = settled(id, "FAILED_TIMEOUT", None, Some(at)).unwrap_err();
        assert!(failed.to_string().contains("FAILED_TIMEOUT before the cancel"), "{failed}");
        let terminal = settled(id, "COMPLETED", None, None).unwrap_err();
        assert!(terminal.to_string().contains("already COMPLETED"), "{terminal}");
        for refusal in [charged, failed, terminal] {
            assert!(matches!(refusal, ApiError::Conflict { slug: REFUSED_SLUG, .. }));
        }
    }
}
