//! Extractors whose rejections are problems, not axum's plain-text errors: every way a
//! request can fail to parse answers `application/problem+json` like any other error.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
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

/// The raw body (`axum::body::Bytes`), with a body over [`BODY_LIMIT_BYTES`] → 413 and a
/// body that breaks off → 400. For handlers that must see the exact bytes (signatures).
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state).await.map(Self).map_err(|rejection: BytesRejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit_bytes: BODY_LIMIT_BYTES }
            } else {
                ApiError::BadRequest {
                    slug: "malformed-body",
                    detail: "the request body could not be read".into(),
                }
            }
        })
    }
}

/// `axum::extract::Path`, with a segment that does not parse (a wallet id that is not a UUID)
/// → 422 `validation` with field `path`, like a bad UUID in a body.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|path| Self(path.0)).map_err(
            |rejection: PathRejection| match rejection {
                PathRejection::FailedToDeserializePathParams(e) => {
                    ApiError::validation("path", e.body_text())
                }
                other => ApiError::internal(other.body_text()),
            },
        )
    }
}
