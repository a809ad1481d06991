//! `POST /api/v1/payment` (seed 000): accept a payment, exactly once.
//!
//! In ONE Postgres transaction: idempotency on paymentId, ownership, the balance check and
//! the reservation (available → reserved, by `paystream_wallet::reserve`), the
//! `wallet_transactions` row (PENDING) and the outbox row carrying `PaymentInitiated`,
//! already in the registered Avro contract.
//! Debezium streams the outbox row to `payments.initiated`; nothing here talks to Kafka.
//!
//! Concurrency: the wallet row is locked (`FOR UPDATE`, in the wallet crate) for the
//! decision, so concurrent payments on one wallet are serialised and can never overdraw it;
//! the CHECK constraints on `wallets` are the second line of defence.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use paystream_schemas::events::PaymentInitiated;
use paystream_schemas::{time, Amount};
use paystream_wallet::{self as wallet, Refusal, WalletError};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::outbox::{self, OutboxEvent};
use crate::state::AppState;
use crate::{money, timestamp};

/// What a payment may be for. A closed list: an unknown kind is a client bug, refused
/// before any money moves.
pub const PAYMENT_KINDS: &[&str] = &["purchase", "transfer", "mobile", "utilities", "subscription", "other"];
/// Longest accepted description, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 500;

/// The request body of seed 000.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentRequest {
    /// The client's id of this payment; the same id again is the same payment (idempotency).
    payment_id: Uuid,
    /// The wallet paid from; the caller's own.
    wallet: Uuid,
    #[serde(deserialize_with = "money::exact")]
    #[schema(value_type = money::RequestAmount)]
    amount: Decimal,
    #[schema(schema_with = kind_schema)]
    kind: String,
    /// What the payment is for (no NUL characters).
    #[schema(max_length = 500, pattern = r"^[^\u0000]*$")]
    description: String,
    #[schema(value_type = timestamp::Timestamp)]
    timestamp: String,
}

/// The response of seed 000: the payment and when it was accepted.
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentAccepted {
    payment_id: Uuid,
    /// When the payment was first accepted (a replay answers the first acceptance's time).
    #[schema(value_type = timestamp::Timestamp)]
    timestamp: String,
}

/// `kind`'s schema: the closed list [`PAYMENT_KINDS`].
fn kind_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(PAYMENT_KINDS.iter().copied()))
        .description(Some("What the payment is for; a closed list"))
        .build()
}

/// A validated request.
struct Payment {
    payment_id: Uuid,
    wallet_id: Uuid,
    amount: Amount,
    kind: String,
    description: String,
    requested_at: DateTime<Utc>,
}

impl PaymentRequest {
    fn validate(self) -> Result<Payment, ApiError> {
        let amount = Amount::try_from_decimal(self.amount)
            .map_err(|e| ApiError::validation("amount", e.to_string()))?;
        if !PAYMENT_KINDS.contains(&self.kind.as_str()) {
            return Err(ApiError::validation("kind", format!("must be one of {}", PAYMENT_KINDS.join(", "))));
        }
        if self.description.contains('\0') {
            return Err(ApiError::validation("description", "must not contain NUL characters"));
        }
        if self.description.chars().count() > DESCRIPTION_CHARS_MAX {
            return Err(ApiError::validation(
                "description",
                format!("must be at most {DESCRIPTION_CHARS_MAX} characters"),
            ));
        }
        let requested_at = timestamp::parse(&self.timestamp)
            .ok_or_else(|| ApiError::validation("timestamp", "must be yyyyMMdd-HH:mm:ss:SSSSSS (UTC)"))?;
        Ok(Payment {
            payment_id: self.payment_id,
            wallet_id: self.wallet,
            amount,
            kind: self.kind,
            description: self.description,
            requested_at,
        })
    }
}

/// What the transaction decided.
enum Decision {
    Accepted(PaymentAccepted),
    Replayed(PaymentAccepted),
}

/// Accepts a payment from one of the caller's wallets, exactly once per `paymentId`: the amount
/// moves from `available` to `reserved` and a `PaymentInitiated` event leaves through the
/// outbox, in one transaction.
///
/// Problems: 400 `malformed-json`; 401 `unauthorized`; 403 `forbidden` (someone else's wallet);
/// 404 `not-found` (no such wallet); 409 `payment-id-conflict` (the id was used for another
/// payment); 413 `payload-too-large`; 415 `unsupported-media-type`; 422 `validation` (with
/// `field`) or `insufficient-funds`; 503 `unavailable` (retry with the same body).
#[utoipa::path(
    post,
    path = "/api/v1/payment",
    // Unique in the document (OpenAPI requires it; Swagger UI keys its state by it), unlike
    // the handler's name, which accounts' `create` shares.
    operation_id = "create_payment",
    tag = "payments",
    request_body(content = PaymentRequest, content_type = "application/json"),
    params(
        ("traceparent" = Option<String>, Header,
         description = "W3C trace context; travels with the event (a new one is made if absent or invalid)"),
    ),
    responses(
        (status = 200, description = "Accepted now, or earlier with the same body", body = PaymentAccepted),
        (status = 400, response = crate::error::Problem),
        (status = 401, response = crate::error::Problem),
        (status = 403, response = crate::error::Problem),
        (status = 404, response = crate::error::Problem),
        (status = 409, response = crate::error::Problem),
        (status = 413, response = crate::error::Problem),
        (status = 415, response = crate::error::Problem),
        (status = 422, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<PaymentRequest>,
) -> Result<Json<PaymentAccepted>, ApiError> {
    let result = accept(&state, caller, &headers, request).await;
    let outcome = match &result {
        Ok(Decision::Accepted(_)) => "accepted".to_owned(),
        Ok(Decision::Replayed(_)) => "replayed".to_owned(),
        Err(error) => format!("rejected:{}", problem_slug(error)),
    };
    state.metrics.payments.with_label_values(&[&outcome]).inc();
    match result? {
        Decision::Accepted(accepted) | Decision::Replayed(accepted) => Ok(Json(accepted)),
    }
}

async fn accept(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    request: PaymentRequest,
) -> Result<Decision, ApiError> {
    let payment = request.validate()?;

    // The wallet's owner and currency never change: read them before the transaction, so
    // the event can be encoded (a registry round trip on first use) without holding a lock.
    let wallet: Option<(Uuid, String)> =
        sqlx::query_as("SELECT user_id, currency FROM wallets WHERE wallet_id = $1")
            .bind(payment.wallet_id)
            .fetch_optional(&state.db)
            .await?;
    let (owner, currency) = wallet.ok_or(ApiError::NotFound("wallet"))?;
    if owner != caller.user_id {
        return Err(ApiError::Forbidden);
    }
    let accepted_at = time::now();
    let event = PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id: payment.payment_id,
        wallet_id: payment.wallet_id,
        amount: payment.amount,
        currency,
        kind: payment.kind.clone(),
        description: payment.description.clone(),
        requested_at: payment.requested_at,
        initiated_at: accepted_at,
    };
    crate::http_trace::record_payment(event.payment_id);
    let mut outbox = OutboxEvent::payment_initiated(&state.codec, &event, traceparent(headers))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    outbox.topic.clone_from(&state.topics.initiated);

    // A concurrent request with the same paymentId can commit between our idempotency
    // check and our insert; then the insert does nothing and the second pass replays.
    for _ in 0..2 {
        let mut tx = state.db.begin().await?;
        if let Some(previous) = previous_answer(&mut tx, &payment).await? {
            return Ok(Decision::Replayed(previous));
        }
        // The same opening as the pay.order door's (`paystream_wallet::payments::open`):
        // reserved before the row is written, as the balance is judged first; a conflicting
        // insert drops the transaction, and the reservation with it.
        let opened = wallet::payments::open(
            &mut tx,
            &wallet::NewPayment {
                payment_id: payment.payment_id,
                wallet_id: payment.wallet_id,
                amount: payment.amount,
                kind: &payment.kind,
                description: &payment.description,
                requested_at: payment.requested_at,
                accepted_at,
            },
        )
        .await
        .map_err(reservation_refused)?;
        if opened == wallet::Opened::PaymentIdTaken {
            continue;
        }
        outbox.write(&mut tx).await?;
        tx.commit().await?;
        tracing::info!(payment_id = %payment.payment_id, wallet_id = %payment.wallet_id, amount = %payment.amount, "payment accepted");
        return Ok(Decision::Accepted(PaymentAccepted {
            payment_id: payment.payment_id,
            timestamp: timestamp::format(accepted_at),
        }));
    }
    Err(ApiError::internal("paymentId kept conflicting without a committed row"))
}

/// The API's answer to a reservation the wallet refused.
fn reservation_refused(error: WalletError) -> ApiError {
    match error {
        WalletError::Refused(Refusal::InsufficientFunds { available, .. }) => {
            ApiError::InsufficientFunds { available: available.to_string() }
        }
        WalletError::Missing(_) => ApiError::NotFound("wallet"),
        WalletError::Database(error) => error.into(),
        other => ApiError::internal(other),
    }
}

/// The answer already given for this paymentId: the same answer if the request is the
/// same, a 409 if the id was used for another payment.
async fn previous_answer(
    tx: &mut Transaction<'_, Postgres>,
    payment: &Payment,
) -> Result<Option<PaymentAccepted>, ApiError> {
    type Row = (Uuid, Decimal, String, String, DateTime<Utc>, DateTime<Utc>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT wallet_id, amount, kind, description, requested_at, accepted_at
         FROM wallet_transactions WHERE payment_id = $1",
    )
    .bind(payment.payment_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((wallet_id, amount, kind, description, requested_at, accepted_at)) = row else {
        return Ok(None);
    };
    let same = wallet_id == payment.wallet_id
        && amount == payment.amount.to_decimal()
        && kind == payment.kind
        && description == payment.description
        && requested_at == payment.requested_at;
    if !same {
        return Err(ApiError::Conflict {
            slug: "payment-id-conflict",
            detail: format!("paymentId {} was already used for a different payment", payment.payment_id),
            wallet_id: None,
        });
    }
    Ok(Some(PaymentAccepted { payment_id: payment.payment_id, timestamp: timestamp::format(accepted_at) }))
}

/// The W3C trace context of the request, or a new one: it travels with the event as a
/// Kafka header so the saga's spans join the request's trace.
pub(crate) fn traceparent(headers: &HeaderMap) -> String {
    // The request's server span when traces are exported (crate::http_trace): the saga's span is its child.
    if let Some(own) = paystream_stack::trace::traceparent_of(&tracing::Span::current()) {
        return own;
    }
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok());
    match incoming {
        Some(value) if is_valid_traceparent(value) => value.to_owned(),
        _ => outbox::new_traceparent(),
    }
}

fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

fn problem_slug(error: &ApiError) -> &'static str {
    match error {
        ApiError::Validation { .. } => "validation",
        ApiError::InsufficientFunds { .. } => "insufficient-funds",
        ApiError::Conflict { slug, .. } => slug,
        ApiError::NotFound(_) => "not-found",
        ApiError::Forbidden => "forbidden",
        ApiError::Unauthorized(_) => "unauthorized",
        ApiError::Unavailable(_) => "unavailable",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_kept_when_valid_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", valid.parse().unwrap());
        assert_eq!(traceparent(&headers), valid);
        headers.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap(),
        );
        let made = traceparent(&headers);
        assert_ne!(made, "00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        assert!(is_valid_traceparent(&made), "{made}");
        assert!(is_valid_traceparent(&traceparent(&HeaderMap::new())));
    }
}
