//! A JSON body extractor whose rejections are problems, not axum's plain-text errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::server::BODY_LIMIT_BYTES;

/// `axum::Json`, with malformed JSON → 400, a body that does not fit the request type
/// (missing field, wrong type, unknown field, bad UUID) → 422, wrong content type → 415,
/// too large → 413.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
                JsonRejection::JsonDataError(e) => ApiError::validation("body", e.body_text()),
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge { limit_bytes: BODY_LIMIT_BYTES }
                }
                other => ApiError::MalformedJson(other.body_text()),
            }),
        }
    }
}
