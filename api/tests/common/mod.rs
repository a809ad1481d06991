//! A real API server on 127.0.0.1:0 against the real wallet database and registry, and a
//! client that speaks to it with minted bearer tokens.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use paystream_api::auth::{self, Authenticator, Claims};
use paystream_api::metrics::ApiMetrics;
use paystream_api::{server, AppState};
use paystream_schemas::registry::RegistryClient;
use paystream_schemas::EventCodec;
use paystream_stack::testkit::{wallet_db, STACK_TIMEOUT};
use paystream_stack::{wait, StackSettings};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

pub const SECRET: &[u8] = b"test-secret-of-at-least-thirty-two-bytes!";
pub const CALLBACK_SECRET: &[u8] = b"test-provider-webhook-secret";

/// A running API; stops when dropped.
pub struct TestApi {
    pub base_url: String,
    pub http: reqwest::Client,
    pub db: PgPool,
    pub ledger: PgPool,
    /// The read database the query endpoints read.
    pub query: PgPool,
    pub settings: StackSettings,
    _stop: oneshot::Sender<()>,
}

impl TestApi {
    pub async fn start() -> Self {
        let settings = StackSettings::from_env();
        let db = wallet_db(&settings).await;
        let registry = RegistryClient::new(&settings.schema_registry_url).unwrap();
        let what = format!("Schema Registry at {}", settings.schema_registry_url);
        if let Err(not_ready) =
            wait::until_ready(what, STACK_TIMEOUT, || registry.global_compatibility()).await
        {
            panic!("{not_ready}");
        }
        let ledger = paystream_stack::postgres::connect(&settings.ledger_db_url, STACK_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        paystream_stack::postgres::migrate_ledger(&ledger).await.expect("ledger migrations");
        let query = paystream_stack::postgres::connect(&settings.query_db_url, STACK_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        paystream_stack::postgres::migrate_query(&query).await.expect("query migrations");
        let state = AppState {
            db: db.clone(),
            ledger: ledger.clone(),
            query: query.clone(),
            callbacks: Arc::new(paystream_api::signature::Verifier::new(vec![CALLBACK_SECRET.to_vec()])),
            codec: Arc::new(EventCodec::new(&settings.schema_registry_url).unwrap()),
            auth: Arc::new(Authenticator::hs256(SECRET)),
            metrics: Arc::new(ApiMetrics::new()),
            topics: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { base_url, http, db, ledger, query, settings, _stop: stop }
    }

    /// A request as `user`, with a JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        user: Option<Uuid>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base_url));
        if let Some(user) = user {
            request = request.bearer_auth(token(user, 600));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.expect("request")).await
    }

    /// A new user with a RUB wallet holding `balance` (as a decimal string).
    pub async fn user_with_wallet(&self, balance: &str) -> (Uuid, Uuid) {
        let user = Uuid::new_v4();
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/accounts",
                Some(user),
                Some(json!({"name": "Иван Петров", "phone": "+79990001122", "currency": "RUB"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let wallet: Uuid = body["walletId"].as_str().unwrap().parse().unwrap();
        if balance != "0" {
            let (status, body) = self.deposit(wallet, &Uuid::new_v4().to_string(), balance).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        (user, wallet)
    }

    /// Deposits `amount` (a JSON number's text) into `wallet` with an operator's token, as
    /// an operator does; the answer as it came.
    pub async fn deposit(&self, wallet: Uuid, idempotency_key: &str, amount: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/accounts/{wallet}/deposits", self.base_url))
            .bearer_auth(operator_token())
            .header("Idempotency-Key", idempotency_key)
            .header("content-type", "application/json")
            .body(format!(r#"{{"amount": {amount}}}"#))
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// (available, reserved, payment rows) of a wallet, straight from the database.
    pub async fn wallet_state(&self, wallet: Uuid) -> (String, String, i64) {
        let (available, reserved): (rust_decimal::Decimal, rust_decimal::Decimal) =
            sqlx::query_as("SELECT available, reserved FROM wallets WHERE wallet_id = $1")
                .bind(wallet)
                .fetch_one(&self.db)
                .await
                .unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_transactions WHERE wallet_id = $1")
            .bind(wallet)
            .fetch_one(&self.db)
            .await
            .unwrap();
        let money = |mut d: rust_decimal::Decimal| {
            d.rescale(2);
            d.to_string()
        };
        (money(available), money(reserved), rows)
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "error without a problem body: {body}"
        );
        assert_eq!(body["status"], json!(status.as_u16()), "{body}");
    }
    (status, body)
}

/// A bearer token for `user`, valid for `ttl_s` seconds (negative: already expired).
pub fn token(user: Uuid, ttl_s: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let exp = now + ttl_s;
    // Issued a minute before it expires if it has already; otherwise now.
    let iat = now.min(exp - 60);
    auth::mint_hs256(SECRET, &Claims::issued(user, "", iat as u64, (exp - iat) as u64)).unwrap()
}

/// A token of a new operator (scope "operator"), valid for 10 minutes: what deposits need.
pub fn operator_token() -> String {
    auth::mint_hs256(SECRET, &Claims::operator(Uuid::new_v4(), Duration::from_secs(600))).unwrap()
}

/// A valid payment body.
pub fn payment(payment_id: Uuid, wallet: Uuid, amount: &str) -> Value {
    let body = format!(
        r#"{{"paymentId":"{payment_id}","wallet":"{wallet}","amount":{amount},"kind":"mobile",
            "description":"Оплата связи","timestamp":"20261128-04:11:13:123456"}}"#
    );
    serde_json::from_str(&body).unwrap()
}

/// A consumer of `topic` positioned at the current end of every partition, so it sees only
/// what the test causes from now on.
pub fn tail(bootstrap: &str, topic: &str) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let group = format!("it-tail-{}", Uuid::new_v4());
    let consumer: rdkafka::consumer::BaseConsumer =
        paystream_stack::kafka::read_committed_consumer(bootstrap, &group).create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10)).unwrap();
        assignment.add_partition_offset(topic, partition.id(), rdkafka::Offset::Offset(high)).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

/// A consumed record's value and headers.
pub type Seen = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// The records with key `key` that `consumer` receives within 60 s, collecting for
/// `window` after the first one arrives (to catch duplicates).
pub fn records_with_key(
    consumer: &rdkafka::consumer::BaseConsumer,
    key: &str,
    window: Duration,
) -> Vec<Seen> {
    use rdkafka::message::{Headers, Message};
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut found: Vec<Seen> = Vec::new();
    let mut first_at: Option<std::time::Instant> = None;
    loop {
        let now = std::time::Instant::now();
        if first_at.is_some_and(|at| now - at >= window) {
            return found;
        }
        assert!(now < deadline, "no record keyed {key} within 60 s (are the connectors running? dev/status)");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            if message.key() == Some(key.as_bytes()) {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect()
                    })
                    .unwrap_or_default();
                found.push((message.payload().unwrap_or_default().to_vec(), headers));
                first_at.get_or_insert(now);
            }
        }
    }
}

/// The test venv's Python (`dev/install` creates it from dev/requirements-test.txt), or
/// `PAYSTREAM_PYTHON`: found the way `schemas/tests/python_interop.rs` finds it.
pub fn test_python() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("PAYSTREAM_PYTHON") {
        return path.into();
    }
    let cache = std::env::var("PAYSTREAM_CACHE").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/paystream")
    });
    let python = cache.join("venv/bin/python");
    assert!(python.exists(), "{} is missing: run dev/install (it creates the test venv)", python.display());
    python
}
