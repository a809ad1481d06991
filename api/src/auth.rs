//! `Authorization: Bearer <JWT>` on every client endpoint.
//!
//! The token's subject is the caller's user id; a wallet may only be used by the user
//! who owns it. Keys come from configuration: an HS256 shared secret or an RS256 public
//! key (the issuer keeps the private key).
//!
//! A token is accepted only if all of these hold, so a token minted for another service, one
//! not yet valid, or one that would stay valid for months cannot be used here:
//! - the signature verifies, with the configured algorithm only (no algorithm confusion);
//! - `iss` is the configured issuer and `aud` names the configured audience
//!   ([`DEFAULT_ISSUER`], [`DEFAULT_AUDIENCE`] unless configured otherwise);
//! - `exp` has not passed and `nbf`, if present, has (both with [`LEEWAY_S`]);
//! - `iat` is present, not in the future, and `exp - iat` is at most [`LIFETIME_MAX_S`]: a
//!   leaked token is worth a day at most, whoever minted it;
//! - `sub` is a UUID.
//!
//! `scope` (space-separated, as in RFC 8693 and RFC 9068) grants more than a user's own
//! wallets: [`OPERATOR_SCOPE`] may deposit into any wallet. A token without it is a plain user.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Tolerated clock difference between the token issuer and us.
pub const LEEWAY_S: u64 = 30;
/// The longest lifetime (`exp - iat`) a token may have: a stolen token stops working within a
/// day, and `paystream token` cannot mint a permanent one.
pub const LIFETIME_MAX_S: u64 = 24 * 60 * 60;
/// The issuer (`iss`) expected unless `PAYSTREAM_JWT_ISSUER` says otherwise.
pub const DEFAULT_ISSUER: &str = "paystream";
/// The audience (`aud`) expected unless `PAYSTREAM_JWT_AUDIENCE` says otherwise.
pub const DEFAULT_AUDIENCE: &str = "paystream-api";
/// The scope that may deposit money into any wallet.
pub const OPERATOR_SCOPE: &str = "operator";

/// The claims paystream mints (`paystream token`, tests). Verification reads them more
/// leniently: `aud` may also be an array, `nbf` and `scope` may be absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (for an operator: the operator's own id).
    pub sub: String,
    /// Who minted the token.
    pub iss: String,
    /// Who the token is for.
    pub aud: String,
    /// Issued at, seconds since the epoch; bounds the lifetime.
    pub iat: u64,
    /// Not valid before, seconds since the epoch.
    pub nbf: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Space-separated scopes; empty for a plain user.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

impl Claims {
    /// A plain user's claims, valid from now for `lifetime`, for the default issuer and audience.
    pub fn user(user: Uuid, lifetime: Duration) -> Self {
        Self::issued(user, "", now_s(), lifetime.as_secs())
    }

    /// An operator's claims ([`OPERATOR_SCOPE`]), valid from now for `lifetime`.
    pub fn operator(operator: Uuid, lifetime: Duration) -> Self {
        Self::issued(operator, OPERATOR_SCOPE, now_s(), lifetime.as_secs())
    }

    /// Claims issued at `iat_s` for `lifetime_s`, with the default issuer and audience.
    pub fn issued(sub: Uuid, scope: &str, iat_s: u64, lifetime_s: u64) -> Self {
        Self {
            sub: sub.to_string(),
            iss: DEFAULT_ISSUER.to_owned(),
            aud: DEFAULT_AUDIENCE.to_owned(),
            iat: iat_s,
            nbf: iat_s,
            exp: iat_s.saturating_add(lifetime_s),
            scope: scope.to_owned(),
        }
    }
}

/// An HS256 token of `claims` under `secret`: what `paystream token` prints and what tests
/// send. (`Claims::operator` + this is the operator token of a deposit.)
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
}

/// Seconds since the epoch; 0 if the clock is before 1970 (every token is then refused as
/// issued in the future, which is the safe side).
fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a bearer token is refused; each is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum TokenError {
    Invalid,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    IssuedInTheFuture,
    LifetimeTooLong,
    SubjectNotAUser,
}

impl TokenError {
    /// The problem's detail. Only a token whose signature verified gets past `Invalid`, so
    /// naming the failed claim tells a forger nothing.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Invalid => "the bearer token is malformed or its signature does not verify",
            Self::Expired => "the bearer token has expired",
            Self::NotYetValid => "the bearer token is not valid yet (nbf)",
            Self::WrongIssuer => "the bearer token was issued by someone this API does not trust (iss)",
            Self::WrongAudience => "the bearer token is meant for another audience (aud)",
            Self::MissingClaim => "the bearer token lacks a required claim (sub, iss, aud, iat and exp)",
            Self::IssuedInTheFuture => "the bearer token was issued in the future (iat)",
            Self::LifetimeTooLong => "the bearer token's lifetime (exp - iat) is longer than 24 h",
            Self::SubjectNotAUser => "the token's subject is not a user id",
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        ApiError::Unauthorized(error.reason())
    }
}

/// What verification reads from a token (signature, `exp`, `nbf`, `iss` and `aud` are
/// checked by `jsonwebtoken` before this is looked at).
#[derive(Deserialize)]
struct Presented {
    sub: String,
    iat: Option<u64>,
    exp: u64,
    #[serde(default)]
    scope: String,
}

/// Who a verified token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub user_id: Uuid,
    /// Whether the token carries [`OPERATOR_SCOPE`].
    pub operator: bool,
}

/// Verifies tokens.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// Tokens signed with a shared secret (HS256), for the default issuer and audience.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Tokens signed with an RSA key whose public half is `pem` (RS256), for the default
    /// issuer and audience.
    pub fn rs256(pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self::with(DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256))
    }

    /// Expects `issuer` and `audience` instead of the defaults.
    pub fn expecting(mut self, issuer: &str, audience: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.set_audience(&[audience]);
        self
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_S;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[DEFAULT_ISSUER]);
        validation.set_audience(&[DEFAULT_AUDIENCE]);
        Self { key, validation }
    }

    /// Who a bearer token speaks for.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify_at(token, now_s())
    }

    /// [`Self::verify`] with `iat` judged against `now_s` (`exp` and `nbf` are judged by
    /// `jsonwebtoken` against the system clock).
    pub fn verify_at(&self, token: &str, now_s: u64) -> Result<Principal, TokenError> {
        let data =
            jsonwebtoken::decode::<Presented>(token, &self.key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                    ErrorKind::InvalidAudience => TokenError::WrongAudience,
                    ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
                    _ => TokenError::Invalid,
                }
            })?;
        let claims = data.claims;
        let iat = claims.iat.ok_or(TokenError::MissingClaim)?;
        if iat > now_s.saturating_add(LEEWAY_S) {
            return Err(TokenError::IssuedInTheFuture);
        }
        if claims.exp.saturating_sub(iat) > LIFETIME_MAX_S {
            return Err(TokenError::LifetimeTooLong);
        }
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| TokenError::SubjectNotAUser)?;
        let operator = claims.scope.split_ascii_whitespace().any(|scope| scope == OPERATOR_SCOPE);
        Ok(Principal { user_id, operator })
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// The token's subject.
    pub user_id: Uuid,
    /// Whether the token carries [`OPERATOR_SCOPE`].
    pub operator: bool,
}

impl Caller {
    /// `Ok` for an operator; a 403 naming the missing scope otherwise.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.operator {
            Ok(())
        } else {
            Err(ApiError::InsufficientScope { scope: OPERATOR_SCOPE })
        }
    }
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
        let principal = state.auth.verify(token.trim())?;
        Ok(Self { user_id: principal.user_id, operator: principal.operator })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"unit-test-secret-of-at-least-thirty-two-bytes";

    fn now() -> u64 {
        now_s()
    }

    #[test]
    fn minted_claims_verify_and_carry_the_scope() {
        let auth = Authenticator::hs256(SECRET);
        let user = Uuid::new_v4();
        let token = mint_hs256(SECRET, &Claims::user(user, Duration::from_secs(600))).unwrap();
        assert_eq!(auth.verify(&token), Ok(Principal { user_id: user, operator: false }));
        let token = mint_hs256(SECRET, &Claims::operator(user, Duration::from_secs(600))).unwrap();
        assert_eq!(auth.verify(&token), Ok(Principal { user_id: user, operator: true }));
        let mut several = Claims::user(user, Duration::from_secs(600));
        several.scope = "read operator".into();
        assert!(auth.verify(&mint_hs256(SECRET, &several).unwrap()).unwrap().operator);
        several.scope = "operators".into();
        assert!(!auth.verify(&mint_hs256(SECRET, &several).unwrap()).unwrap().operator, "whole words");
    }

    #[test]
    fn iat_bounds_the_lifetime() {
        let auth = Authenticator::hs256(SECRET);
        let user = Uuid::new_v4();
        let at_bound = Claims::issued(user, "", now() - 60, LIFETIME_MAX_S);
        assert!(auth.verify(&mint_hs256(SECRET, &at_bound).unwrap()).is_ok());
        let over = Claims::issued(user, "", now() - 60, LIFETIME_MAX_S + 1);
        assert_eq!(auth.verify(&mint_hs256(SECRET, &over).unwrap()), Err(TokenError::LifetimeTooLong));
        // A far-future iat would make the lifetime bound meaningless.
        let future = Claims::issued(user, "", now() + LEEWAY_S + 60, 60);
        let token = jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({"sub": user, "iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE,
                "iat": future.iat, "exp": future.exp}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(auth.verify(&token), Err(TokenError::IssuedInTheFuture));
    }

    #[test]
    fn configured_issuer_and_audience_replace_the_defaults() {
        let auth = Authenticator::hs256(SECRET).expecting("https://id.example", "wallets");
        let mut claims = Claims::user(Uuid::new_v4(), Duration::from_secs(60));
        assert_eq!(auth.verify(&mint_hs256(SECRET, &claims).unwrap()), Err(TokenError::WrongIssuer));
        claims.iss = "https://id.example".into();
        assert_eq!(auth.verify(&mint_hs256(SECRET, &claims).unwrap()), Err(TokenError::WrongAudience));
        claims.aud = "wallets".into();
        assert!(auth.verify(&mint_hs256(SECRET, &claims).unwrap()).is_ok());
    }
}
