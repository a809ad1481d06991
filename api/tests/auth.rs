//! Bearer tokens: HS256 and RS256 verify, and everything else is refused: forged, for
//! another issuer or audience, not yet valid, too long-lived, without `iat`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use paystream_api::auth::{self, Authenticator, Claims, TokenError, DEFAULT_AUDIENCE, LIFETIME_MAX_S};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const PRIVATE: &[u8] = include_bytes!("fixtures/rs256-test-private.pem");
const PUBLIC: &[u8] = include_bytes!("fixtures/rs256-test-public.pem");

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(user: Uuid, ttl_s: i64) -> Claims {
    let now = now_s() as i64;
    let exp = now + ttl_s;
    let iat = now.min(exp - 60);
    Claims::issued(user, "", iat as u64, (exp - iat) as u64)
}

/// Valid claims for `user` as JSON, with `change` applied (a `null` removes a claim).
fn claims_with(user: Uuid, change: Value) -> Value {
    let mut claims = serde_json::to_value(Claims::user(user, Duration::from_secs(600))).unwrap();
    for (name, value) in change.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

#[test]
fn rs256_tokens_verify_with_the_public_key() {
    let verifier = Authenticator::rs256(PUBLIC).expect("public key parses");
    let user = Uuid::new_v4();
    let key = EncodingKey::from_rsa_pem(PRIVATE).unwrap();
    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(user, 600), &key).unwrap();
    assert_eq!(verifier.verify(&token).unwrap().user_id, user);

    let expired = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(user, -3600), &key).unwrap();
    assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
    // An HS256 token must not pass an RS256 verifier (algorithm confusion).
    let hs = jsonwebtoken::encode(&Header::default(), &claims(user, 600), &EncodingKey::from_secret(PUBLIC))
        .unwrap();
    assert_eq!(verifier.verify(&hs), Err(TokenError::Invalid), "HS256 signed with the public key as secret");
}

#[test]
fn hs256_tokens_need_the_secret_and_a_user_id_subject() {
    let verifier = Authenticator::hs256(b"the-secret-of-at-least-thirty-two-bytes");
    let user = Uuid::new_v4();
    let good = b"the-secret-of-at-least-thirty-two-bytes";
    let token = auth::mint_hs256(good, &claims(user, 600)).unwrap();
    assert_eq!(verifier.verify(&token).unwrap().user_id, user);
    let other = b"another-secret-of-thirty-two-bytes!!";
    assert_eq!(
        verifier.verify(&auth::mint_hs256(other, &claims(user, 600)).unwrap()),
        Err(TokenError::Invalid)
    );
    let not_a_user = Claims { sub: "admin".into(), ..claims(user, 600) };
    assert_eq!(
        verifier.verify(&auth::mint_hs256(good, &not_a_user).unwrap()),
        Err(TokenError::SubjectNotAUser)
    );
    assert_eq!(verifier.verify("not.a.token"), Err(TokenError::Invalid));
}

#[test]
fn an_audience_array_naming_us_is_accepted() {
    let verifier = Authenticator::hs256(SECRET);
    let user = Uuid::new_v4();
    let token = hs256(&claims_with(user, json!({"aud": ["billing", DEFAULT_AUDIENCE]})));
    assert_eq!(verifier.verify(&token).unwrap().user_id, user);
    let token = hs256(&claims_with(user, json!({"aud": ["billing"]})));
    assert_eq!(verifier.verify(&token), Err(TokenError::WrongAudience));
}

/// Every way a correctly signed token can still be wrong is a 401 problem over HTTP, and the
/// same token with the claim fixed is a 200 (so each case fails for its own reason).
#[tokio::test(flavor = "multi_thread")]
async fn signed_tokens_with_a_wrong_claim_are_401_problems() {
    let api = TestApi::start().await;
    let user = Uuid::new_v4();
    let now = now_s();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("wrong issuer", json!({"iss": "someone-else"}), "(iss)"),
        ("no issuer", json!({"iss": null}), "required claim"),
        ("wrong audience", json!({"aud": "another-api"}), "(aud)"),
        ("no audience", json!({"aud": null}), "required claim"),
        ("nbf in the future", json!({"nbf": now + 600, "exp": now + 1200}), "(nbf)"),
        (
            "lifetime over the bound",
            json!({"iat": now - 60, "nbf": now - 60, "exp": now - 60 + LIFETIME_MAX_S + 1}),
            "longer than 24 h",
        ),
        ("no iat", json!({"iat": null}), "required claim"),
        ("iat in the future", json!({"iat": now + 3600, "exp": now + 4000}), "(iat)"),
        ("expired", json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}), "expired"),
    ];
    for (what, change, detail) in cases {
        let response = api
            .http
            .get(format!("{}/api/v1/accounts", api.base_url))
            .bearer_auth(hs256(&claims_with(user, change)))
            .send()
            .await
            .unwrap();
        let (status, problem) = read(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {problem}");
        assert_eq!(problem["type"], json!("/problems/unauthorized"), "{what}");
        assert!(problem["detail"].as_str().unwrap().contains(detail), "{what}: {problem}");
    }
    let (status, body) = api.call(Method::GET, "/api/v1/accounts", Some(user), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!([])), "the unchanged token is fine");
}

/// `paystream_stack::testkit::bearer_token`, which tests of other crates (the whole flow)
/// call the API with, mints what this API accepts: a user, or an operator.
#[test]
fn the_testkit_tokens_are_what_the_api_accepts() {
    use paystream_stack::testkit;
    assert_eq!(
        (testkit::TOKEN_ISSUER, testkit::TOKEN_AUDIENCE, testkit::OPERATOR_SCOPE),
        (auth::DEFAULT_ISSUER, DEFAULT_AUDIENCE, auth::OPERATOR_SCOPE)
    );
    assert!(testkit::TOKEN_LIFETIME.as_secs() <= LIFETIME_MAX_S);
    let verifier = Authenticator::hs256(SECRET);
    let user = Uuid::new_v4();
    let principal = verifier.verify(&testkit::bearer_token_with(SECRET, user, false)).unwrap();
    assert_eq!((principal.user_id, principal.operator), (user, false));
    let principal = verifier.verify(&testkit::bearer_token_with(SECRET, user, true)).unwrap();
    assert_eq!((principal.user_id, principal.operator), (user, true));
}
