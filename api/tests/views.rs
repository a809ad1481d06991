//! The read side on the real stack: PaymentView and PaymentTimelineEvent records on Kafka →
//! Debezium's JDBC sink (the definitions in `connect/query-*.json`) → the read database →
//! `GET /api/v1/payments…`; owners from the real CDC of `users`/`wallets` (`connect/wallet-cdc.json`
//! → `connect/query-cdc.json`).
//!
//! The view and timeline records go to test topics of their own (`it.payments.view`,
//! `it.payments.timeline`), read by copies of the production sink definitions that differ only in
//! their name, topics and connection (`it-query-views-<hash>`): production topics are never
//! written. Owners come through the production `query-cdc` connector, which every test run needs
//! anyway (the CDC topics hold every user ever made; a copy would reread them all).
//!
//! Every wait is a bounded poll naming what it waits for.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{read, token, TestApi};
use paystream_schemas::events::{PaymentTimelineEvent, PaymentView};
use paystream_schemas::{time, Amount, Event, EventCodec};
use paystream_stack::connect::{ConnectClient, ConnectorDefinition};
use paystream_stack::kafka::{self, TopicSpec};
use paystream_stack::testkit::{connect_stack, CONNECTOR_TIMEOUT};
use paystream_stack::{wait, StackSettings};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// The test topics the sink copies read.
const VIEW_TOPIC: &str = "it.payments.view";
const TIMELINE_TOPIC: &str = "it.payments.timeline";
/// Where the copies dead-letter what they cannot read (production: `payments.dlq`).
const DLQ_TOPIC: &str = "it.payments.dlq";
/// One partition: the records of a test arrive in the order it sent them, so a record sent
/// after another proves the other was applied once it shows.
const TEST_PARTITIONS: i32 = 1;
/// How long a record may take from Kafka (or a CDC change from the wallet database) to the
/// answer of the API: the sink's poll and flush, Debezium's poll, on a busy 2-core machine.
const SINK_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one produce may wait for the broker's acknowledgement.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// The API, a producer of view and timeline records, and the sinks running.
struct ReadSide {
    api: TestApi,
    codec: EventCodec,
    producer: FutureProducer,
}

impl ReadSide {
    async fn start() -> Self {
        let api = TestApi::start().await;
        let settings = api.settings.clone();
        kafka::ensure_topics(
            &settings.kafka_bootstrap,
            &[
                TopicSpec::new(VIEW_TOPIC, TEST_PARTITIONS).with_config("cleanup.policy", "compact"),
                TopicSpec::new(TIMELINE_TOPIC, TEST_PARTITIONS),
                TopicSpec::new(DLQ_TOPIC, TEST_PARTITIONS),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("creating the test topics: {e}"));
        let connect = connect_stack(&settings).await;
        ensure_sinks(&connect, &settings).await;
        let codec = EventCodec::new(&settings.schema_registry_url).unwrap();
        let producer = kafka::idempotent_producer(&settings.kafka_bootstrap).create().unwrap();
        Self { api, codec, producer }
    }

    async fn send(&self, topic: &str, key: Uuid, payload: Vec<u8>) {
        let key = key.to_string();
        self.producer
            .send(FutureRecord::to(topic).key(&key).payload(&payload).partition(0), PRODUCE_TIMEOUT)
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }

    /// Produces a view as the view topology would (its own contract, Confluent framing).
    async fn view(&self, view: &PaymentView) {
        let payload =
            self.codec.encode_value(VIEW_TOPIC, PaymentView::SCHEMA_JSON, view.to_avro()).await.unwrap();
        self.send(VIEW_TOPIC, view.payment_id, payload).await;
    }

    async fn timeline_event(&self, event: &PaymentTimelineEvent) {
        let payload = self
            .codec
            .encode_value(TIMELINE_TOPIC, PaymentTimelineEvent::SCHEMA_JSON, event.to_avro())
            .await
            .unwrap();
        self.send(TIMELINE_TOPIC, event.payment_id, payload).await;
    }

    async fn get(&self, user: Uuid, path: &str) -> (StatusCode, Value) {
        self.api.call(Method::GET, path, Some(user), None).await
    }

    /// Polls `GET path` as `user` until `done` holds for the answer.
    async fn eventually(
        &self,
        user: Uuid,
        path: &str,
        what: &str,
        done: impl Fn(StatusCode, &Value) -> bool,
    ) -> Value {
        let waited = wait::until_ready(what.to_owned(), SINK_TIMEOUT, || async {
            let (status, body) = self.get(user, path).await;
            if done(status, &body) {
                Ok(body)
            } else {
                Err(format!("GET {path} answered {status} {body}"))
            }
        })
        .await;
        waited.unwrap_or_else(|not_ready| panic!("{not_ready}"))
    }
}

/// The production sink definitions, as test copies on the test topics, created if missing. Named
/// by a hash of their configuration, so a changed definition gets a new copy (and the stale
/// ones are removed) while an unchanged one is left running across test runs.
async fn ensure_sinks(connect: &ConnectClient, settings: &StackSettings) {
    let (url, user, password) = jdbc_connection(&settings.query_db_url);
    for (file, topic) in [("query-views.json", VIEW_TOPIC), ("query-timeline.json", TIMELINE_TOPIC)] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../connect").join(file);
        let mut definition = ConnectorDefinition::load(&path).unwrap();
        definition
            .set("topics", topic)
            .set("connection.url", url.clone())
            .set("connection.username", user.clone())
            .set("connection.password", password.clone())
            .set("errors.deadletterqueue.topic.name", DLQ_TOPIC);
        let stem = format!("it-{}", definition.name);
        let digest = {
            use sha2::{Digest, Sha256};
            hex::encode(&Sha256::digest(serde_json::to_vec(&definition.config).unwrap())[..4])
        };
        definition.name = format!("{stem}-{digest}");
        for stale in connect
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&stem) && *n != definition.name)
        {
            connect.delete(&stale).await.unwrap();
        }
        if connect.status(&definition.name).await.map(|s| s.is_running()).unwrap_or(false) {
            continue;
        }
        connect.apply(&definition).await.unwrap_or_else(|e| panic!("applying {}: {e}", definition.name));
        connect
            .wait_until_running(&definition.name, CONNECTOR_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{} is not running: {e}", definition.name));
    }
    // The owners' replication: the production connector (dev/up applies it); created here
    // only if it is missing.
    if connect.status("query-cdc").await.is_err() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../connect/query-cdc.json");
        connect.apply(&ConnectorDefinition::load(&path).unwrap()).await.unwrap();
    }
    connect
        .wait_until_running("query-cdc", CONNECTOR_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("query-cdc (connect/query-cdc.json) is not running: {e}"));
}

/// `postgres://user:password@host:port/db` as the JDBC sink's url, user and password.
fn jdbc_connection(url: &str) -> (String, String, String) {
    let parsed = reqwest::Url::parse(url).unwrap();
    let jdbc = format!(
        "jdbc:postgresql://{}:{}{}?stringtype=unspecified",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432),
        parsed.path()
    );
    (jdbc, parsed.username().to_owned(), parsed.password().unwrap_or_default().to_owned())
}

/// A view as PaymentInitiated makes it, `created_at_us` after the epoch.
fn new_view(payment_id: Uuid, wallet: Uuid, description: &str, created_at_us: i64) -> PaymentView {
    let created = time::from_micros(created_at_us).unwrap();
    PaymentView {
        payment_id,
        wallet_id: Some(wallet),
        amount: Some(Amount::from_minor(1_250).unwrap()),
        currency: Some("RUB".into()),
        kind: Some("mobile".into()),
        description: Some(description.into()),
        status: "NEW".into(),
        reason: None,
        created_at: Some(created),
        updated_at: created,
        version: 1,
        result_id: None,
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
    }
}

/// The same view `version` events later, in `status`.
fn later(view: &PaymentView, version: i64, status: &str, reason: Option<&str>) -> PaymentView {
    PaymentView {
        status: status.into(),
        reason: reason.map(Into::into),
        version,
        updated_at: view.updated_at + chrono::Duration::milliseconds(version * 100),
        ..view.clone()
    }
}

/// Microseconds since the epoch now, for views made by a test.
fn now_us() -> i64 {
    time::to_micros(time::now())
}

#[tokio::test]
async fn a_projected_payment_shows_its_owner_from_cdc_and_never_moves_backwards() {
    let side = ReadSide::start().await;
    let (user, wallet) = side.api.user_with_wallet("0").await;
    let payment = Uuid::new_v4();
    let created_us = now_us();
    let view = new_view(payment, wallet, "Оплата связи", created_us);
    side.view(&view).await;
    let path = format!("/api/v1/payments/{payment}");
    let body = side
        .eventually(user, &path, "the NEW view with its owner in the read database", |status, body| {
            status == StatusCode::OK && body["user_name"].is_string()
        })
        .await;
    let created = paystream_api::timestamp::format(time::from_micros(created_us).unwrap());
    assert_eq!(
        body,
        json!({
            "paymentId": payment, "user_name": "Иван Петров", "phone": "+79990001122", "wallet_number": wallet,
            "amount": 12.50, "kind": "mobile", "description": "Оплата связи", "status": "NEW", "reason": null,
            "created": created, "updated": created,
        })
    );

    // The final view, then a stale one (redelivered, or from a slower replay), then another
    // payment on the same partition: once that one shows, the stale one has been applied.
    let completed = later(&view, 3, "COMPLETED", None);
    side.view(&completed).await;
    side.view(&later(&view, 2, "SENT", None)).await;
    let marker = Uuid::new_v4();
    side.view(&new_view(marker, wallet, "marker", now_us())).await;
    side.eventually(user, &format!("/api/v1/payments/{marker}"), "the marker view", |status, _| {
        status == StatusCode::OK
    })
    .await;
    let (status, body) = side.get(user, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "COMPLETED", "a lower version never overwrites a higher one: {body}");
    assert_eq!(body["updated"], paystream_api::timestamp::format(completed.updated_at));
    let version: i64 = sqlx::query_scalar("SELECT version FROM payment_views WHERE payment_id = $1")
        .bind(payment)
        .fetch_one(&side.api.query)
        .await
        .unwrap();
    assert_eq!(version, 3);
}

#[tokio::test]
async fn a_phone_changed_in_the_wallet_database_shows_in_the_payment() {
    let side = ReadSide::start().await;
    let (user, wallet) = side.api.user_with_wallet("0").await;
    let payment = Uuid::new_v4();
    side.view(&new_view(payment, wallet, "phone test", now_us())).await;
    let path = format!("/api/v1/payments/{payment}");
    side.eventually(user, &path, "the view with the first phone", |status, body| {
        status == StatusCode::OK && body["phone"] == "+79990001122"
    })
    .await;
    // A second account records the caller's name and phone again (seed 004's upsert of the user):
    // a CDC update of `users`, nothing on the payment topics.
    let (status, body) = side
        .api
        .call(
            Method::POST,
            "/api/v1/accounts",
            Some(user),
            Some(json!({"name": "Иван Петров", "phone": "+79995550000", "currency": "USD"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let body = side
        .eventually(user, &path, "the new phone through users' CDC", |status, body| {
            status == StatusCode::OK && body["phone"] == "+79995550000"
        })
        .await;
    assert_eq!(body["status"], "NEW", "only the owner changed: {body}");
}

#[tokio::test]
async fn another_users_payment_is_404_and_an_accepted_unprojected_one_says_retry_after() {
    let side = ReadSide::start().await;
    let (owner, wallet) = side.api.user_with_wallet("100.00").await;
    let (stranger, _) = side.api.user_with_wallet("0").await;
    let payment = Uuid::new_v4();
    side.view(&new_view(payment, wallet, "mine", now_us())).await;
    let path = format!("/api/v1/payments/{payment}");
    side.eventually(owner, &path, "the owner's view", |status, _| status == StatusCode::OK).await;

    for path in [path.clone(), format!("{path}/timeline"), format!("/api/v1/payments/{}", Uuid::new_v4())] {
        let response =
            side.api.http.get(format!("{}{path}", side.api.base_url)).bearer_auth(token(stranger, 600));
        let response = response.send().await.unwrap();
        assert!(response.headers().get("retry-after").is_none(), "{path}: nothing to wait for");
        let (status, body) = read(response).await;
        assert_eq!(
            (status, body["type"].as_str()),
            (StatusCode::NOT_FOUND, Some("/problems/not-found")),
            "{path}: {body}"
        );
    }
    let (status, body) = side.get(stranger, &format!("/api/v1/payments?wallet={wallet}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["payments"], json!([]), "another user's wallet has no history for the stranger");

    // Accepted by the write side (reserved, the PENDING row), not on any topic: the read side
    // says so. The same reservation and row as `POST /api/v1/payment`, without the outbox row,
    // so that no production topic is written.
    let accepted = Uuid::new_v4();
    let amount = Amount::from_minor(500).unwrap();
    let mut tx = side.api.db.begin().await.unwrap();
    paystream_wallet::reserve(&mut tx, wallet, amount).await.unwrap();
    sqlx::query(
        "INSERT INTO wallet_transactions (payment_id, wallet_id, amount, kind, description, requested_at, accepted_at) \
         VALUES ($1, $2, $3, 'mobile', 'not projected', now(), now())",
    )
    .bind(accepted)
    .bind(wallet)
    .bind(amount.to_decimal())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for path in [format!("/api/v1/payments/{accepted}"), format!("/api/v1/payments/{accepted}/timeline")] {
        let response =
            side.api.http.get(format!("{}{path}", side.api.base_url)).bearer_auth(token(owner, 600));
        let response = response.send().await.unwrap();
        assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"), "{path}");
        let (status, body) = read(response).await;
        assert_eq!(
            (status, body["type"].as_str()),
            (StatusCode::NOT_FOUND, Some("/problems/not-yet-projected")),
            "{body}"
        );
        let (status, body) = side.get(stranger, &path).await;
        assert_eq!(
            (status, body["type"].as_str()),
            (StatusCode::NOT_FOUND, Some("/problems/not-found")),
            "{body}"
        );
    }
    // Settle it as settlement would a failure, so no reservation is left behind.
    let mut tx = side.api.db.begin().await.unwrap();
    paystream_wallet::compensate(&mut tx, wallet, amount).await.unwrap();
    sqlx::query(
        "UPDATE wallet_transactions SET status = 'CANCELLED', payment_result_id = $2, result_status = 'FAILED', \
         result_reason = 'test over', settled_at = now(), updated_at = now() WHERE payment_id = $1",
    )
    .bind(accepted)
    .bind(Uuid::new_v4())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn the_timeline_lists_every_event_once_in_order() {
    let side = ReadSide::start().await;
    let (user, wallet) = side.api.user_with_wallet("0").await;
    let payment = Uuid::new_v4();
    let start_us = now_us();
    side.view(&new_view(payment, wallet, "timeline", start_us)).await;
    let event = |seq: i32, kind: &str, detail: &str| PaymentTimelineEvent {
        payment_id: payment,
        seq,
        kind: kind.into(),
        detail: detail.into(),
        at: time::from_micros(start_us + i64::from(seq) * 1_000).unwrap(),
        trace_id: Some(format!("{seq:032x}")),
    };
    // Out of order and one redelivered: the table is keyed by (paymentId, seq).
    for e in [
        event(2, "DISPATCHED", "ACCEPTED"),
        event(1, "INITIATED", "12.50 RUB"),
        event(2, "DISPATCHED", "ACCEPTED"),
    ] {
        side.timeline_event(&e).await;
    }
    side.timeline_event(&event(3, "RESULT", "COMPLETED")).await;
    let path = format!("/api/v1/payments/{payment}/timeline");
    let body = side
        .eventually(user, &path, "three timeline events", |status, body| {
            status == StatusCode::OK && body["events"].as_array().is_some_and(|e| e.len() == 3)
        })
        .await;
    let at = |seq: i64| paystream_api::timestamp::format(time::from_micros(start_us + seq * 1_000).unwrap());
    assert_eq!(
        body,
        json!({"paymentId": payment, "events": [
            {"seq": 1, "kind": "INITIATED", "detail": "12.50 RUB", "at": at(1), "traceId": format!("{:032x}", 1)},
            {"seq": 2, "kind": "DISPATCHED", "detail": "ACCEPTED", "at": at(2), "traceId": format!("{:032x}", 2)},
            {"seq": 3, "kind": "RESULT", "detail": "COMPLETED", "at": at(3), "traceId": format!("{:032x}", 3)},
        ]})
    );
}

/// Follows `nextCursor` from `first` to the end; the paymentIds in the order given.
async fn pages(side: &ReadSide, user: Uuid, first: &str, page_seen: impl Fn(usize)) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut path = first.to_owned();
    for page in 0.. {
        let (status, body) = side.get(user, &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.extend(
            body["payments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["paymentId"].as_str().unwrap().parse::<Uuid>().unwrap()),
        );
        page_seen(page);
        match body["nextCursor"].as_str() {
            Some(cursor) => path = format!("{first}&cursor={cursor}"),
            None => return ids,
        }
    }
    unreachable!()
}

#[tokio::test]
async fn history_pages_stay_stable_while_new_payments_arrive() {
    let side = ReadSide::start().await;
    let (user, wallet) = side.api.user_with_wallet("0").await;
    let base_us = now_us() - 3_600_000_000;
    // 25 payments a second apart, oldest first; two share a creation time (the id breaks the tie).
    let mut views: Vec<PaymentView> = (0..25)
        .map(|i| new_view(Uuid::new_v4(), wallet, &format!("payment {i}"), base_us + i * 1_000_000))
        .collect();
    views[24].created_at = views[23].created_at;
    for view in &views {
        side.view(view).await;
    }
    let first = format!("/api/v1/payments?wallet={wallet}&limit=7");
    side.eventually(user, "/api/v1/payments?limit=100", "25 payments in the history", |status, body| {
        status == StatusCode::OK && body["payments"].as_array().is_some_and(|p| p.len() == 25)
    })
    .await;
    let mut expected: Vec<(i64, Uuid)> =
        views.iter().map(|v| (time::to_micros(v.created_at.unwrap()), v.payment_id)).collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<Uuid> = expected.into_iter().map(|(_, id)| id).collect();

    // While the pages are read, newer payments keep arriving (each page read after one more
    // is sent); they belong before the first page and must not shift the others.
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let newer: Vec<PaymentView> =
        (0..4).map(|i| new_view(Uuid::new_v4(), wallet, "newer", now_us() + i)).collect();
    let sender = async {
        for view in &newer {
            let _page = arrived_rx.recv().await;
            side.view(view).await;
        }
    };
    let reader = pages(&side, user, &first, |page| {
        let _ = arrived_tx.send(page);
    });
    let (_, ids) = tokio::join!(sender, reader);
    assert_eq!(ids, expected, "every payment present at the start, once, newest first");
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());

    let after = side
        .eventually(user, &first.replace("limit=7", "limit=100"), "the newer payments too", |status, body| {
            status == StatusCode::OK && body["payments"].as_array().is_some_and(|p| p.len() == 29)
        })
        .await;
    let newest: Vec<&str> = after["payments"].as_array().unwrap()[..4]
        .iter()
        .map(|p| p["description"].as_str().unwrap())
        .collect();
    assert_eq!(newest, ["newer"; 4]);
}

#[tokio::test]
async fn search_finds_by_name_fragment_description_word_status_and_date_range() {
    let side = ReadSide::start().await;
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let user = Uuid::new_v4();
    let name = format!("Zoltan Quibble{tag}");
    let (status, body) = side
        .api
        .call(
            Method::POST,
            "/api/v1/accounts",
            Some(user),
            Some(json!({"name": name, "phone": null, "currency": "RUB"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let wallet: Uuid = body["walletId"].as_str().unwrap().parse().unwrap();
    let day_us: i64 = 86_400_000_000;
    let base_us = 1_764_547_200_000_000; // 2025-12-01T00:00:00Z
    let specs = [
        ("green tea", "COMPLETED", 0),
        ("coffee beans", "FAILED", 1),
        ("Mobile top-up +7999", "COMPLETED", 2),
        ("tea for two", "NEW", 3),
        ("100%_cotton", "SENT", 4),
    ];
    let mut ids = std::collections::HashMap::new();
    for (description, status, day) in specs {
        let view = new_view(Uuid::new_v4(), wallet, description, base_us + day * day_us);
        let view = if status == "NEW" { view } else { later(&view, 2, status, None) };
        ids.insert(description, view.payment_id);
        side.view(&view).await;
    }
    side.eventually(user, "/api/v1/payments", "the five payments", |status, body| {
        status == StatusCode::OK && body["payments"].as_array().is_some_and(|p| p.len() == 5)
    })
    .await;
    let found = |query: String| {
        let side = &side;
        async move {
            let (status, body) = side.get(user, &format!("/api/v1/payments?{query}")).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            body["payments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["description"].as_str().unwrap().to_owned())
                .collect::<BTreeSet<_>>()
        }
    };
    let set = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    let all = set(&["green tea", "coffee beans", "Mobile top-up +7999", "tea for two", "100%_cotton"]);
    assert_eq!(found("q=tea".into()).await, set(&["green tea", "tea for two"]), "a description word");
    assert_eq!(found("q=TEA%20green".into()).await, set(&["green tea"]), "every word, any order, any case");
    assert_eq!(found("q=offe".into()).await, set(&["coffee beans"]), "a fragment of a description");
    assert_eq!(found("q=top-up".into()).await, set(&["Mobile top-up +7999"]));
    assert_eq!(found("q=%25_".into()).await, set(&["100%_cotton"]), "% and _ are literal");
    assert_eq!(found(format!("q=quibble{tag}")).await, all, "the owner's name, a word of it");
    assert_eq!(found("q=uibbl".into()).await, all, "a fragment of the owner's name");
    assert_eq!(
        found("q=zoltan%20beans".into()).await,
        set(&["coffee beans"]),
        "name and description words together"
    );
    assert_eq!(found("q=nothing-like-this".into()).await, set(&[]));
    assert_eq!(found("status=COMPLETED".into()).await, set(&["green tea", "Mobile top-up +7999"]));
    assert_eq!(
        found("from=20251202-00:00:00:000000&to=20251204-00:00:00:000000".into()).await,
        set(&["coffee beans", "Mobile top-up +7999"]),
        "from inclusive, to exclusive"
    );
    assert_eq!(found("q=tea&status=NEW&from=20251203-00:00:00:000000".into()).await, set(&["tea for two"]));
    // Newest first.
    let (_, body) = side.get(user, "/api/v1/payments?q=tea").await;
    assert_eq!(body["payments"][0]["paymentId"], json!(ids["tea for two"]));
}

#[tokio::test]
async fn every_bad_parameter_is_a_400_problem_naming_it() {
    let side = ReadSide::start().await;
    let user = Uuid::new_v4();
    let cases = [
        ("/api/v1/payments?wallet=42", "wallet"),
        ("/api/v1/payments?status=done", "status"),
        ("/api/v1/payments?status=completed", "status"),
        ("/api/v1/payments?from=2026-12-01", "from"),
        ("/api/v1/payments?to=20261301-00:00:00:000000", "to"),
        ("/api/v1/payments?from=20261202-00:00:00:000000&to=20261201-00:00:00:000000", "to"),
        ("/api/v1/payments?q=", "q"),
        ("/api/v1/payments?q=%20%20", "q"),
        ("/api/v1/payments?q=a%00b", "q"),
        ("/api/v1/payments?limit=0", "limit"),
        ("/api/v1/payments?limit=101", "limit"),
        ("/api/v1/payments?limit=-1", "limit"),
        ("/api/v1/payments?limit=abc", "limit"),
        ("/api/v1/payments?cursor=abc", "cursor"),
        ("/api/v1/payments?cursor=v1zz", "cursor"),
        ("/api/v1/payments?limit=5&limit=6", "limit"),
        ("/api/v1/payments?sort=asc", "query"),
        ("/api/v1/payments/not-a-uuid", "paymentId"),
        ("/api/v1/payments/not-a-uuid/timeline", "paymentId"),
    ];
    let long_q = format!("/api/v1/payments?q={}", "x".repeat(201));
    for (path, field) in cases.iter().copied().chain([(long_q.as_str(), "q")]) {
        let (status, body) = side.get(user, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["type"], "/problems/invalid-parameter", "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    // Without a token: 401, whatever the parameters.
    let (status, _) = side.api.call(Method::GET, "/api/v1/payments?limit=0", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_aborted_view_never_reaches_the_read_database() {
    let side = ReadSide::start().await;
    let (user, wallet) = side.api.user_with_wallet("0").await;
    let payment = Uuid::new_v4();
    let view = new_view(payment, wallet, "aborted test", now_us());
    // A final-looking view in a transaction that aborts: a read_uncommitted sink would apply
    // it, and its version 9 would then win over everything after it.
    let producer: FutureProducer = kafka::transactional_producer(
        &side.api.settings.kafka_bootstrap,
        &paystream_stack::testkit::unique("it-views-aborted"),
    )
    .create()
    .unwrap();
    use rdkafka::producer::Producer;
    producer.init_transactions(PRODUCE_TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    let aborted = later(&view, 9, "COMPLETED", Some("never committed"));
    let payload =
        side.codec.encode_value(VIEW_TOPIC, PaymentView::SCHEMA_JSON, aborted.to_avro()).await.unwrap();
    let key = payment.to_string();
    producer
        .send(FutureRecord::to(VIEW_TOPIC).key(&key).payload(&payload).partition(0), PRODUCE_TIMEOUT)
        .await
        .unwrap_or_else(|(e, _)| panic!("producing the aborted view: {e}"));
    producer.abort_transaction(PRODUCE_TIMEOUT).unwrap();
    side.view(&view).await;
    let marker = Uuid::new_v4();
    side.view(&new_view(marker, wallet, "marker", now_us())).await;
    side.eventually(user, &format!("/api/v1/payments/{marker}"), "the marker view", |status, _| {
        status == StatusCode::OK
    })
    .await;
    let (status, body) = side.get(user, &format!("/api/v1/payments/{payment}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["status"].as_str(), body["reason"].as_str()), (Some("NEW"), None), "{body}");
}

#[tokio::test]
async fn a_record_the_sink_cannot_read_is_dead_lettered_and_the_next_one_applies() {
    let side = ReadSide::start().await;
    let (user, wallet) = side.api.user_with_wallet("0").await;
    let garbage = format!("not a PaymentView {}", Uuid::new_v4()).into_bytes();
    side.send(VIEW_TOPIC, Uuid::new_v4(), garbage.clone()).await;
    let next = Uuid::new_v4();
    side.view(&new_view(next, wallet, "after the poison", now_us())).await;
    side.eventually(
        user,
        &format!("/api/v1/payments/{next}"),
        "the view after the poison record",
        |status, _| status == StatusCode::OK,
    )
    .await;
    let settings = side.api.settings.clone();
    let wanted = garbage.clone();
    let dead = tokio::task::spawn_blocking(move || {
        let consumer = paystream_stack::testkit::consumer(&settings, DLQ_TOPIC, "read_committed");
        let received =
            paystream_stack::testkit::consume_until(&consumer, SINK_TIMEOUT, Duration::ZERO, |seen| {
                seen.iter().any(|r| r.value.as_deref() == Some(wanted.as_slice()))
            });
        received.into_iter().find(|r| r.value.as_deref() == Some(wanted.as_slice())).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(dead.header("__connect.errors.topic"), Some(VIEW_TOPIC.as_bytes()), "{dead:?}");
    assert!(dead.header("__connect.errors.exception.class.name").is_some(), "{dead:?}");
}
