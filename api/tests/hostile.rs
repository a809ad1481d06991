//! Hostile input over HTTP, against the real wallet and ledger databases: one table of requests
//! a client or an attacker may send to any endpoint. Each is answered with its documented 4xx
//! as `application/problem+json` (RFC 9457: `type`, `title`, `status`, `detail`), without
//! secrets or internal error text in the body, and writes nothing: the balances, the payment
//! rows (the outbox row is written in the same transaction as a payment row, or not at all),
//! the deposits, wallets, users and callback rows are compared before and after every case.
//!
//! schemathesis (`schemathesis.rs`) explores the same surface at random; this table pins the
//! cases by name.

mod common;

use chrono::Utc;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use paystream_api::auth::Claims;
use paystream_api::signature;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const RS256_PRIVATE: &[u8] = include_bytes!("fixtures/rs256-test-private.pem");
/// `{"alg":"none","typ":"JWT"}`, base64url: the header of an unsigned token.
const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
/// Text that must never reach a client: the secrets, and the vocabulary of internal errors.
const LEAKS: &[&str] = &[
    "sqlx",
    "SQLSTATE",
    "postgres",
    "violates",
    "constraint",
    "numeric field overflow",
    "panicked",
    "stack backtrace",
    "registry",
];

/// One hostile request and the answer it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: StatusCode,
    problem: &'static str,
    /// The `Allow` header a 405 must carry.
    allow: Option<&'static str>,
}

impl Case {
    fn new(what: &'static str, method: Method, path: impl Into<String>) -> Self {
        Self {
            what,
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
            status: StatusCode::OK,
            problem: "",
            allow: None,
        }
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// A body of `content_type` (none if empty).
    fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        if !content_type.is_empty() {
            self = self.header("content-type", content_type);
        }
        self.body = Some(body.into());
        self
    }

    fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.body("application/json", body)
    }

    fn expect(mut self, status: StatusCode, problem: &'static str) -> Self {
        self.status = status;
        self.problem = problem;
        self
    }

    fn allow(mut self, allow: &'static str) -> Self {
        self.allow = Some(allow);
        self
    }
}

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Written {
    wallets: Vec<(String, String, i64)>,
    deposits: i64,
    wallets_of_users: i64,
    users: i64,
    callbacks: i64,
    outbox_rows: i64,
}

async fn written(api: &TestApi, wallets: &[Uuid], users: &[Uuid], payments: &[Uuid]) -> Written {
    let mut balances = Vec::new();
    for wallet in wallets {
        balances.push(api.wallet_state(*wallet).await);
    }
    let count = |pool: &PgPool, sql: &'static str, ids: Vec<Uuid>| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).bind(ids).fetch_one(&pool).await.unwrap() }
    };
    let payment_keys: Vec<String> = payments.iter().map(Uuid::to_string).collect();
    Written {
        wallets: balances,
        deposits: count(&api.db, "SELECT count(*) FROM deposits WHERE wallet_id = ANY($1)", wallets.to_vec())
            .await,
        wallets_of_users: count(
            &api.db,
            "SELECT count(*) FROM wallets WHERE user_id = ANY($1)",
            users.to_vec(),
        )
        .await,
        users: count(&api.db, "SELECT count(*) FROM users WHERE user_id = ANY($1)", users.to_vec()).await,
        callbacks: count(
            &api.ledger,
            "SELECT count(*) FROM provider_callbacks WHERE payment_id = ANY($1)",
            payments.to_vec(),
        )
        .await,
        outbox_rows: sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM wallet_outbox WHERE aggregateid = ANY($1))",
        )
        .bind(&payment_keys)
        .fetch_one(&api.db)
        .await
        .unwrap(),
    }
}

/// A token for `user` with a JSON payload of our choosing, signed by `key` with `algorithm`.
fn signed_token(algorithm: Algorithm, key: &EncodingKey, user: Uuid) -> String {
    let claims = Claims::user(user, std::time::Duration::from_secs(600));
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap()
}

/// The valid token of `user` with its header replaced by `alg: none` and no signature.
fn alg_none_token(user: Uuid) -> String {
    let valid = token(user, 600);
    let claims = valid.split('.').nth(1).unwrap();
    format!("{ALG_NONE_HEADER}.{claims}.")
}

/// A signature timestamp skew well outside the ±`TOLERANCE_S` window: the table is signed before
/// its cases run one after another, so a skew of one second past the window could drift back
/// into it by the time its request is sent (seen in CI: "signed in the future" accepted).
const OUTSIDE_WINDOW_S: i64 = signature::TOLERANCE_S + 60;

fn signed(body: &[u8], skew_s: i64) -> String {
    signature::sign(CALLBACK_SECRET, Utc::now().timestamp() + skew_s, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_their_problem_and_change_nothing() {
    let api = TestApi::start().await;
    let (user, wallet) = api.user_with_wallet("100.00").await;
    let (stranger, strangers_wallet) = api.user_with_wallet("5.00").await;
    let newcomer = Uuid::new_v4(); // has no wallet; account creations as them must create nothing
    let payment_id = Uuid::new_v4();
    let callback_payment = Uuid::new_v4();
    let bearer = token(user, 600);
    let newcomer_bearer = token(newcomer, 600);
    let operator = operator_token();

    let payment = |change: Value| {
        let mut body = common::payment(payment_id, wallet, "1.00");
        for (name, value) in change.as_object().unwrap() {
            if value.is_null() {
                body.as_object_mut().unwrap().remove(name);
            } else {
                body[name] = value.clone();
            }
        }
        body.to_string()
    };
    // The body with `amount` written as this exact JSON text.
    let with_amount =
        |amount: &str| payment(json!({})).replace(r#""amount":1.0"#, &format!(r#""amount":{amount}"#));
    assert!(with_amount("2").contains(r#""amount":2"#), "the template has the amount to replace");
    let pay = |what| Case::new(what, Method::POST, "/api/v1/payment").bearer(&bearer);
    let account = |what| Case::new(what, Method::POST, "/api/v1/accounts").bearer(&newcomer_bearer);
    let deposits = format!("/api/v1/accounts/{wallet}/deposits");
    let deposit = |what| {
        Case::new(what, Method::POST, deposits.clone())
            .bearer(&operator)
            .header("idempotency-key", Uuid::new_v4().to_string())
    };
    let callback = |status: &str, extra: &str| {
        format!(
            r#"{{"paymentId":"{callback_payment}","status":"{status}","description":"ok","timestamp":"20261128-05:00:00:000001"{extra}}}"#
        )
    };
    let good_callback = callback("SUCCEEDED", "");
    let signed_callback = |what, body: String| {
        let header = signed(body.as_bytes(), 0);
        Case::new(what, Method::POST, "/api/v1/callback").header("paystream-signature", header).json(body)
    };
    let oversized = "x".repeat(paystream_api::server::BODY_LIMIT_BYTES + 1);
    let u422 = StatusCode::UNPROCESSABLE_ENTITY;

    let cases = vec![
        // Paths and methods nobody serves.
        Case::new("unknown path", Method::GET, "/nope").expect(StatusCode::NOT_FOUND, "not-found"),
        Case::new("a path not built yet", Method::GET, "/api/v1/refunds")
            .bearer(&bearer)
            .expect(StatusCode::NOT_FOUND, "not-found"),
        Case::new("a trailing slash", Method::GET, "/api/v1/accounts/")
            .bearer(&bearer)
            .expect(StatusCode::NOT_FOUND, "not-found"),
        Case::new("DELETE a payment", Method::DELETE, "/api/v1/payment")
            .bearer(&bearer)
            .expect(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
            .allow("POST"),
        Case::new("PUT accounts", Method::PUT, "/api/v1/accounts")
            .bearer(&bearer)
            .json("{}")
            .expect(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
            .allow("POST,GET,HEAD"),
        Case::new("GET the callback", Method::GET, "/api/v1/callback")
            .expect(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
            .allow("POST"),
        Case::new("POST health", Method::POST, "/health")
            .expect(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
            .allow("GET,HEAD"),
        // Bodies that are not JSON, or not the payment's JSON.
        pay("malformed JSON").json(r#"{"paymentId": "#).expect(StatusCode::BAD_REQUEST, "malformed-json"),
        pay("truncated JSON")
            .json(payment(json!({}))[..60].to_owned())
            .expect(StatusCode::BAD_REQUEST, "malformed-json"),
        pay("empty body").json("").expect(StatusCode::BAD_REQUEST, "malformed-json"),
        pay("not UTF-8")
            .json(b"{\"kind\": \"\xff\xfe\"}".to_vec())
            .expect(StatusCode::BAD_REQUEST, "malformed-json"),
        pay("a lone surrogate")
            .json(payment(json!({})).replace("Оплата связи", r"\ud800"))
            .expect(StatusCode::BAD_REQUEST, "malformed-json"),
        pay("an array").json("[]").expect(u422, "validation"),
        pay("null").json("null").expect(u422, "validation"),
        pay("amount is a boolean").json(payment(json!({"amount": true}))).expect(u422, "validation"),
        pay("kind is a number").json(payment(json!({"kind": 5}))).expect(u422, "validation"),
        pay("paymentId is a number").json(payment(json!({"paymentId": 123}))).expect(u422, "validation"),
        pay("description is null")
            .json(payment(json!({"description": Value::Null})))
            .expect(u422, "validation"),
        pay("missing field").json(payment(json!({"kind": Value::Null}))).expect(u422, "validation"),
        pay("unknown field").json(payment(json!({"tip": 1}))).expect(u422, "validation"),
        pay("a field twice")
            .json(payment(json!({})).replacen('{', r#"{"kind":"other","#, 1))
            .expect(u422, "validation"),
        pay("unknown kind").json(payment(json!({"kind": "casino"}))).expect(u422, "validation"),
        pay("kind in capitals").json(payment(json!({"kind": "MOBILE"}))).expect(u422, "validation"),
        // Amounts.
        pay("zero amount").json(with_amount("0")).expect(u422, "validation"),
        pay("negative amount").json(with_amount("-1.00")).expect(u422, "validation"),
        pay("three decimals").json(with_amount("1.001")).expect(u422, "validation"),
        pay("exponent").json(with_amount("1e2")).expect(u422, "validation"),
        pay("amount as a string").json(with_amount(r#""1.00""#)).expect(u422, "validation"),
        pay("above the maximum").json(with_amount("1000000000.00")).expect(u422, "validation"),
        pay("5000 digits").json(with_amount(&"9".repeat(5000))).expect(u422, "validation"),
        pay("NaN").json(with_amount("NaN")).expect(StatusCode::BAD_REQUEST, "malformed-json"),
        pay("a bare decimal point").json(with_amount("1.")).expect(StatusCode::BAD_REQUEST, "malformed-json"),
        // Identifiers, text, timestamps.
        pay("paymentId not a UUID")
            .json(payment(json!({"paymentId": "not-a-uuid"})))
            .expect(u422, "validation"),
        pay("wallet empty").json(payment(json!({"wallet": ""}))).expect(u422, "validation"),
        pay("description too long")
            .json(payment(json!({"description": "x".repeat(501)})))
            .expect(u422, "validation"),
        pay("NUL in the description")
            .json(payment(json!({"description": "a\u{0}b"})))
            .expect(u422, "validation"),
        pay("ISO timestamp")
            .json(payment(json!({"timestamp": "2026-11-28T04:11:13Z"})))
            .expect(u422, "validation"),
        pay("30 February")
            .json(payment(json!({"timestamp": "20260230-04:11:13:123456"})))
            .expect(u422, "validation"),
        pay("a leap second")
            .json(payment(json!({"timestamp": "20261231-23:59:60:000000"})))
            .expect(u422, "validation"),
        // Size and content type.
        pay("body over the limit")
            .json(payment(json!({"description": oversized})))
            .expect(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
        pay("text/plain")
            .body("text/plain", payment(json!({})))
            .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
        pay("no content type")
            .body("", payment(json!({})))
            .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
        pay("form encoded")
            .body("application/x-www-form-urlencoded", "amount=1")
            .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
        // Tokens.
        Case::new("no token", Method::POST, "/api/v1/payment")
            .json(payment(json!({})))
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("basic auth", Method::POST, "/api/v1/payment")
            .header("authorization", "Basic dXNlcjpwYXNz")
            .json(payment(json!({})))
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("empty bearer", Method::POST, "/api/v1/payment")
            .header("authorization", "Bearer ")
            .json(payment(json!({})))
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("forged signature", Method::POST, "/api/v1/payment")
            .bearer(&format!("{bearer}x"))
            .json(payment(json!({})))
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("expired token", Method::POST, "/api/v1/payment")
            .bearer(&token(user, -3600))
            .json(payment(json!({})))
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("alg none", Method::POST, "/api/v1/payment")
            .bearer(&alg_none_token(user))
            .json(payment(json!({})))
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("HS256 under another secret", Method::POST, "/api/v1/payment")
            .bearer(&signed_token(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-of-at-least-thirty-two-bytes"),
                user,
            ))
            .json(payment(json!({})))
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("RS256 where HS256 is configured", Method::POST, "/api/v1/payment")
            .bearer(&signed_token(Algorithm::RS256, &EncodingKey::from_rsa_pem(RS256_PRIVATE).unwrap(), user))
            .json(payment(json!({})))
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        // Wallets that are not the caller's to use.
        Case::new("someone else's wallet", Method::POST, "/api/v1/payment")
            .bearer(&token(stranger, 600))
            .json(payment(json!({})))
            .expect(StatusCode::FORBIDDEN, "forbidden"),
        pay("unknown wallet")
            .json(payment(json!({"wallet": Uuid::new_v4()})))
            .expect(StatusCode::NOT_FOUND, "not-found"),
        pay("insufficient funds").json(with_amount("100.01")).expect(u422, "insufficient-funds"),
        Case::new("someone else's balance", Method::GET, format!("/api/v1/accounts/{strangers_wallet}"))
            .bearer(&bearer)
            .expect(StatusCode::FORBIDDEN, "forbidden"),
        Case::new("a wallet id that is not a UUID", Method::GET, "/api/v1/accounts/not-a-uuid")
            .bearer(&bearer)
            .expect(u422, "validation"),
        Case::new("a path with a NUL", Method::GET, "/api/v1/accounts/%00")
            .bearer(&bearer)
            .expect(u422, "validation"),
        Case::new("an unknown wallet's balance", Method::GET, format!("/api/v1/accounts/{}", Uuid::new_v4()))
            .bearer(&bearer)
            .expect(StatusCode::NOT_FOUND, "not-found"),
        // The owner's cancel (issue 16): someone else's or an unknown payment is the same 404.
        Case::new(
            "a cancel without a token",
            Method::POST,
            format!("/api/v1/payments/{}/cancel", Uuid::new_v4()),
        )
        .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new(
            "a cancel of a payment id that is not a UUID",
            Method::POST,
            "/api/v1/payments/not-a-uuid/cancel",
        )
        .bearer(&bearer)
        .expect(u422, "validation"),
        Case::new(
            "a cancel of an unknown payment",
            Method::POST,
            format!("/api/v1/payments/{}/cancel", Uuid::new_v4()),
        )
        .bearer(&bearer)
        .expect(StatusCode::NOT_FOUND, "not-found"),
        Case::new(
            "reading an unknown payment's cancel",
            Method::GET,
            format!("/api/v1/payments/{}/cancel", Uuid::new_v4()),
        )
        .bearer(&bearer)
        .expect(StatusCode::NOT_FOUND, "not-found"),
        Case::new(
            "a cancel with a method it does not have",
            Method::DELETE,
            format!("/api/v1/payments/{}/cancel", Uuid::new_v4()),
        )
        .bearer(&bearer)
        .expect(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
        Case::new("balances without a token", Method::GET, "/api/v1/accounts")
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        // Accounts.
        account("empty name").json(r#"{"name":"","currency":"RUB"}"#).expect(u422, "validation"),
        account("blank name").json(r#"{"name":"   ","currency":"RUB"}"#).expect(u422, "validation"),
        account("name too long")
            .json(json!({"name": "я".repeat(201), "currency": "RUB"}).to_string())
            .expect(u422, "validation"),
        account("NUL in the name").json(r#"{"name":"a\u0000","currency":"RUB"}"#).expect(u422, "validation"),
        account("NUL in the phone")
            .json(r#"{"name":"a","phone":"\u0000","currency":"RUB"}"#)
            .expect(u422, "validation"),
        account("phone too long")
            .json(json!({"name": "a", "phone": "1".repeat(33), "currency": "RUB"}).to_string())
            .expect(u422, "validation"),
        account("lower-case currency").json(r#"{"name":"a","currency":"rub"}"#).expect(u422, "validation"),
        account("four-letter currency").json(r#"{"name":"a","currency":"RUBL"}"#).expect(u422, "validation"),
        account("name is a number").json(r#"{"name":5,"currency":"RUB"}"#).expect(u422, "validation"),
        account("unknown account field")
            .json(r#"{"name":"a","currency":"RUB","admin":true}"#)
            .expect(u422, "validation"),
        account("account as text")
            .body("text/plain", "name=a")
            .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
        Case::new("account without a token", Method::POST, "/api/v1/accounts")
            .json(r#"{"name":"a","currency":"RUB"}"#)
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        // Deposits.
        Case::new("deposit with a user's token", Method::POST, deposits.clone())
            .bearer(&bearer)
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(r#"{"amount": 1.00}"#)
            .expect(StatusCode::FORBIDDEN, "insufficient-scope"),
        Case::new("deposit without a key", Method::POST, deposits.clone())
            .bearer(&operator)
            .json(r#"{"amount": 1.00}"#)
            .expect(StatusCode::BAD_REQUEST, "missing-header"),
        Case::new("deposit with a 129-byte key", Method::POST, deposits.clone())
            .bearer(&operator)
            .header("idempotency-key", "k".repeat(129))
            .json(r#"{"amount": 1.00}"#)
            .expect(StatusCode::BAD_REQUEST, "missing-header"),
        deposit("deposit of zero").json(r#"{"amount": 0}"#).expect(u422, "validation"),
        deposit("negative deposit").json(r#"{"amount": -5.00}"#).expect(u422, "validation"),
        deposit("deposit with three decimals").json(r#"{"amount": 0.001}"#).expect(u422, "validation"),
        deposit("deposit with an exponent").json(r#"{"amount": 1e2}"#).expect(u422, "validation"),
        deposit("deposit as a string").json(r#"{"amount": "1.00"}"#).expect(u422, "validation"),
        deposit("deposit above the maximum").json(r#"{"amount": 1000000000.00}"#).expect(u422, "validation"),
        deposit("deposit with an unknown field")
            .json(r#"{"amount": 1, "to": "me"}"#)
            .expect(u422, "validation"),
        deposit("malformed deposit").json(r#"{"amount": "#).expect(StatusCode::BAD_REQUEST, "malformed-json"),
        deposit("deposit over the limit")
            .json(format!(r#"{{"amount": 1, "x": "{oversized}"}}"#))
            .expect(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
        deposit("deposit as text")
            .body("text/plain", "1.00")
            .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
        Case::new(
            "deposit into an unknown wallet",
            Method::POST,
            format!("/api/v1/accounts/{}/deposits", Uuid::new_v4()),
        )
        .bearer(&operator)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(r#"{"amount": 1.00}"#)
        .expect(StatusCode::NOT_FOUND, "not-found"),
        Case::new("deposit into a wallet id that is not a UUID", Method::POST, "/api/v1/accounts/1/deposits")
            .bearer(&operator)
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(r#"{"amount": 1.00}"#)
            .expect(u422, "validation"),
        // Callbacks that are not the provider's.
        Case::new("unsigned callback", Method::POST, "/api/v1/callback")
            .json(good_callback.clone())
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("callback signed with another secret", Method::POST, "/api/v1/callback")
            .header(
                "paystream-signature",
                signature::sign(b"not-the-secret", Utc::now().timestamp(), good_callback.as_bytes()),
            )
            .json(good_callback.clone())
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("another body under a captured signature", Method::POST, "/api/v1/callback")
            .header("paystream-signature", signed(callback("FAILED", "").as_bytes(), 0))
            .json(good_callback.clone())
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("a captured callback replayed 10 minutes later", Method::POST, "/api/v1/callback")
            .header("paystream-signature", signed(good_callback.as_bytes(), -600))
            .json(good_callback.clone())
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("stale by a second", Method::POST, "/api/v1/callback")
            .header("paystream-signature", signed(good_callback.as_bytes(), -OUTSIDE_WINDOW_S))
            .json(good_callback.clone())
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("signed in the future", Method::POST, "/api/v1/callback")
            .header("paystream-signature", signed(good_callback.as_bytes(), OUTSIDE_WINDOW_S))
            .json(good_callback.clone())
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("malformed signature header", Method::POST, "/api/v1/callback")
            .header("paystream-signature", "t=now,v1=zz")
            .json(good_callback.clone())
            .expect(StatusCode::UNAUTHORIZED, "unauthorized"),
        Case::new("unsigned callback over the limit", Method::POST, "/api/v1/callback")
            .json(oversized.clone())
            .expect(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
        // Signed, but not a callback.
        signed_callback("signed malformed JSON", r#"{"paymentId": "#.into())
            .expect(StatusCode::BAD_REQUEST, "malformed-callback"),
        signed_callback("signed unknown status", callback("MAYBE", ""))
            .expect(StatusCode::BAD_REQUEST, "unknown-status"),
        signed_callback(
            "signed bad timestamp",
            good_callback.replace("20261128-05:00:00:000001", "yesterday"),
        )
        .expect(StatusCode::BAD_REQUEST, "malformed-callback"),
        signed_callback("signed unknown field", callback("SUCCEEDED", r#","amount":1"#))
            .expect(StatusCode::BAD_REQUEST, "malformed-callback"),
        signed_callback(
            "signed paymentId not a UUID",
            good_callback.replace(&callback_payment.to_string(), "x"),
        )
        .expect(StatusCode::BAD_REQUEST, "malformed-callback"),
        signed_callback("signed NUL in the description", good_callback.replace(r#""ok""#, r#""o\u0000k""#))
            .expect(StatusCode::BAD_REQUEST, "malformed-callback"),
        signed_callback(
            "signed description too long",
            good_callback.replace(r#""ok""#, &format!(r#""{}""#, "x".repeat(1001))),
        )
        .expect(StatusCode::BAD_REQUEST, "malformed-callback"),
        signed_callback("signed empty eventId", callback("SUCCEEDED", r#","eventId":" ""#))
            .expect(StatusCode::BAD_REQUEST, "malformed-callback"),
        signed_callback(
            "signed eventId too long",
            callback("SUCCEEDED", &format!(r#","eventId":"{}""#, "e".repeat(201))),
        )
        .expect(StatusCode::BAD_REQUEST, "malformed-callback"),
        signed_callback(
            "signed callback over the limit",
            callback("SUCCEEDED", &format!(r#","eventId":"{oversized}""#)),
        )
        .expect(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
    ];

    let wallets = [wallet, strangers_wallet];
    let users = [user, stranger, newcomer];
    let payments = [payment_id, callback_payment];
    let before = written(&api, &wallets, &users, &payments).await;
    assert_eq!(before.wallets[0], ("100.00".into(), "0.00".into(), 0), "the fixture");
    assert_eq!((before.users, before.wallets_of_users, before.callbacks), (2, 2, 0), "the fixture");
    let secrets =
        [String::from_utf8(SECRET.to_vec()).unwrap(), String::from_utf8(CALLBACK_SECRET.to_vec()).unwrap()];
    let count = cases.len();
    for case in cases {
        let what = case.what;
        let mut request = api.http.request(case.method.clone(), format!("{}{}", api.base_url, case.path));
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = case.body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status();
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let (content_type, allow) = (header("content-type"), header("allow"));
        let text = response.text().await.unwrap();
        assert_eq!(status, case.status, "{what}: {text}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{what}: {text}");
        let problem: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        assert_eq!(problem["type"], json!(format!("/problems/{}", case.problem)), "{what}: {text}");
        assert_eq!(problem["status"], json!(status.as_u16()), "{what}: {text}");
        assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()), "{what}: {text}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {text}");
        if let Some(expected) = case.allow {
            assert_eq!(allow.as_deref(), Some(expected), "{what}: Allow");
        }
        for secret in secrets.iter().map(String::as_str).chain(LEAKS.iter().copied()) {
            assert!(!text.to_lowercase().contains(&secret.to_lowercase()), "{what} leaks {secret:?}: {text}");
        }
        assert_eq!(written(&api, &wallets, &users, &payments).await, before, "{what} wrote something");
    }
    assert!(count > 90, "the table is complete ({count} cases)");
}

/// A wallet holds at most 999999999999.99 in all (`wallets_balance_max`): a deposit past it is a
/// 422 problem naming the amount, not a 500, and the deposit (its row and the money) rolls back.
/// Both ways past the cap: `available` alone overflowing numeric(14,2) (SQLSTATE 22003), and
/// available + reserved over the cap while each fits (23514 on the constraint).
#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_over_the_balance_cap_is_a_422_and_moves_nothing() {
    let api = TestApi::start().await;
    for (what, available, reserved, amount) in [
        ("available + reserved over the cap", "999999999000.00", "999.99", "0.01"),
        ("available alone over numeric(14,2)", "999999999999.99", "0.00", "1.00"),
        ("reserved holding most of it", "0.00", "999999999999.00", "1.00"),
    ] {
        let (_, wallet) = api.user_with_wallet("0").await;
        // The state a long life of deposits and pending payments would reach; set directly,
        // since reaching it through the API would take a thousand maximal deposits.
        sqlx::query(
            "UPDATE wallets SET available = $2::numeric, reserved = $3::numeric WHERE wallet_id = $1",
        )
        .bind(wallet)
        .bind(available)
        .bind(reserved)
        .execute(&api.db)
        .await
        .unwrap();
        let (status, problem) = api.deposit(wallet, &Uuid::new_v4().to_string(), amount).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {problem}");
        assert_eq!(
            (problem["type"].as_str(), problem["field"].as_str()),
            (Some("/problems/validation"), Some("amount")),
            "{what}: {problem}"
        );
        assert!(problem["detail"].as_str().unwrap().contains("999999999999.99"), "{what}: {problem}");
        assert!(!problem.to_string().contains("wallets_balance_max"), "{what}: {problem}");
        let (after_available, after_reserved, _) = api.wallet_state(wallet).await;
        assert_eq!((after_available.as_str(), after_reserved.as_str()), (available, reserved), "{what}");
        let deposits: i64 = sqlx::query_scalar("SELECT count(*) FROM deposits WHERE wallet_id = $1")
            .bind(wallet)
            .fetch_one(&api.db)
            .await
            .unwrap();
        assert_eq!(deposits, 0, "{what}: the deposit's row rolled back with it");
    }
    // Up to the cap exactly is fine.
    let (_, wallet) = api.user_with_wallet("0").await;
    sqlx::query("UPDATE wallets SET available = 999999999000.00, reserved = 999.98 WHERE wallet_id = $1")
        .bind(wallet)
        .execute(&api.db)
        .await
        .unwrap();
    let (status, balance) = api.deposit(wallet, &Uuid::new_v4().to_string(), "0.01").await;
    assert_eq!(status, StatusCode::OK, "{balance}");
    assert_eq!(api.wallet_state(wallet).await.0, "999999999000.01");
}
