//! `Authorization: Bearer <JWT>` on every client endpoint.
//!
//! The token's subject is the caller's user id; a wallet may only be used by the user
//! who owns it. Keys come from configuration: an HS256 shared secret or an RS256 public
//! key (the issuer keeps the private key). Expiry is required and checked.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Tolerated clock difference between the token issuer and us.
pub const LEEWAY_S: u64 = 30;

/// The claims paystream reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Verifies tokens.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// Tokens signed with a shared secret (HS256).
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Tokens signed with an RSA key whose public half is `pem` (RS256).
    pub fn rs256(pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self::with(DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256))
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_S;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { key, validation }
    }

    /// The user a bearer token speaks for.
    pub fn verify(&self, token: &str) -> Result<Uuid, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| ApiError::Unauthorized("the bearer token is invalid or expired"))?;
        Uuid::parse_str(&data.claims.sub)
            .map_err(|_| ApiError::Unauthorized("the token's subject is not a user id"))
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub user_id: Uuid,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("an Authorization: Bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized("the Authorization header must be 'Bearer <token>'"))?;
        Ok(Self { user_id: state.auth.verify(token.trim())? })
    }
}
