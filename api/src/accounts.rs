//! Accounts (seed 004): a user's wallet per currency, deposits, balances.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use paystream_schemas::Amount;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::money;
use crate::state::AppState;

/// Longest accepted user name and phone, in characters.
pub const NAME_CHARS_MAX: usize = 200;
pub const PHONE_CHARS_MAX: usize = 32;
/// Longest accepted Idempotency-Key.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// The owner's name (stored on the user; the payment view shows it).
    name: String,
    phone: Option<String>,
    /// ISO 4217 code, e.g. "RUB".
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepositRequest {
    #[serde(deserialize_with = "money::exact")]
    amount: Decimal,
}

/// A wallet's balance.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    wallet_id: Uuid,
    currency: String,
    /// What the owner may spend.
    #[serde(serialize_with = "money::to_number")]
    available: Decimal,
    /// What accepted, unsettled payments hold.
    #[serde(serialize_with = "money::to_number")]
    reserved: Decimal,
}

/// `POST /api/v1/accounts`: the caller's wallet in a currency (one per user and currency).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<Balance>), ApiError> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > NAME_CHARS_MAX {
        return Err(ApiError::validation("name", format!("must be 1 to {NAME_CHARS_MAX} characters")));
    }
    if request.phone.as_ref().is_some_and(|p| p.chars().count() > PHONE_CHARS_MAX) {
        return Err(ApiError::validation("phone", format!("must be at most {PHONE_CHARS_MAX} characters")));
    }
    if !(request.currency.len() == 3 && request.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(ApiError::validation("currency", "must be an ISO 4217 code such as RUB"));
    }
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO users (user_id, name, phone) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET name = EXCLUDED.name, phone = EXCLUDED.phone, updated_at = now()",
    )
    .bind(caller.user_id)
    .bind(name)
    .bind(&request.phone)
    .execute(&mut *tx)
    .await?;
    let wallet_id = Uuid::new_v4();
    let created = sqlx::query(
        "INSERT INTO wallets (wallet_id, user_id, currency) VALUES ($1, $2, $3)
         ON CONFLICT ON CONSTRAINT wallets_one_per_user_and_currency DO NOTHING",
    )
    .bind(wallet_id)
    .bind(caller.user_id)
    .bind(&request.currency)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if created == 0 {
        let existing: Uuid =
            sqlx::query_scalar("SELECT wallet_id FROM wallets WHERE user_id = $1 AND currency = $2")
                .bind(caller.user_id)
                .bind(&request.currency)
                .fetch_one(&mut *tx)
                .await?;
        let mut extra = Map::new();
        extra.insert("walletId".into(), Value::String(existing.to_string()));
        return Err(ApiError::Conflict {
            slug: "wallet-exists",
            detail: format!("you already have a {} wallet", request.currency),
            extra,
        });
    }
    tx.commit().await?;
    let balance =
        Balance { wallet_id, currency: request.currency, available: Decimal::ZERO, reserved: Decimal::ZERO };
    Ok((StatusCode::CREATED, Json(balance)))
}

/// `GET /api/v1/accounts`: the caller's wallets.
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<Balance>>, ApiError> {
    let rows: Vec<(Uuid, String, Decimal, Decimal)> = sqlx::query_as(
        "SELECT wallet_id, currency, available, reserved FROM wallets WHERE user_id = $1 ORDER BY created_at",
    )
    .bind(caller.user_id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(wallet_id, currency, available, reserved)| Balance {
                wallet_id,
                currency,
                available,
                reserved,
            })
            .collect(),
    ))
}

/// `GET /api/v1/accounts/{wallet_id}`: one of the caller's wallets.
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(wallet_id): Path<Uuid>,
) -> Result<Json<Balance>, ApiError> {
    let mut conn = state.db.acquire().await?;
    Ok(Json(owned_balance(&mut conn, caller, wallet_id).await?))
}

/// `POST /api/v1/accounts/{wallet_id}/deposits` with `Idempotency-Key`: adds money. The
/// same key again is the same deposit (answered with the current balance); the same key
/// with another wallet or amount is a 409.
///
/// Money enters the system here, so only an operator's token (scope
/// [`crate::auth::OPERATOR_SCOPE`]) may deposit, into any user's wallet; a user's own token
/// is a 403, whoever owns the wallet (otherwise every user could mint money for themselves).
pub async fn deposit(
    State(state): State<AppState>,
    caller: Caller,
    Path(wallet_id): Path<Uuid>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<DepositRequest>,
) -> Result<Json<Balance>, ApiError> {
    caller.require_operator()?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX)
        .ok_or(ApiError::MissingHeader("an Idempotency-Key header (1 to 128 characters) is required"))?
        .to_owned();
    let amount = Amount::try_from_decimal(request.amount)
        .map_err(|e| ApiError::validation("amount", e.to_string()))?;

    let mut tx = state.db.begin().await?;
    wallet_balance(&mut tx, wallet_id, true).await?;
    let inserted = sqlx::query(
        "INSERT INTO deposits (idempotency_key, wallet_id, amount) VALUES ($1, $2, $3)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&key)
    .bind(wallet_id)
    .bind(amount.to_decimal())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        let (previous_wallet, previous_amount): (Uuid, Decimal) =
            sqlx::query_as("SELECT wallet_id, amount FROM deposits WHERE idempotency_key = $1")
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?;
        if previous_wallet != wallet_id || previous_amount != amount.to_decimal() {
            return Err(ApiError::Conflict {
                slug: "idempotency-key-reused",
                detail: "this Idempotency-Key was used for another deposit".into(),
                extra: Map::new(),
            });
        }
    } else {
        let updated = sqlx::query(
            "UPDATE wallets SET available = available + $2, version = version + 1, updated_at = now()
             WHERE wallet_id = $1",
        )
        .bind(wallet_id)
        .bind(amount.to_decimal())
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(e)) = &updated {
            if e.code().as_deref() == Some("22003") {
                return Err(ApiError::validation("amount", "the wallet's balance would exceed its limit"));
            }
        }
        updated?;
    }
    let (_, balance) = wallet_balance(&mut tx, wallet_id, false).await?;
    tx.commit().await?;
    if inserted > 0 {
        tracing::info!(operator = %caller.user_id, %wallet_id, %key, "deposit");
    }
    Ok(Json(balance))
}

/// The balance of `wallet_id` if `caller` owns it (404 if it does not exist, 403 if it is
/// someone else's).
async fn owned_balance(
    conn: &mut PgConnection,
    caller: Caller,
    wallet_id: Uuid,
) -> Result<Balance, ApiError> {
    match wallet_balance(conn, wallet_id, false).await? {
        (owner, _) if owner != caller.user_id => Err(ApiError::Forbidden),
        (_, balance) => Ok(balance),
    }
}

/// The owner and balance of `wallet_id` (404 if it does not exist). `lock` takes the row
/// lock for the rest of the transaction.
async fn wallet_balance(
    conn: &mut PgConnection,
    wallet_id: Uuid,
    lock: bool,
) -> Result<(Uuid, Balance), ApiError> {
    let sql = if lock {
        "SELECT user_id, currency, available, reserved FROM wallets WHERE wallet_id = $1 FOR UPDATE"
    } else {
        "SELECT user_id, currency, available, reserved FROM wallets WHERE wallet_id = $1"
    };
    let row: Option<(Uuid, String, Decimal, Decimal)> =
        sqlx::query_as(sql).bind(wallet_id).fetch_optional(&mut *conn).await?;
    let (owner, currency, available, reserved) = row.ok_or(ApiError::NotFound("wallet"))?;
    Ok((owner, Balance { wallet_id, currency, available, reserved }))
}
