//! The provider's charge API, one attempt at a time.
//!
//! `POST {provider}/v1/charges` with `Idempotency-Key: <paymentId>` and
//! `{paymentId, amount, currency, description}` (the amount a decimal string with two
//! places, never a float). Each attempt ends in one of three ways ([`Attempt`]): accepted
//! (2xx), rejected for good (a 4xx other than 408, 409 and 429: the provider will never
//! take this charge), or failed in a way a retry may fix (timeout, connection error, 5xx,
//! 408, 429, 409, anything unexpected). Redirects are not followed: a provider that moves
//! is a configuration error, not something to chase with a payment.
//!
//! A 409 is "this idempotency key is in use": another request with the same key is being
//! processed (Stripe answers a concurrent request so). The charge may well succeed through
//! that other request, so refusing the payment on it would fail and refund a payment the
//! provider charges; it is retried with back-off on the same key, and each failure says
//! whether the provider may hold the charge ([`AttemptError::may_have_reached_provider`]).

use std::time::Duration;

use paystream_schemas::events::ChargeCommand;
use paystream_stack::trace;
use serde::Serialize;
use tracing::Instrument;
use uuid::Uuid;

/// The path of the charge endpoint, under the provider's base URL.
pub const CHARGES_PATH: &str = "/v1/charges";
/// The idempotency header; its value is the paymentId.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// Most bytes of an error answer kept for the outcome's detail and the logs.
pub const ANSWER_EXCERPT_BYTES_MAX: usize = 512;

/// The JSON body of a charge.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChargeBody<'a> {
    payment_id: Uuid,
    amount: String,
    currency: &'a str,
    description: &'a str,
}

/// Why an attempt failed in a way a retry may fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// No answer within the request timeout.
    #[error("timed out")]
    Timeout,
    /// No connection (refused, unreachable, TLS).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The provider failed (5xx).
    #[error("provider answered {status}: {excerpt}")]
    ServerError { status: u16, excerpt: String },
    /// The provider asks us to come back later (408, 429).
    #[error("provider answered {status} (try later): {excerpt}")]
    Throttled { status: u16, excerpt: String },
    /// 409: a request with the same idempotency key is in progress at the provider.
    #[error("provider answered {status} (idempotency key in use): {excerpt}")]
    KeyInUse { status: u16, excerpt: String },
    /// Anything else (a broken connection mid-answer, a redirect).
    #[error("{0}")]
    Other(String),
}

impl AttemptError {
    /// The `type` label of the error counter.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::ServerError { .. } => "5xx",
            Self::Throttled { .. } => "4xx",
            Self::KeyInUse { .. } => "key-in-use",
            Self::Other(_) => "other",
        }
    }

    /// Whether the provider may have taken (or be taking) the charge despite this failure:
    /// the outcome of a dispatch that ends on it is uncertain. Only an attempt that never
    /// reached the provider (no connection) or that it declined to process (408, 429) is
    /// certain not to have charged.
    pub fn may_have_reached_provider(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Throttled { .. } => false,
            Self::Timeout | Self::ServerError { .. } | Self::KeyInUse { .. } | Self::Other(_) => true,
        }
    }
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx: the provider took the charge; its verdict comes by callback.
    Accepted { status: u16 },
    /// A 4xx other than 408/429: the provider refuses this charge for good.
    Rejected { status: u16, excerpt: String },
    /// Worth another attempt.
    Failed(AttemptError),
}

/// What a status code means for the charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Accepted,
    Rejected,
    Retry,
}

/// 2xx accepted; 408, 409, 429 and 5xx retried; other 4xx rejected; anything else (1xx,
/// 3xx) retried, because it says nothing about the charge.
pub fn classify(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Accepted,
        408 | 409 | 429 => StatusClass::Retry,
        400..=499 => StatusClass::Rejected,
        _ => StatusClass::Retry,
    }
}

/// Calls the provider's charge endpoint.
#[derive(Clone, Debug)]
pub struct ProviderClient {
    /// Pooled connections, with the connect and request timeouts.
    http: reqwest::Client,
    /// `{provider}/v1/charges`.
    charges_url: String,
}

/// The HTTP client every call to the provider goes through (charges, status queries, voids,
/// refunds): `request_timeout` bounds the whole attempt, connection included — how long one
/// attempt can hold its partition; redirects are never followed.
pub(crate) fn http_client(
    connect_timeout: Duration,
    request_timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The provider's charges collection under `base_url` (`http://127.0.0.1:8090`).
pub(crate) fn charges_url(base_url: &str) -> String {
    format!("{}{CHARGES_PATH}", base_url.trim_end_matches('/'))
}

impl ProviderClient {
    /// A client for the provider at `base_url` (`http://127.0.0.1:8090`).
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> reqwest::Result<Self> {
        Ok(Self { http: http_client(connect_timeout, request_timeout)?, charges_url: charges_url(base_url) })
    }

    /// The URL charges go to.
    pub fn charges_url(&self) -> &str {
        &self.charges_url
    }

    /// One attempt to charge `command`, in a client span of its own whose trace context the
    /// request carries (`traceparent`), so the provider's work joins the payment's trace.
    pub async fn charge(&self, command: &ChargeCommand) -> Attempt {
        let span = tracing::info_span!(
            "provider charge",
            otel.name = "POST /v1/charges",
            otel.kind = "client",
            payment_id = %command.payment_id,
            http.request.method = "POST",
            url.full = %self.charges_url,
        );
        self.charge_once(command).instrument(span).await
    }

    async fn charge_once(&self, command: &ChargeCommand) -> Attempt {
        let mut trace_headers = reqwest::header::HeaderMap::new();
        trace::inject_http(&mut trace_headers);
        let body = ChargeBody {
            payment_id: command.payment_id,
            amount: command.amount.to_string(),
            currency: &command.currency,
            description: &command.description,
        };
        let sent = self
            .http
            .post(&self.charges_url)
            .header(IDEMPOTENCY_KEY_HEADER, command.payment_id.to_string())
            .headers(trace_headers)
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_timeout() => return Attempt::Failed(AttemptError::Timeout),
            Err(error) if error.is_connect() => return Attempt::Failed(AttemptError::Connect(chain(&error))),
            Err(error) => return Attempt::Failed(AttemptError::Other(chain(&error))),
        };
        let status = response.status().as_u16();
        match classify(status) {
            StatusClass::Accepted => Attempt::Accepted { status },
            StatusClass::Rejected => Attempt::Rejected { status, excerpt: excerpt(response).await },
            StatusClass::Retry if status >= 500 => {
                Attempt::Failed(AttemptError::ServerError { status, excerpt: excerpt(response).await })
            }
            StatusClass::Retry if matches!(status, 408 | 429) => {
                Attempt::Failed(AttemptError::Throttled { status, excerpt: excerpt(response).await })
            }
            StatusClass::Retry if status == 409 => {
                Attempt::Failed(AttemptError::KeyInUse { status, excerpt: excerpt(response).await })
            }
            StatusClass::Retry => Attempt::Failed(AttemptError::Other(format!("unexpected status {status}"))),
        }
    }
}

/// The first bytes of an answer's body, as text; reading stops at the bound.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ANSWER_EXCERPT_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(ANSWER_EXCERPT_BYTES_MAX);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An error with its sources, which is where reqwest puts the useful part.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_accepted_rejected_or_retry() {
        for status in [200, 201, 202, 204] {
            assert_eq!(classify(status), StatusClass::Accepted, "{status}");
        }
        for status in [400, 401, 403, 404, 422] {
            assert_eq!(classify(status), StatusClass::Rejected, "{status}");
        }
        // 409 (the idempotency key is in use) is never a rejection: the other request may
        // be charging.
        for status in [408, 409, 429, 500, 502, 503, 504, 301, 100] {
            assert_eq!(classify(status), StatusClass::Retry, "{status}");
        }
    }

    #[test]
    fn error_labels_are_the_metric_s() {
        assert_eq!(AttemptError::Timeout.label(), "timeout");
        assert_eq!(AttemptError::Connect("refused".into()).label(), "connect");
        assert_eq!(AttemptError::ServerError { status: 503, excerpt: String::new() }.label(), "5xx");
        assert_eq!(AttemptError::Throttled { status: 429, excerpt: String::new() }.label(), "4xx");
        assert_eq!(AttemptError::KeyInUse { status: 409, excerpt: String::new() }.label(), "key-in-use");
        for label in [
            AttemptError::Timeout,
            AttemptError::Connect(String::new()),
            AttemptError::KeyInUse { status: 409, excerpt: String::new() },
            AttemptError::Other(String::new()),
        ]
        .iter()
        .map(AttemptError::label)
        {
            assert!(super::super::metrics::ERROR_TYPES.contains(&label), "{label} is pre-registered");
        }
    }

    #[test]
    fn only_attempts_that_never_reached_the_provider_are_certain() {
        assert!(!AttemptError::Connect("refused".into()).may_have_reached_provider());
        assert!(!AttemptError::Throttled { status: 429, excerpt: String::new() }.may_have_reached_provider());
        assert!(AttemptError::Timeout.may_have_reached_provider());
        assert!(AttemptError::ServerError { status: 503, excerpt: String::new() }.may_have_reached_provider());
        assert!(AttemptError::KeyInUse { status: 409, excerpt: String::new() }.may_have_reached_provider());
    }
}
