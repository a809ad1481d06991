//! The API's one error type and its `application/problem+json` rendering (RFC 9457).
//!
//! Every variant is an expected condition with a stable problem `type` a client can branch
//! on. Internal failures are logged with their detail and answered with a generic 500:
//! a client never sees SQL or a stack trace.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

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
    #[error("{detail}")]
    Conflict { slug: &'static str, detail: String, extra: Map<String, Value> },
    #[error("{0}")]
    MissingHeader(&'static str),
    #[error("{detail}")]
    BadRequest { slug: &'static str, detail: String },
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body of every error response.
#[derive(Serialize)]
struct Problem<'a> {
    /// Stable identifier of the problem kind, relative to the API's base URL.
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(flatten)]
    extra: Map<String, Value>,
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
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
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
        let mut extra = Map::new();
        let detail = match &self {
            Self::Internal(detail) | Self::Unavailable(detail) => {
                tracing::error!(%status, detail, "request failed");
                "the request could not be completed; it changed nothing".to_owned()
            }
            Self::Validation { field, .. } => {
                extra.insert("field".into(), Value::String((*field).to_owned()));
                self.to_string()
            }
            Self::Conflict { extra: more, .. } => {
                extra.extend(more.clone());
                self.to_string()
            }
            _ => self.to_string(),
        };
        let problem =
            Problem { kind: format!("/problems/{slug}"), title, status: status.as_u16(), detail, extra };
        let mut response = (status, axum::Json(problem)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
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

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => Self::Unavailable(error.to_string()),
            _ => Self::Internal(error.to_string()),
        }
    }
}
