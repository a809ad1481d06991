//! Bearer tokens: HS256 and RS256 verify, and everything else is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use paystream_api::auth::{Authenticator, Claims};
use uuid::Uuid;

const PRIVATE: &[u8] = include_bytes!("fixtures/rs256-test-private.pem");
const PUBLIC: &[u8] = include_bytes!("fixtures/rs256-test-public.pem");

fn claims(user: Uuid, ttl_s: i64) -> Claims {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    Claims { sub: user.to_string(), exp: (now + ttl_s) as u64 }
}

#[test]
fn rs256_tokens_verify_with_the_public_key() {
    let verifier = Authenticator::rs256(PUBLIC).expect("public key parses");
    let user = Uuid::new_v4();
    let key = EncodingKey::from_rsa_pem(PRIVATE).unwrap();
    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(user, 600), &key).unwrap();
    assert_eq!(verifier.verify(&token).unwrap(), user);

    let expired = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(user, -3600), &key).unwrap();
    assert!(verifier.verify(&expired).is_err(), "expired");
    // An HS256 token must not pass an RS256 verifier (algorithm confusion).
    let hs = jsonwebtoken::encode(&Header::default(), &claims(user, 600), &EncodingKey::from_secret(PUBLIC))
        .unwrap();
    assert!(verifier.verify(&hs).is_err(), "HS256 signed with the public key as secret");
}

#[test]
fn hs256_tokens_need_the_secret_and_a_user_id_subject() {
    let verifier = Authenticator::hs256(b"the-secret-of-at-least-thirty-two-bytes");
    let user = Uuid::new_v4();
    let good = EncodingKey::from_secret(b"the-secret-of-at-least-thirty-two-bytes");
    let token = jsonwebtoken::encode(&Header::default(), &claims(user, 600), &good).unwrap();
    assert_eq!(verifier.verify(&token).unwrap(), user);
    let other = EncodingKey::from_secret(b"another-secret-of-thirty-two-bytes!!");
    assert!(verifier
        .verify(&jsonwebtoken::encode(&Header::default(), &claims(user, 600), &other).unwrap())
        .is_err());
    let not_a_user = Claims { sub: "admin".into(), exp: claims(user, 600).exp };
    assert!(verifier.verify(&jsonwebtoken::encode(&Header::default(), &not_a_user, &good).unwrap()).is_err());
    assert!(verifier.verify("not.a.token").is_err());
}
