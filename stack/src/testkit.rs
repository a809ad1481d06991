//! Helpers for integration tests against the real stack, shared by every crate's tests:
//! unique names (tests run in any order, in parallel and twice in a row against one
//! long-lived stack), bounded readiness checks that panic with a clear message when a
//! dependency is missing, and bounded consumption. Production code does not use it.
//!
//! Its functions panic instead of returning errors: a failed set-up step is a failed test.
//!
//! [`bearer_token`] is the one way a test outside the API crate calls the API: a user's token,
//! or an operator's (deposits need one).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;

use crate::connect::ConnectClient;
use crate::postgres;

use crate::kafka::{self, TopicSpec};
use crate::StackSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

/// Budget for a dependency of the tests to answer.
pub const STACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A name no other test run has used: `<prefix>-<8 hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The stack's addresses, after checking that Kafka answers (panics with the reason and
/// "start the local stack with `dev/up`" otherwise).
pub async fn kafka_stack() -> StackSettings {
    let settings = StackSettings::from_env();
    if let Err(not_ready) = kafka::wait_until_ready(&settings.kafka_bootstrap, STACK_TIMEOUT).await {
        panic!("{not_ready}");
    }
    settings
}

/// Creates `name` with `partitions` partitions.
pub async fn create_topic(settings: &StackSettings, name: &str, partitions: i32) {
    kafka::ensure_topics(&settings.kafka_bootstrap, &[TopicSpec::new(name, partitions)])
        .await
        .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
}

/// Deletes topics a test created.
pub async fn delete_topics(settings: &StackSettings, names: &[&str]) {
    kafka::delete_topics(&settings.kafka_bootstrap, names)
        .await
        .unwrap_or_else(|e| panic!("deleting topics {names:?}: {e}"));
}

/// A consumed record, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Received {
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(self.value.as_deref().unwrap_or_default()).expect("utf-8 value")
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }
}

/// Polls `consumer` until `done(&received)` holds, then keeps polling for `settle` more
/// to catch duplicates that would arrive late. Panics when `timeout` passes first.
pub fn consume_until(
    consumer: &BaseConsumer,
    timeout: Duration,
    settle: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut settled_at: Option<Instant> = None;
    loop {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            let message = result.unwrap_or_else(|e| panic!("consuming: {e}"));
            received.push(Received {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect()
                    })
                    .unwrap_or_default(),
            });
        }
        match settled_at {
            None if done(&received) => settled_at = Some(Instant::now()),
            Some(at) if at.elapsed() >= settle => return received,
            _ => {}
        }
        if settled_at.is_none() && started.elapsed() >= timeout {
            panic!("gave up after {timeout:?}; received {} records: {received:#?}", received.len());
        }
    }
}

/// A plain consumer of `topic` from the beginning with the given isolation level.
pub fn consumer(settings: &StackSettings, topic: &str, isolation: &str) -> BaseConsumer {
    let mut config = kafka::read_committed_consumer(&settings.kafka_bootstrap, &unique("it-reader"));
    config.set("isolation.level", isolation);
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// How long a test waits for a connector to run, or its slot to be taken or released.
pub const CONNECTOR_TIMEOUT: Duration = Duration::from_secs(90);

/// The Connect worker, once it answers (panics naming it and `dev/up` otherwise).
///
/// Removes FAILED test connectors (`it-…`) that a test which panicked before its clean-up
/// left behind; running ones belong to tests in progress and are left alone.
pub async fn connect_stack(settings: &StackSettings) -> ConnectClient {
    let connect = ConnectClient::new(&settings.connect_url).expect("connect client");
    if let Err(not_ready) = connect.wait_until_ready(STACK_TIMEOUT).await {
        panic!("{not_ready}");
    }
    for name in connect.list().await.unwrap_or_default().into_iter().filter(|n| n.starts_with("it-")) {
        if connect.status(&name).await.is_ok_and(|status| status.failure().is_some()) {
            let _ = connect.delete(&name).await;
        }
    }
    connect
}

/// A pool on the wallet database, migrated.
pub async fn wallet_db(settings: &StackSettings) -> PgPool {
    let db =
        postgres::connect(&settings.wallet_db_url, STACK_TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"));
    postgres::migrate_wallet(&db).await.expect("wallet migrations");
    db
}

/// Waits until Debezium holds the replication slot: rows committed from then on are in
/// the stream the connector reads.
pub async fn wait_for_active_slot(db: &PgPool, slot: &str) {
    let started = Instant::now();
    loop {
        let active: Option<bool> =
            sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_optional(db)
                .await
                .expect("query pg_replication_slots");
        if active == Some(true) {
            return;
        }
        assert!(started.elapsed() < CONNECTOR_TIMEOUT, "slot {slot} not active after {CONNECTOR_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes what a test connector leaves behind: the connector, its slot (once Debezium
/// has let go of it), its publication and table.
pub async fn remove_test_connector(db: &PgPool, connect: &ConnectClient, name: &str, table: &str) {
    connect.delete(name).await.unwrap_or_else(|e| panic!("deleting connector {name}: {e}"));
    let started = Instant::now();
    loop {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
        )
        .bind(table)
        .execute(db)
        .await;
        let remaining: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1")
                .bind(table)
                .fetch_one(db)
                .await
                .unwrap_or_else(|e| panic!("counting replication slot {table}: {e}"));
        if dropped.is_ok() && remaining == 0 {
            break;
        }
        assert!(started.elapsed() < CONNECTOR_TIMEOUT, "slot {table} still held after deleting {name}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for ddl in [format!("DROP PUBLICATION IF EXISTS {table}"), format!("DROP TABLE IF EXISTS {table}")] {
        sqlx::query(&ddl).execute(db).await.unwrap_or_else(|e| panic!("{ddl}: {e}"));
    }
}

/// Where the HS256 secret of the API under test is read from (dev/lib.sh exports the local
/// stack's, and `paystream api` reads the same variable).
pub const JWT_SECRET_VARIABLE: &str = "PAYSTREAM_JWT_HS256_SECRET";
/// The issuer and audience `paystream api` expects by default (`paystream_api::auth`'s
/// DEFAULT_ISSUER and DEFAULT_AUDIENCE; the API's tests verify this module's tokens with the
/// API's own verifier, so the two cannot drift apart).
pub const TOKEN_ISSUER: &str = "paystream";
pub const TOKEN_AUDIENCE: &str = "paystream-api";
/// The scope that may deposit (`paystream_api::auth::OPERATOR_SCOPE`).
pub const OPERATOR_SCOPE: &str = "operator";
/// Lifetime of a test's token: longer than any test, within the API's 24 h bound.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(2 * 60 * 60);

/// A bearer token for `user`, signed with the secret in [`JWT_SECRET_VARIABLE`]: an
/// operator's (scope "operator", which deposits need) when `operator`, else a plain user's.
/// Panics if the variable is unset.
pub fn bearer_token(user: uuid::Uuid, operator: bool) -> String {
    let secret = std::env::var(JWT_SECRET_VARIABLE).unwrap_or_else(|_| {
        panic!("{JWT_SECRET_VARIABLE} is not set: run the tests through dev/test, or source dev/lib.sh first")
    });
    bearer_token_with(secret.as_bytes(), user, operator)
}

/// [`bearer_token`] signed with `secret` (HS256), with every claim the API checks: `iss`,
/// `aud`, `iat`, `nbf`, `exp` (after [`TOKEN_LIFETIME`]) and, for an operator, `scope`.
pub fn bearer_token_with(secret: &[u8], user: uuid::Uuid, operator: bool) -> String {
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs();
    let mut claims = serde_json::json!({
        "sub": user.to_string(),
        "iss": TOKEN_ISSUER,
        "aud": TOKEN_AUDIENCE,
        "iat": now_s,
        "nbf": now_s,
        "exp": now_s + TOKEN_LIFETIME.as_secs(),
    });
    if operator {
        claims["scope"] = serde_json::Value::from(OPERATOR_SCOPE);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    // Encoding a JSON object with HS256 cannot fail.
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
        .expect("an HS256 token encodes")
}

/// A read_committed consumer of `topic` positioned at the current end of every partition, so it
/// sees only what the test causes from now on.
pub fn tail(settings: &StackSettings, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer =
        kafka::read_committed_consumer(&settings.kafka_bootstrap, &unique("it-tail"))
            .create()
            .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), STACK_TIMEOUT)
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition.id(), STACK_TIMEOUT)
            .unwrap_or_else(|e| panic!("watermarks of {topic}: {e}"));
        assignment
            .add_partition_offset(topic, partition.id(), rdkafka::Offset::Offset(high))
            .expect("offset");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}
