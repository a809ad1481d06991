//! Accounts (seed 004): a user's wallet per currency, deposits, balances.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use paystream_schemas::Amount;
use paystream_wallet::{self as wallet, Refusal, WalletError};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::money;
use crate::state::AppState;

/// Longest accepted user name and phone, in characters.
pub const NAME_CHARS_MAX: usize = 200;
pub const PHONE_CHARS_MAX: usize = 32;
/// Longest accepted Idempotency-Key.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// The CHECK constraint capping a wallet's available + reserved
/// (`migrations/wallet/20261128000004_wallet_balance_max.sql`), and its cap as the problem says it.
pub const BALANCE_MAX_CONSTRAINT: &str = "wallets_balance_max";
pub const BALANCE_MAX_TEXT: &str = "999999999999.99";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// The owner's name (stored on the user; the payment view shows it): 1 to 200 characters
    /// once trimmed, no NUL.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    name: String,
    /// At most 32 characters, no NUL.
    #[schema(max_length = 32, pattern = r"^[^\u0000]*$")]
    phone: Option<String>,
    /// ISO 4217 code, e.g. "RUB".
    #[schema(pattern = "^[A-Z]{3}$", example = "RUB")]
    currency: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepositRequest {
    #[serde(deserialize_with = "money::exact")]
    #[schema(value_type = money::RequestAmount)]
    amount: Decimal,
}

/// A wallet's balance.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    wallet_id: Uuid,
    #[schema(pattern = "^[A-Z]{3}$", example = "RUB")]
    currency: String,
    /// What the owner may spend.
    #[serde(serialize_with = "money::to_number")]
    #[schema(value_type = money::ResponseMoney)]
    available: Decimal,
    /// What accepted, unsettled payments hold.
    #[serde(serialize_with = "money::to_number")]
    #[schema(value_type = money::ResponseMoney)]
    reserved: Decimal,
}

/// Creates the caller's wallet in a currency (one per user and currency) and records the
/// caller's name and phone.
///
/// Problems: 400 `malformed-json`; 401 `unauthorized`; 409 `wallet-exists` (with `walletId`);
/// 413 `payload-too-large`; 415 `unsupported-media-type`; 422 `validation` (with `field`);
/// 503 `unavailable`.
#[utoipa::path(
    post,
    path = "/api/v1/accounts",
    tag = "accounts",
    request_body(content = CreateAccount, content_type = "application/json"),
    responses(
        (status = 201, description = "The new, empty wallet", body = Balance),
        (status = 400, response = crate::error::Problem),
        (status = 401, response = crate::error::Problem),
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
    ApiJson(request): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<Balance>), ApiError> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > NAME_CHARS_MAX || name.contains('\0') {
        return Err(ApiError::validation(
            "name",
            format!("must be 1 to {NAME_CHARS_MAX} characters, not all blank, without NUL"),
        ));
    }
    if request.phone.as_ref().is_some_and(|p| p.chars().count() > PHONE_CHARS_MAX || p.contains('\0')) {
        return Err(ApiError::validation(
            "phone",
            format!("must be at most {PHONE_CHARS_MAX} characters, without NUL"),
        ));
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
        return Err(ApiError::Conflict {
            slug: "wallet-exists",
            detail: format!("you already have a {} wallet", request.currency),
            wallet_id: Some(existing),
        });
    }
    tx.commit().await?;
    let balance =
        Balance { wallet_id, currency: request.currency, available: Decimal::ZERO, reserved: Decimal::ZERO };
    Ok((StatusCode::CREATED, Json(balance)))
}

/// The caller's wallets, oldest first.
///
/// Problems: 401 `unauthorized`; 503 `unavailable`.
#[utoipa::path(
    get,
    path = "/api/v1/accounts",
    tag = "accounts",
    responses(
        (status = 200, description = "The caller's wallets", body = Vec<Balance>),
        (status = 401, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
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

/// One of the caller's wallets.
///
/// Problems: 401 `unauthorized`; 403 `forbidden` (someone else's wallet); 404 `not-found`;
/// 422 `validation` (the id is not a UUID, field `path`); 503 `unavailable`.
#[utoipa::path(
    get,
    path = "/api/v1/accounts/{walletId}",
    tag = "accounts",
    params(("walletId" = Uuid, Path, description = "The wallet's id")),
    responses(
        (status = 200, description = "The wallet's balance", body = Balance),
        (status = 401, response = crate::error::Problem),
        (status = 403, response = crate::error::Problem),
        (status = 404, response = crate::error::Problem),
        (status = 422, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(wallet_id): ApiPath<Uuid>,
) -> Result<Json<Balance>, ApiError> {
    let mut conn = state.db.acquire().await?;
    Ok(Json(owned_balance(&mut conn, caller, wallet_id).await?))
}

/// Adds money to a wallet, once per `Idempotency-Key`: the same key again is the same deposit
/// (answered with the current balance); the same key with another wallet or amount is a 409.
/// A wallet holds at most 999999999999.99 in all (available + reserved).
///
/// Money enters the system here, so only an operator's token (scope `operator`) may deposit,
/// into any user's wallet; a user's own token is a 403, whoever owns the wallet (otherwise
/// every user could mint money for themselves).
///
/// Problems: 400 `malformed-json` or `missing-header`; 401 `unauthorized`; 403
/// `insufficient-scope`; 404 `not-found`; 409 `idempotency-key-reused`; 413
/// `payload-too-large`; 415 `unsupported-media-type`; 422 `validation` (with `field`: the
/// amount, or the balance it would exceed; `path` for a wallet id that is not a UUID); 503
/// `unavailable`.
#[utoipa::path(
    post,
    path = "/api/v1/accounts/{walletId}/deposits",
    tag = "accounts",
    params(
        ("walletId" = Uuid, Path, description = "The wallet's id"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 128,
         description = "The deposit's id, 1 to 128 characters; the same key again is the same deposit"),
    ),
    request_body(content = DepositRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The balance after the deposit", body = Balance),
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
pub async fn deposit(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(wallet_id): ApiPath<Uuid>,
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
                wallet_id: None,
            });
        }
    } else {
        wallet::deposit(&mut tx, wallet_id, amount).await.map_err(deposit_refused)?;
    }
    let (_, balance) = wallet_balance(&mut tx, wallet_id, false).await?;
    tx.commit().await?;
    if inserted > 0 {
        tracing::info!(operator = %caller.user_id, %wallet_id, %key, "deposit");
    }
    Ok(Json(balance))
}

/// The API's answer to a deposit the wallet refused; the transaction, with its deposits row,
/// is rolled back.
fn deposit_refused(error: WalletError) -> ApiError {
    let over_cap = || {
        ApiError::validation(
            "amount",
            format!("the wallet's balance (available + reserved) would exceed {BALANCE_MAX_TEXT}"),
        )
    };
    match error {
        WalletError::Refused(Refusal::OverBalanceCap { .. }) => over_cap(),
        // The database's own refusals of the same deposit, behind the rules: 22003, a value
        // would overflow numeric(14,2); 23514 on wallets_balance_max, the cap.
        WalletError::Database(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("22003")
                || (e.code().as_deref() == Some("23514")
                    && e.constraint() == Some(BALANCE_MAX_CONSTRAINT)) =>
        {
            over_cap()
        }
        WalletError::Database(error) => error.into(),
        WalletError::Missing(_) => ApiError::NotFound("wallet"),
        other => ApiError::internal(other),
    }
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
