//! The API as a person's test client uses it (`paystream pay`, `paystream wallet`): a base URL, a
//! bearer token (given, or minted here in dev mode with the local stack's HS256 secret, as
//! `paystream token` does), and answers read as JSON or as a problem (RFC 9457) whose `detail`
//! is shown.

use std::time::Duration;

use anyhow::{bail, Context};
use paystream_api::auth::{self, Claims};
use paystream_api::secrets;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

/// Lifetime of a token minted here: one manual session.
const TOKEN_LIFETIME_S: u64 = 3_600;
/// Bound on one HTTP request to the API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the API is and who speaks to it.
#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// The API's base URL.
    #[arg(long, env = "PAYSTREAM_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// A bearer token to send; without one, a token is minted for `--user` in dev mode
    /// (PAYSTREAM_DEV_MODE=1 and PAYSTREAM_JWT_HS256_SECRET, which dev/lib.sh exports).
    #[arg(long, env = "PAYSTREAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The HS256 secret tokens are minted with (dev mode only).
    #[arg(long, env = "PAYSTREAM_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
}

/// An answer of the API.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// The body as it came: amounts are read from it exactly ([`serde_json::value::RawValue`]),
    /// never through `body`'s floats.
    pub text: String,
    pub location: Option<String>,
}

impl Answer {
    /// The body of a 2xx answer; otherwise an error naming the problem's status and detail.
    pub fn ok(self, what: &str) -> anyhow::Result<Self> {
        if self.status.is_success() {
            return Ok(self);
        }
        let detail = self.body["detail"].as_str().unwrap_or("no detail");
        let kind = self.body["type"].as_str().unwrap_or("?");
        bail!("{what}: {} {kind}: {detail}", self.status.as_u16())
    }
}

/// A client of the API for one session.
pub struct Client {
    http: reqwest::Client,
    args: ApiArgs,
}

impl Client {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
        Ok(Self { http, args: args.clone() })
    }

    /// The token for `user` (an operator's with `operator`): the given one, else one minted in
    /// dev mode.
    pub fn token(&self, user: Uuid, operator: bool) -> anyhow::Result<String> {
        if let Some(token) = &self.args.token {
            return Ok(token.clone());
        }
        if !secrets::dev_mode_from_env()? {
            bail!(
                "no --token (PAYSTREAM_TOKEN): tokens are minted here only in dev mode ({}=1, as dev/lib.sh sets)",
                secrets::DEV_MODE_VARIABLE
            );
        }
        let Some(secret) = &self.args.jwt_hs256_secret else {
            bail!("set PAYSTREAM_JWT_HS256_SECRET (dev/lib.sh exports the local stack's)");
        };
        let lifetime = Duration::from_secs(TOKEN_LIFETIME_S);
        let claims = if operator { Claims::operator(user, lifetime) } else { Claims::user(user, lifetime) };
        auth::mint_hs256(secret.as_bytes(), &claims).context("signing a token")
    }

    /// `method path` as `user`, with a JSON body given as its exact text (amounts are JSON
    /// numbers read from their text by the API: never through a float here).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<String>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.args.api_url.trim_end_matches('/'));
        let mut request = self.http.request(method, &url).bearer_auth(token);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.with_context(|| format!("calling {url}"))?;
        let status = response.status();
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
        Ok(Answer { status, body, text, location })
    }
}

/// An amount as the API takes it: a decimal with at most two places, > 0 (checked here so a typo
/// is named before anything is sent).
pub fn amount(text: &str) -> anyhow::Result<rust_decimal::Decimal> {
    let amount = rust_decimal::Decimal::from_str_exact(text).with_context(|| format!("amount {text:?}"))?;
    if amount <= rust_decimal::Decimal::ZERO || amount.scale() > 2 {
        bail!("amount {text}: must be > 0 with at most two decimal places");
    }
    Ok(amount)
}
