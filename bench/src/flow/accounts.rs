//! The run's users, made the way a client makes them: through the real API. Each user gets
//! a token of their own, opens a RUB wallet (`POST /api/v1/accounts`), and an operator
//! deposits into it (`POST /api/v1/accounts/{id}/deposits`, operator scope, idempotent on
//! its key).
//!
//! Unlike `ingest`'s seeded rows, these users stay: their payments went through Kafka, the
//! provider and settlement, so removing the wallets would leave the provider's ledger and
//! the topics pointing at nothing (and the audit would rightly complain). Their names,
//! `paystream-load <run tag> <n>`, say which run made them.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use paystream_api::auth::{self, Claims};
use serde::Deserialize;
use uuid::Uuid;

use crate::payment::CURRENCY;

/// Every load user's name starts with this (and never with `ingest`'s prefix, so
/// `paystream-bench clean` leaves them alone).
pub const USER_NAME_PREFIX: &str = "paystream-load ";
/// Every load deposit's Idempotency-Key starts with this.
pub const DEPOSIT_KEY_PREFIX: &str = "paystream-load-";
/// What each wallet receives: at 0.01 a payment, a million payments each, more than any run
/// makes from one wallet.
pub const DEPOSIT_AMOUNT: &str = "10000.00";
/// The longest one set-up request may take.
pub const SETUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A user of the run and their wallet.
#[derive(Clone, Debug)]
pub struct LoadUser {
    pub user_id: Uuid,
    pub wallet_id: Uuid,
    /// Their bearer token, for the payments.
    pub token: String,
}

/// Mints the run's tokens. The one place that knows how (HS256 under the API's secret, the
/// claims `paystream token` mints), so an identity provider can replace it later.
#[derive(Clone)]
pub struct Tokens {
    secret: Vec<u8>,
    lifetime: Duration,
}

impl Tokens {
    /// Tokens valid for `lifetime` (at most the API's 24 h), signed with `secret`.
    pub fn new(secret: &[u8], lifetime: Duration) -> Self {
        let lifetime = lifetime.min(Duration::from_secs(auth::LIFETIME_MAX_S));
        Self { secret: secret.to_vec(), lifetime }
    }

    /// A plain user's token.
    pub fn user(&self, user_id: Uuid) -> anyhow::Result<String> {
        auth::mint_hs256(&self.secret, &Claims::user(user_id, self.lifetime)).context("minting a user token")
    }

    /// An operator's token (scope `operator`): the one that may deposit.
    pub fn operator(&self, operator_id: Uuid) -> anyhow::Result<String> {
        auth::mint_hs256(&self.secret, &Claims::operator(operator_id, self.lifetime))
            .context("minting an operator token")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Balance {
    wallet_id: Uuid,
}

/// Creates `count` users with a funded wallet each, `concurrency` at a time; calls
/// `created(n)` after each.
pub async fn create(
    base_url: &str,
    tag: &str,
    count: u32,
    concurrency: usize,
    tokens: &Tokens,
    created: impl Fn(u64) + Sync,
) -> anyhow::Result<Vec<LoadUser>> {
    let http = reqwest::Client::builder()
        .timeout(SETUP_REQUEST_TIMEOUT)
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let operator = tokens.operator(Uuid::new_v4())?;
    let done = std::sync::atomic::AtomicU64::new(0);
    futures::stream::iter(1..=count)
        .map(|n| {
            let (http, operator, done, created) = (&http, &operator, &done, &created);
            async move {
                let user = create_one(http, base_url, tag, n, tokens, operator).await?;
                created(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                anyhow::Ok(user)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

async fn create_one(
    http: &reqwest::Client,
    base_url: &str,
    tag: &str,
    n: u32,
    tokens: &Tokens,
    operator: &str,
) -> anyhow::Result<LoadUser> {
    let user_id = Uuid::new_v4();
    let token = tokens.user(user_id)?;
    let body = serde_json::json!({ "name": format!("{USER_NAME_PREFIX}{tag} {n}"), "currency": CURRENCY });
    let response = http
        .post(format!("{base_url}/api/v1/accounts"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .context("POST /api/v1/accounts")?;
    let Balance { wallet_id } = answer(response, "POST /api/v1/accounts").await?;
    let response = http
        .post(format!("{base_url}/api/v1/accounts/{wallet_id}/deposits"))
        .bearer_auth(operator)
        .header("Idempotency-Key", format!("{DEPOSIT_KEY_PREFIX}{tag}-{n}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        // A JSON number with two places, as the API wants money (never through a float).
        .body(format!(r#"{{"amount":{DEPOSIT_AMOUNT}}}"#))
        .send()
        .await
        .context("POST /api/v1/accounts/{id}/deposits")?;
    let _: Balance = answer(response, "the operator's deposit").await?;
    Ok(LoadUser { user_id, wallet_id, token })
}

/// The body of a 2xx answer; otherwise an error quoting the problem.
async fn answer<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> anyhow::Result<T> {
    let status = response.status();
    let text = response.text().await.with_context(|| format!("reading the answer to {what}"))?;
    if !status.is_success() {
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (does PAYSTREAM_JWT_HS256_SECRET match the running API's?)"
        } else {
            ""
        };
        bail!("{what} answered {status}{hint}: {text}");
    }
    serde_json::from_str(&text)
        .with_context(|| format!("{what} answered {status} with an unexpected body: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"unit-test-secret-of-at-least-thirty-two-bytes";

    #[test]
    fn operator_tokens_carry_the_scope_and_user_tokens_do_not() {
        let tokens = Tokens::new(SECRET, Duration::from_secs(600));
        let verifier = auth::Authenticator::hs256(SECRET);
        let user = Uuid::new_v4();
        let plain = verifier.verify(&tokens.user(user).unwrap()).unwrap();
        assert_eq!((plain.user_id, plain.operator), (user, false));
        assert!(verifier.verify(&tokens.operator(user).unwrap()).unwrap().operator);
    }

    #[test]
    fn lifetimes_are_capped_at_what_the_api_accepts() {
        let tokens = Tokens::new(SECRET, Duration::from_secs(10 * 24 * 3600));
        let verifier = auth::Authenticator::hs256(SECRET);
        assert!(verifier.verify(&tokens.user(Uuid::new_v4()).unwrap()).is_ok(), "a capped token verifies");
    }

    #[test]
    fn deposit_amount_is_exact_money() {
        let amount: rust_decimal::Decimal = DEPOSIT_AMOUNT.parse().unwrap();
        assert_eq!(amount.scale(), 2);
        assert!(!USER_NAME_PREFIX.starts_with(crate::seed::USER_NAME_PREFIX.trim_end()));
    }
}
