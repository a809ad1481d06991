//! The API's one error type and its `application/problem+json` rendering (RFC 9457).
//!
//! Every variant is an expected condition with a stable problem `type` a client can branch
//! on. Internal failures are logged with their detail and answered with a generic 500:
//! a client never sees SQL or a stack trace. Unknown paths and methods are problems too
//! ([`not_found`], [`method_not_allowed`], the router's fallbacks), so a client can parse every
//! error the same way.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{ToResponse, ToSchema};
use uuid::Uuid;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required: {0}")]
    Unauthorized(&'static str),
    #[error("the wallet belongs to another user")]
    Forbidden,
    /// The token is valid but lacks the scope the endpoint needs (RFC 6750's insufficient_scope).
    #[error("this endpoint needs a token with scope \"{scope}\"")]
    InsufficientScope { scope: &'static str },
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The payment was accepted but the read database does not show it yet; the response
    /// carries `Retry-After`.
    #[error("the payment is accepted but not visible yet; ask again in {retry_after_s} s")]
    NotYetProjected { retry_after_s: u32 },
    /// A query parameter breaks its rule (400, `field` names the parameter).
    #[error("{parameter}: {detail}")]
    InvalidParameter { parameter: &'static str, detail: String },
    /// No route has this path (the router's fallback).
    #[error("no such endpoint; the API's endpoints are listed in {}", crate::openapi::DOCUMENT_PATH)]
    NoSuchEndpoint,
    /// The path exists, but not for this method; the response's `Allow` header names those it has.
    #[error("this endpoint does not answer this method; the Allow header lists the ones it does")]
    MethodNotAllowed,
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("{field}: {detail}")]
    Validation { field: &'static str, detail: String },
    #[error("insufficient funds: {available} available")]
    InsufficientFunds { available: String },
    /// An id reused for something else; `wallet_id` names the existing wallet of `wallet-exists`.
    #[error("{detail}")]
    Conflict { slug: &'static str, detail: String, wallet_id: Option<Uuid> },
    #[error("{0}")]
    MissingHeader(&'static str),
    #[error("{detail}")]
    BadRequest { slug: &'static str, detail: String },
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body of every error response (RFC 9457 problem details), as `application/problem+json`.
/// It is the schema of every error response in the OpenAPI document, so it is typed: no free
/// form members a client would have to guess.
#[derive(Serialize, ToSchema, ToResponse)]
#[response(
    description = "A problem (RFC 9457); its `type` says which, see the operation's description",
    content_type = "application/problem+json"
)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Stable identifier of the problem kind, relative to the API's base URL, e.g.
    /// `/problems/validation`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/validation", pattern = "^/problems/[a-z-]+$")]
    pub kind: String,
    /// A short summary of the problem kind; the same for every occurrence of a `type`.
    pub title: String,
    /// The HTTP status code, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request. Never internal detail (SQL, secrets, stack traces).
    pub detail: String,
    /// `/problems/validation`: the field (or `body`, `path`) that broke its rule;
    /// `/problems/invalid-parameter`: the query parameter (or `query` for an unknown one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `/problems/wallet-exists`: the caller's existing wallet in that currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<Uuid>,
}

impl ApiError {
    pub fn validation(field: &'static str, detail: impl Into<String>) -> Self {
        Self::Validation { field, detail: detail.into() }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// Status, problem slug and title.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Not your wallet"),
            Self::InsufficientScope { .. } => {
                (StatusCode::FORBIDDEN, "insufficient-scope", "Insufficient scope")
            }
            Self::NotFound(_) | Self::NoSuchEndpoint => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::NotYetProjected { .. } => (StatusCode::NOT_FOUND, "not-yet-projected", "Not visible yet"),
            Self::InvalidParameter { .. } => {
                (StatusCode::BAD_REQUEST, "invalid-parameter", "Invalid query parameter")
            }
            Self::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
            }
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
            }
            Self::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
            }
            Self::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation", "Invalid request"),
            Self::InsufficientFunds { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "insufficient-funds", "Insufficient funds")
            }
            Self::Conflict { slug, .. } => (StatusCode::CONFLICT, slug, "Conflict"),
            Self::MissingHeader(_) => {
                (StatusCode::BAD_REQUEST, "missing-header", "Missing or invalid header")
            }
            Self::BadRequest { slug, .. } => (StatusCode::BAD_REQUEST, slug, "Bad request"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Try again later"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match &self {
            Self::Internal(detail) | Self::Unavailable(detail) => {
                tracing::error!(%status, detail, "request failed");
                "the request could not be completed; it changed nothing".to_owned()
            }
            _ => self.to_string(),
        };
        let problem = Problem {
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            field: match &self {
                Self::Validation { field, .. } => Some((*field).to_owned()),
                Self::InvalidParameter { parameter, .. } => Some((*parameter).to_owned()),
                _ => None,
            },
            wallet_id: match &self {
                Self::Conflict { wallet_id, .. } => *wallet_id,
                _ => None,
            },
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Self::NotYetProjected { retry_after_s } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::InsufficientScope { scope } = &self {
            // RFC 6750 §3: tells the client which scope to ask its issuer for.
            if let Ok(value) =
                HeaderValue::from_str(&format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""))
            {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// The router's fallback: a path no route has.
pub async fn not_found() -> ApiError {
    ApiError::NoSuchEndpoint
}

/// The router's method-not-allowed fallback (axum keeps the `Allow` header it computed).
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            // The database was away or shutting down (a restart answers 57P01): the request
            // changed nothing and the same one may succeed in a moment.
            error if paystream_stack::postgres::is_transient(error) => Self::Unavailable(error.to_string()),
            _ => Self::Internal(error.to_string()),
        }
    }
}
