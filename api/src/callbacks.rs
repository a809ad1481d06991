//! `POST /api/v1/callback` (seed 000): the provider reports a charge's outcome.
//!
//! The signature is checked first, on the raw bytes, before anything is parsed: an
//! unauthenticated caller learns nothing about our validation. An authentic callback is
//! recorded in the ledger database, in one transaction, and its payment's *first* verdict
//! also gets a `ProviderCallbackReceived` outbox row that Debezium routes to
//! `payments.callbacks`.
//!
//! Deduplication keys only on what the signature covers, so a captured callback replayed
//! with another id, or an id squatted ahead of the real callback, changes nothing: the
//! callback's identity is the body's optional `eventId` (signed with the body), else the
//! SHA-256 of the raw body. The `X-Provider-Event-Id` header is not signed and is not read.
//! The key is (paymentId, that id), so two payments can never collide on one id, and every
//! authentic callback is answered 2xx (a provider does not retry a 4xx, and a lost verdict
//! costs a payment):
//! - the first callback of a payment is forwarded (disposition `forwarded`);
//! - a redelivery of a recorded callback gets the first answer and writes nothing;
//! - another callback of a payment that already has its verdict — the same status again
//!   (`duplicate`) or the opposite one (`conflict`) — is recorded for the audit trail but
//!   never forwarded. The saga therefore sees exactly one verdict per payment, also when
//!   callbacks arrive before their payment (it keeps an early callback until the payment
//!   appears, and a second early one would replace the first there).
//!
//! A partial unique index (`provider_callbacks_one_verdict_per_payment`) makes "one forwarded
//! callback per payment" hold under concurrent deliveries too.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use paystream_schemas::events::{topics, ProviderCallbackReceived, ProviderStatus};
use paystream_schemas::time;
use paystream_stack::trace;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::ApiBytes;
use crate::signature;
use crate::state::AppState;
use crate::timestamp;

/// Longest accepted description and provider event id.
pub const DESCRIPTION_CHARS_MAX: usize = 1000;
pub const EVENT_ID_BYTES_MAX: usize = 200;

/// The body of seed 000's callback, plus the provider's optional event id.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Callback {
    payment_id: Uuid,
    /// The provider's verdict.
    #[schema(schema_with = status_schema)]
    status: String,
    /// The provider's words (at most 1000 characters, no NUL).
    #[schema(max_length = 1000, pattern = r"^[^\u0000]*$")]
    description: String,
    #[schema(value_type = crate::timestamp::Timestamp)]
    timestamp: String,
    /// The provider's id of this event; inside the body, so the signature covers it. Without
    /// it, the SHA-256 of the raw body identifies the event.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    event_id: Option<String>,
}

/// `status`'s schema: the two verdicts a provider may send.
fn status_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["SUCCEEDED", "FAILED"]))
        .build()
}

/// What became of a recorded callback (`provider_callbacks.disposition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The payment's first verdict: forwarded to `payments.callbacks`.
    Forwarded,
    /// A later event with the first verdict's status: recorded only.
    Duplicate,
    /// A later event contradicting the first verdict: recorded only, logged as a warning.
    Conflict,
}

impl Disposition {
    /// The column's value.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Duplicate => "duplicate",
            Self::Conflict => "conflict",
        }
    }
}

/// The answer of seed 000: the payment and when the callback was accepted.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackAccepted {
    payment_id: Uuid,
    /// When this callback was first accepted.
    #[schema(value_type = crate::timestamp::Timestamp)]
    timestamp: String,
}

/// The provider's signed verdict on a charge. The signature (`Paystream-Signature`) is checked
/// on the raw bytes before anything is parsed. Every authentic callback is a 200, also a
/// redelivery (answered as the first time) and a later different event of the same payment
/// (recorded, not forwarded): only a payment's first verdict reaches the saga.
///
/// Problems: 400 `malformed-callback` or `unknown-status` (signed, but not a callback); 401
/// `unauthorized` (signature missing, wrong or outside ±300 s); 413 `payload-too-large`;
/// 503 `unavailable` (the provider retries).
#[utoipa::path(
    post,
    path = "/api/v1/callback",
    tag = "provider",
    request_body(content = Callback, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded now or before", body = CallbackAccepted),
        (status = 400, response = crate::error::Problem),
        (status = 401, response = crate::error::Problem),
        (status = 413, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("providerSignature" = []))
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Json<CallbackAccepted>, ApiError> {
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    state.callbacks.verify(header, &body, Utc::now().timestamp()).map_err(|e| {
        tracing::warn!(error = %e, "callback refused");
        ApiError::Unauthorized("the callback's signature is missing, invalid or stale")
    })?;

    let callback: Callback = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest { slug: "malformed-callback", detail: e.to_string() })?;
    let status = match callback.status.as_str() {
        "SUCCEEDED" => ProviderStatus::Succeeded,
        "FAILED" => ProviderStatus::Failed,
        other => {
            return Err(ApiError::BadRequest {
                slug: "unknown-status",
                detail: format!("status {other:?} is not SUCCEEDED or FAILED"),
            })
        }
    };
    if callback.description.chars().count() > DESCRIPTION_CHARS_MAX || callback.description.contains('\0') {
        return Err(ApiError::BadRequest {
            slug: "malformed-callback",
            detail: format!("description must be at most {DESCRIPTION_CHARS_MAX} characters, without NUL"),
        });
    }
    let provider_timestamp = timestamp::parse(&callback.timestamp).ok_or_else(|| ApiError::BadRequest {
        slug: "malformed-callback",
        detail: "timestamp must be yyyyMMdd-HH:mm:ss:SSSSSS (UTC)".into(),
    })?;
    let provider_event_id = match callback.event_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() && id.len() <= EVENT_ID_BYTES_MAX && !id.contains('\0') => id.to_owned(),
        Some(_) => {
            return Err(ApiError::BadRequest {
                slug: "malformed-callback",
                detail: format!("eventId must be 1 to {EVENT_ID_BYTES_MAX} bytes, not blank, without NUL"),
            })
        }
        None => format!("sha256:{}", hex::encode(Sha256::digest(&body))),
    };

    let received_at = time::now();
    let event = ProviderCallbackReceived {
        event_id: Uuid::new_v4(),
        payment_id: callback.payment_id,
        provider_event_id,
        status,
        description: callback.description,
        provider_timestamp,
        received_at,
    };
    crate::http_trace::record_payment(event.payment_id);
    // The callback's outbox row continues the payment's trace (the provider's request carried it).
    let traceparent = trace::outgoing(headers.get(trace::TRACEPARENT).map(|v| v.as_bytes()));
    let payload = state.codec.encode(&event).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let answered_at = record(&state, &event, &payload, traceparent.as_deref()).await?;
    Ok(Json(CallbackAccepted { payment_id: event.payment_id, timestamp: timestamp::format(answered_at) }))
}

/// Records the callback once, and forwards it if it is its payment's first; returns when it
/// was first accepted.
async fn record(
    state: &AppState,
    event: &ProviderCallbackReceived,
    payload: &[u8],
    traceparent: Option<&str>,
) -> Result<DateTime<Utc>, ApiError> {
    let mut tx = state.ledger.begin().await?;
    // As the payment's verdict. No conflict target: either the same callback is recorded
    // already (primary key) or another one is the payment's verdict (the partial unique
    // index); ON CONFLICT waits for a concurrent inserter of either to commit.
    if insert(&mut tx, event, Disposition::Forwarded).await? {
        sqlx::query(
            "INSERT INTO ledger_outbox (id, aggregatetype, aggregateid, type, payload, traceparent)
             VALUES ($1, $2, $3, 'ProviderCallbackReceived', $4, $5)",
        )
        .bind(event.event_id)
        .bind(topics::PAYMENTS_CALLBACKS)
        .bind(event.payment_id.to_string())
        .bind(payload)
        .bind(traceparent)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM ledger_outbox WHERE id = $1").bind(event.event_id).execute(&mut *tx).await?;
        tx.commit().await?;
        tracing::info!(payment_id = %event.payment_id, status = event.status.symbol(), "callback recorded and forwarded");
        return Ok(event.received_at);
    }
    if let Some(first_answer) = recorded_at(&mut tx, event).await? {
        tracing::info!(payment_id = %event.payment_id, provider_event_id = %event.provider_event_id, "redelivered callback");
        return Ok(first_answer);
    }
    // Another event of a payment whose verdict is recorded (the conflict was the partial
    // index, whose row has committed).
    let verdict: String = sqlx::query_scalar(
        "SELECT status FROM provider_callbacks WHERE payment_id = $1 AND disposition = 'forwarded'",
    )
    .bind(event.payment_id)
    .fetch_one(&mut *tx)
    .await?;
    let disposition =
        if verdict == event.status.symbol() { Disposition::Duplicate } else { Disposition::Conflict };
    if !insert(&mut tx, event, disposition).await? {
        // The same event, delivered concurrently, was recorded first.
        let first_answer = recorded_at(&mut tx, event).await?;
        return first_answer.ok_or_else(|| ApiError::internal("a conflicting callback row vanished"));
    }
    tx.commit().await?;
    if disposition == Disposition::Conflict {
        tracing::warn!(payment_id = %event.payment_id, provider_event_id = %event.provider_event_id, verdict, status = event.status.symbol(), "a callback contradicts the payment's first verdict; recorded, not forwarded");
    } else {
        tracing::info!(payment_id = %event.payment_id, provider_event_id = %event.provider_event_id, "another callback with the same verdict; recorded, not forwarded");
    }
    Ok(event.received_at)
}

/// Inserts the callback's row with `disposition` unless it conflicts; whether it did.
async fn insert(
    tx: &mut PgConnection,
    event: &ProviderCallbackReceived,
    disposition: Disposition,
) -> Result<bool, ApiError> {
    // Only the forwarded row names the event it was forwarded as.
    let event_id = (disposition == Disposition::Forwarded).then_some(event.event_id);
    let inserted = sqlx::query(
        "INSERT INTO provider_callbacks
             (payment_id, provider_event_id, status, description, provider_timestamp, received_at,
              event_id, disposition)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING",
    )
    .bind(event.payment_id)
    .bind(&event.provider_event_id)
    .bind(event.status.symbol())
    .bind(&event.description)
    .bind(event.provider_timestamp)
    .bind(event.received_at)
    .bind(event_id)
    .bind(disposition.symbol())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// When this very callback (payment and provider event id) was first accepted, if it was.
async fn recorded_at(
    tx: &mut PgConnection,
    event: &ProviderCallbackReceived,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT received_at FROM provider_callbacks WHERE payment_id = $1 AND provider_event_id = $2",
    )
    .bind(event.payment_id)
    .bind(&event.provider_event_id)
    .fetch_optional(&mut *tx)
    .await?)
}
