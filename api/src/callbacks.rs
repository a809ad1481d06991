//! `POST /api/v1/callback` (seed 000): the provider reports a charge's outcome.
//!
//! The signature is checked first, on the raw bytes, before anything is parsed: an
//! unauthenticated caller learns nothing about our validation. An authentic callback is
//! recorded in the ledger database together with its `ProviderCallbackReceived` outbox
//! row, in one transaction; Debezium routes the event to `payments.callbacks`. A
//! redelivered callback (same provider event id) gets the first answer and writes nothing.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use paystream_schemas::events::{topics, ProviderCallbackReceived, ProviderStatus};
use paystream_schemas::time;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::signature;
use crate::state::AppState;
use crate::timestamp;

/// Header by which a provider names its callback event (optional).
pub const EVENT_ID_HEADER: &str = "x-provider-event-id";
/// Longest accepted description and provider event id.
pub const DESCRIPTION_CHARS_MAX: usize = 1000;
pub const EVENT_ID_BYTES_MAX: usize = 200;

/// The body of seed 000's callback.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Callback {
    payment_id: Uuid,
    status: String,
    description: String,
    timestamp: String,
}

/// The answer of seed 000: the payment and when the callback was accepted.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackAccepted {
    payment_id: Uuid,
    timestamp: String,
}

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
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
    if callback.description.chars().count() > DESCRIPTION_CHARS_MAX {
        return Err(ApiError::BadRequest {
            slug: "malformed-callback",
            detail: format!("description is longer than {DESCRIPTION_CHARS_MAX} characters"),
        });
    }
    let provider_timestamp = timestamp::parse(&callback.timestamp).ok_or_else(|| ApiError::BadRequest {
        slug: "malformed-callback",
        detail: "timestamp must be yyyyMMdd-HH:mm:ss:SSSSSS (UTC)".into(),
    })?;
    let provider_event_id = match headers.get(EVENT_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::trim) {
        Some(id) if !id.is_empty() && id.len() <= EVENT_ID_BYTES_MAX => id.to_owned(),
        Some(_) => {
            return Err(ApiError::BadRequest {
                slug: "malformed-callback",
                detail: "bad X-Provider-Event-Id".into(),
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
    let payload = state.codec.encode(&event).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let answered_at = record(&state, &event, &payload).await?;
    Ok(Json(CallbackAccepted { payment_id: event.payment_id, timestamp: timestamp::format(answered_at) }))
}

/// Records the callback and its event once; returns when it was first accepted.
async fn record(
    state: &AppState,
    event: &ProviderCallbackReceived,
    payload: &[u8],
) -> Result<DateTime<Utc>, ApiError> {
    let mut tx = state.ledger.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO provider_callbacks
             (provider_event_id, payment_id, status, description, provider_timestamp, received_at, event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (provider_event_id) DO NOTHING",
    )
    .bind(&event.provider_event_id)
    .bind(event.payment_id)
    .bind(event.status.symbol())
    .bind(&event.description)
    .bind(event.provider_timestamp)
    .bind(event.received_at)
    .bind(event.event_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        // A redelivery: the first transaction committed (the unique index waited for it).
        let (payment_id, received_at): (Uuid, DateTime<Utc>) = sqlx::query_as(
            "SELECT payment_id, received_at FROM provider_callbacks WHERE provider_event_id = $1",
        )
        .bind(&event.provider_event_id)
        .fetch_one(&mut *tx)
        .await?;
        if payment_id != event.payment_id {
            return Err(ApiError::BadRequest {
                slug: "malformed-callback",
                detail: "this provider event id was used for another payment".into(),
            });
        }
        tracing::info!(payment_id = %event.payment_id, provider_event_id = %event.provider_event_id, "duplicate callback");
        return Ok(received_at);
    }
    sqlx::query(
        "INSERT INTO ledger_outbox (id, aggregatetype, aggregateid, type, payload)
         VALUES ($1, $2, $3, 'ProviderCallbackReceived', $4)",
    )
    .bind(event.event_id)
    .bind(topics::PAYMENTS_CALLBACKS)
    .bind(event.payment_id.to_string())
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM ledger_outbox WHERE id = $1").bind(event.event_id).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(payment_id = %event.payment_id, status = event.status.symbol(), "callback recorded");
    Ok(event.received_at)
}
