//! The whole flow on the real stack, from the outside: every paystream process of `dev/services`
//! started as `dev/run` starts them (api, settle, provider-sim, dispatch, saga, timers), payments
//! sent through the public API only, the provider simulator answering with its delays, duplicate
//! and reordered callbacks, declines and 5xx answers — then `paystream audit`'s checks on the
//! wallets this test created: every payment ended once, the provider's ledger agrees with every
//! wallet, money is conserved. Orders paid through the Kafka door (`pay.order`, each command sent
//! twice) go the same way and are answered exactly once on `order.paid` or `order.payment_failed`.
//! One payment is cancelled by its owner as soon as it is accepted (CANCELED if the void won,
//! else its normal end: the audit holds either way). Last, the read side — `paystream view`, the
//! JDBC sink, `GET /api/v1/payments/{id}` — shows every payment of both doors alike, with its
//! final status and its owner's name from CDC.
//!
//! Before the payments, poison records go onto every topic a paystream process consumes
//! (garbage bytes, an unknown schema id, valid Avro of another contract, a payment whose key
//! disagrees with its paymentId): each must reach `payments.dlq` with its reason and origin in
//! headers, and the flow must go on as if they had not been there.
//!
//! The processes use the production topics, consumer groups and ports (Debezium's outbox routes
//! to the production topics), so this test runs alone: cargo runs test binaries one after
//! another, and this binary has one test. It refuses to start while `dev/run` holds the ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paystream_audit::{Rules, Scope, Sources};
use paystream_processors::orders::client::OrdersClient;
use paystream_schemas::events::{
    topics, OrderPaid, OrderPaymentFailed, PayOrder, PaymentInitiated, PaymentResult, PaymentResultStatus,
    TimerChange, TimerEvent, TimerKind,
};
use paystream_schemas::{Amount, EventCodec};
use paystream_stack::supervisor::{self, Fleet, FlowEnvironment};
use paystream_stack::testkit;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// Users, each with one wallet.
const USERS: usize = 4;
/// Payments per user.
const PAYMENTS_PER_USER: usize = 10;
/// Each wallet's deposit; payments are 1.00 to 40.00, so no payment of the flow is refused.
const DEPOSIT: &str = "500.00";
/// Budget for every payment of the test to be settled.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(240);
/// How often the wait for settlement reports progress and checks that no process died.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// The API, as `dev/services` starts it.
const API: &str = "http://127.0.0.1:8080";
/// The provider simulator.
const PROVIDER: &str = "http://127.0.0.1:8090";
/// Ports the processes listen on; taken ports mean `dev/run` (or a leftover) is running.
const PORTS: [u16; 7] = [8080, 8090, 9101, 9102, 9103, 9104, 9109];
/// Orders paid through `pay.order`, one per user (from the user's wallet, so the audit covers them).
const ORDERS: usize = USERS;
/// The simulator's seed: its decisions per payment are reproducible from it.
const SEED: &str = "20261201";

/// Topics a paystream process consumes, with how many consumer groups read each (the saga and
/// the timers app both read the timers topic, so a poison timer is dead-lettered twice; the
/// payment view reads every payment topic but the charge commands, and dead-letters too).
const CONSUMED: [(&str, usize); 8] = [
    (topics::PAYMENTS_INITIATED, 2),
    (topics::PAYMENTS_CALLBACKS, 2),
    (topics::PAYMENTS_DISPATCH_OUTCOMES, 2),
    (topics::PAYMENTS_TIMERS, 3),
    (topics::PAYMENTS_PROVIDER_COMMANDS, 1),
    (topics::PAYMENTS_PROVIDER_REQUESTS, 2),
    (topics::PAYMENTS_RESULTS, 2),
    (topics::PAY_ORDER, 1),
];
/// Budget for the read side (view → JDBC sink → query database) to show every settled payment.
const READ_SIDE_TIMEOUT: Duration = Duration::from_secs(90);
/// The one payment the test's owner cancels right after paying it.
const CANCELLED: usize = 1;

/// The header that names a poison record of this test, so its dead letter can be found.
const POISON_HEADER: &str = "it.poison";
/// Budget for every dead letter to appear once the flow has settled.
const DLQ_TIMEOUT: Duration = Duration::from_secs(60);

/// One poison record: where it goes, its label, key and bytes, and how many dead letters it makes.
struct Poison {
    topic: &'static str,
    label: String,
    key: Vec<u8>,
    value: Vec<u8>,
    letters: usize,
}

/// Poison for every consumed topic: garbage, an unknown schema id, another contract's record; and
/// on the payment and result topics a well-formed event whose key is not its paymentId.
async fn poison_records(codec: &EventCodec) -> Vec<Poison> {
    let now = paystream_schemas::time::now();
    let payment_id = Uuid::new_v4();
    let timer = TimerEvent {
        timer_id: Uuid::new_v4(),
        payment_id,
        kind: TimerKind::PaymentTimeout,
        due_at: now,
        change: TimerChange::Fired { fired_at: now },
    };
    let initiated = PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id,
        wallet_id: Uuid::new_v4(),
        amount: Amount::from_minor(1_00).expect("an amount"),
        currency: "RUB".into(),
        kind: "mobile".into(),
        description: "a poison payment".into(),
        requested_at: now,
        initiated_at: now,
    };
    let result = PaymentResult {
        payment_result_id: PaymentResult::id_for(payment_id, PaymentResultStatus::Completed),
        payment_id,
        wallet_id: initiated.wallet_id,
        amount: initiated.amount,
        status: PaymentResultStatus::Completed,
        reason: String::new(),
        decided_at: now,
    };
    let timer_bytes = codec.encode(&timer).await.expect("encoding a timer");
    let result_bytes = codec.encode(&result).await.expect("encoding a result");
    let initiated_bytes = codec.encode(&initiated).await.expect("encoding a payment");
    // Magic byte 0 and a schema id no registry has handed out.
    let unknown_schema = [0u8, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6].to_vec();
    let mut poison = Vec::new();
    for (topic, letters) in CONSUMED {
        let other_contract = if topic == topics::PAYMENTS_TIMERS { &result_bytes } else { &timer_bytes };
        for (kind, value) in [
            ("garbage", b"not avro, not anything".to_vec()),
            ("unknown-schema-id", unknown_schema.clone()),
            ("other-contract", other_contract.clone()),
        ] {
            poison.push(Poison {
                topic,
                label: format!("{topic}/{kind}"),
                key: payment_id.to_string().into_bytes(),
                value,
                letters,
            });
        }
    }
    for (topic, value) in
        [(topics::PAYMENTS_INITIATED, initiated_bytes), (topics::PAYMENTS_RESULTS, result_bytes)]
    {
        // Every reader of the topic refuses it (the saga or settlement, and the view).
        let letters = CONSUMED.iter().find(|(t, _)| *t == topic).map_or(1, |(_, n)| *n);
        poison.push(Poison {
            topic,
            label: format!("{topic}/key-not-payment-id"),
            key: Uuid::new_v4().to_string().into_bytes(),
            value,
            letters,
        });
    }
    poison
}

async fn send_poison(settings: &paystream_stack::StackSettings, poison: &[Poison]) {
    let producer: FutureProducer =
        paystream_stack::kafka::idempotent_producer(&settings.kafka_bootstrap).create().expect("a producer");
    for p in poison {
        let headers =
            OwnedHeaders::new().insert(Header { key: POISON_HEADER, value: Some(p.label.as_bytes()) });
        let record = FutureRecord::to(p.topic).key(&p.key).payload(&p.value).headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("producing poison {}: {e}", p.label));
    }
}

/// Every poison record's dead letters, with a reason and the right origin.
fn assert_dead_lettered(dlq: &rdkafka::consumer::BaseConsumer, poison: &[Poison]) {
    let expected: usize = poison.iter().map(|p| p.letters).sum();
    let letters = testkit::consume_until(dlq, DLQ_TIMEOUT, Duration::from_secs(2), |seen| {
        seen.iter().filter(|r| r.header(POISON_HEADER).is_some()).count() >= expected
    });
    for p in poison {
        let mine: Vec<_> =
            letters.iter().filter(|r| r.header(POISON_HEADER) == Some(p.label.as_bytes())).collect();
        assert_eq!(mine.len(), p.letters, "{}: dead letters {mine:#?}", p.label);
        for letter in mine {
            assert_eq!(letter.header("dlq.source.topic"), Some(p.topic.as_bytes()), "{}", p.label);
            assert!(letter.header("dlq.reason").is_some_and(|r| !r.is_empty()), "{}: no reason", p.label);
            assert_eq!(letter.value.as_deref(), Some(p.value.as_slice()), "{}: bytes unchanged", p.label);
        }
    }
}

/// The run: a provider with every fault dialled up (lost callbacks included, so the saga's
/// verification with the provider is taken), short delays so the test is quick. The decisions
/// are per payment id, new each run, so each fault the test asserts was exercised needs a rate at
/// which ~40 payments miss it almost never: at 0.1 lost, 0.9^40 ≈ 1.5% of runs lost no callback
/// (seen once); at 0.2, 0.8^40 < 0.02%.
fn environment(state_dir: &Path) -> Vec<(String, String)> {
    let seed = SEED.parse().expect("a numeric seed");
    let mut env = FlowEnvironment { state_dir: Some(state_dir.to_owned()), ..FlowEnvironment::faulty(seed) };
    env.duplicate_rate = 0.2;
    env.provider_5xx_rate = 0.2;
    env.lost_rate = 0.2;
    env.delay_ms = (50, 500);
    env.vars()
}

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn assert_ports_free() {
    for port in PORTS {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            panic!(
                "port {port} is in use: the whole-flow test starts every paystream process on its \
                 production port; stop `dev/run` (Ctrl-C) or whatever holds the port, then run it again"
            );
        }
    }
}

/// A bearer token for `user` (an operator's when `operator`).
fn token(user: Uuid, operator: bool) -> String {
    paystream_stack::testkit::bearer_token(user, operator)
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Value,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{API}{path}")).bearer_auth(token).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A user with a funded wallet: (user, wallet).
    async fn funded_wallet(&self, n: usize) -> (Uuid, Uuid) {
        let user = Uuid::new_v4();
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/accounts",
                &token(user, false),
                json!({"name": format!("Flow User {n}"), "phone": format!("+7900000{n:04}"), "currency": "RUB"}),
                None,
            )
            .await;
        assert!(status.is_success(), "creating a wallet: {status} {body}");
        let wallet: Uuid = body["walletId"].as_str().and_then(|s| s.parse().ok()).expect("walletId");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/accounts/{wallet}/deposits"),
                &token(Uuid::new_v4(), true),
                json!({"amount": DEPOSIT.parse::<f64>().expect("a number")}),
                Some(&Uuid::new_v4().to_string()),
            )
            .await;
        assert!(status.is_success(), "depositing: {status} {body}");
        (user, wallet)
    }

    async fn pay(
        &self,
        user: Uuid,
        wallet: Uuid,
        payment_id: Uuid,
        amount_minor: i64,
    ) -> (StatusCode, Value) {
        let body = json!({
            "paymentId": payment_id,
            "wallet": wallet,
            "amount": serde_json::Number::from_f64(amount_minor as f64 / 100.0).expect("finite"),
            "kind": "mobile",
            "description": format!("flow payment {payment_id}"),
            "timestamp": "20261201-09:00:00:000000",
        });
        self.call(reqwest::Method::POST, "/api/v1/payment", &token(user, false), body, None).await
    }
}

/// Every order was paid once (one payment, from its command) and answered once: `OrderPaid` if its
/// payment completed, `OrderPaymentFailed` if it was cancelled, never both.
async fn assert_orders_answered_once(
    db: &sqlx::PgPool,
    codec: &EventCodec,
    orders: &[PayOrder],
    paid: &rdkafka::consumer::BaseConsumer,
    failed: &rdkafka::consumer::BaseConsumer,
) {
    let ids: Vec<Vec<u8>> = orders.iter().map(|o| o.order_id.clone().into_bytes()).collect();
    let mine = |r: &testkit::Received| r.key.as_ref().is_some_and(|k| ids.contains(k));
    let mut answers: Vec<(String, Vec<u8>)> = Vec::new();
    let started = Instant::now();
    while answers.len() < orders.len() {
        assert!(
            started.elapsed() < DLQ_TIMEOUT,
            "{} of {} orders answered: {answers:?}",
            answers.len(),
            orders.len()
        );
        for (topic, reader) in [(topics::ORDER_PAID, paid), (topics::ORDER_PAYMENT_FAILED, failed)] {
            let seen = testkit::consume_until(reader, Duration::from_secs(1), Duration::ZERO, |_| true);
            answers.extend(
                seen.into_iter().filter(mine).map(|r| (topic.to_owned(), r.value.unwrap_or_default())),
            );
        }
    }
    // Late copies would show up here.
    for reader in [paid, failed] {
        let more = testkit::consume_until(reader, Duration::from_secs(3), Duration::from_secs(2), |_| true);
        assert!(!more.iter().any(mine), "a second answer: {more:#?}");
    }
    for order in orders {
        let payment_id = PayOrder::payment_id_for(&order.order_id);
        let status: String =
            sqlx::query_scalar("SELECT status FROM wallet_transactions WHERE payment_id = $1")
                .bind(payment_id)
                .fetch_one(db)
                .await
                .unwrap_or_else(|e| panic!("order {}: its payment {payment_id}: {e}", order.order_id));
        let mut found = Vec::new();
        for (topic, value) in &answers {
            if topic == topics::ORDER_PAID {
                let event: OrderPaid = codec.decode(value).await.expect("an OrderPaid");
                if event.order_id == order.order_id {
                    found.push(("COMPLETED", event.payment_id, event.command_id));
                }
            } else {
                let event: OrderPaymentFailed = codec.decode(value).await.expect("an OrderPaymentFailed");
                if event.order_id == order.order_id {
                    found.push(("CANCELLED", event.payment_id, event.command_id));
                }
            }
        }
        assert_eq!(
            found,
            [(status.as_str(), payment_id, order.command_id)],
            "order {}: one answer",
            order.order_id
        );
    }
}

/// `name{labels} value` from a Prometheus text page; 0 when absent.
/// Every `(owner, payment, user number)` is served by `GET /api/v1/payments/{id}` to its owner with
/// the status settlement recorded (or RECONCILED, a late success refunded) and the owner's name,
/// within [`READ_SIDE_TIMEOUT`]: the projection and its sink are part of the flow.
async fn assert_read_side_shows(client: &Client, db: &sqlx::PgPool, shown: &[(Uuid, Uuid, usize)]) {
    let deadline = Instant::now() + READ_SIDE_TIMEOUT;
    for &(user, id, n) in shown {
        let settled: String =
            sqlx::query_scalar("SELECT result_status FROM wallet_transactions WHERE payment_id = $1")
                .bind(id)
                .fetch_one(db)
                .await
                .unwrap_or_else(|e| panic!("payment {id}'s settlement: {e}"));
        loop {
            let (status, body) = client
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/payments/{id}"),
                    &token(user, false),
                    Value::Null,
                    None,
                )
                .await;
            let view = body["status"].as_str().unwrap_or_default();
            if status == StatusCode::OK && (view == settled || view == "RECONCILED") {
                assert_eq!(body["user_name"], json!(format!("Flow User {n}")), "payment {id}: {body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the read side does not show payment {id} as {settled} after {READ_SIDE_TIMEOUT:?}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payment_through_the_whole_flow_ends_once_and_money_is_conserved() {
    let settings = testkit::kafka_stack().await;
    let db = testkit::wallet_db(&settings).await;
    assert_ports_free();
    let run_dir = std::env::temp_dir().join(testkit::unique("paystream-whole-flow"));
    let log_dir = run_dir.join("logs");
    std::fs::create_dir_all(&log_dir).expect("a log directory");
    // The processors' state as dev/run keeps it, when the stack's environment names it (a warm
    // restart restores nothing); else a fresh directory (their stores restore from changelogs).
    let state_dir =
        std::env::var_os("PAYSTREAM_STATE_DIR").map_or_else(|| run_dir.join("state"), PathBuf::from);
    eprintln!("whole flow: logs in {}", log_dir.display());
    let specs = supervisor::services_file(
        &repo_dir().join("dev/services"),
        Path::new(env!("CARGO_BIN_EXE_paystream")),
        &environment(&state_dir),
    )
    .expect("dev/services");
    let mut fleet = Fleet::start(specs, &log_dir).await.unwrap_or_else(|e| panic!("{e}"));

    let dlq = testkit::tail(&settings, "payments.dlq");
    let order_paid = testkit::tail(&settings, topics::ORDER_PAID);
    let order_failed = testkit::tail(&settings, topics::ORDER_PAYMENT_FAILED);
    let codec = EventCodec::new(&settings.schema_registry_url).expect("a registry client");
    let poison = poison_records(&codec).await;
    send_poison(&settings, &poison).await;

    let client = Client {
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("a client"),
    };
    let mut wallets = Vec::new();
    let mut payments = Vec::new();
    for n in 0..USERS {
        let (user, wallet) = client.funded_wallet(n).await;
        wallets.push(wallet);
        for i in 0..PAYMENTS_PER_USER {
            let amount_minor = 100 + ((n * PAYMENTS_PER_USER + i) as i64 * 397) % 3_900;
            payments.push((user, wallet, Uuid::new_v4(), amount_minor));
        }
    }
    let answers = futures::future::join_all(
        payments.iter().map(|&(user, wallet, id, amount)| client.pay(user, wallet, id, amount)),
    )
    .await;
    for ((_, _, id, _), (status, body)) in payments.iter().zip(&answers) {
        assert_eq!(*status, StatusCode::OK, "payment {id}: {body}");
        assert_eq!(body["paymentId"], json!(id), "payment {id}: {body}");
    }
    // Orders through the Kafka door, from the same users' wallets; each command twice, as an
    // at-least-once orders service may send it.
    let orders_client =
        OrdersClient::new(&settings.kafka_bootstrap, EventCodec::new(&settings.schema_registry_url).unwrap())
            .expect("an orders producer");
    let mut orders = Vec::new();
    for n in 0..ORDERS {
        let (user, _, _, _) = payments[n * PAYMENTS_PER_USER];
        let order = PayOrder {
            command_id: Uuid::new_v4(),
            order_id: testkit::unique("flow-order"),
            user_id: user,
            wallet_id: None,
            amount: Amount::from_minor(777 + n as i64).expect("an amount").into(),
            currency: "RUB".into(),
            description: "a flow order over pay.order".into(),
            ordered_at: paystream_schemas::time::now(),
        };
        for _ in 0..2 {
            orders_client
                .send(topics::PAY_ORDER, &order)
                .await
                .unwrap_or_else(|e| panic!("sending an order: {e}"));
        }
        orders.push(order);
    }
    // An idempotent replay answers the same and reserves nothing more.
    let (user, wallet, id, amount) = payments[0];
    let (status, replay) = client.pay(user, wallet, id, amount).await;
    assert_eq!((status, &replay), (StatusCode::OK, &answers[0].1), "a replay answers as the first time");

    // The owner cancels one payment: accepted (202), already cancelled (200), or refused (409)
    // if the charge went through first — every answer is the same problem-free JSON shape.
    let (user, _, id, _) = payments[CANCELLED];
    let (status, body) = client
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/payments/{id}/cancel"),
            &token(user, false),
            json!({}),
            None,
        )
        .await;
    assert!(
        [StatusCode::ACCEPTED, StatusCode::OK, StatusCode::CONFLICT].contains(&status),
        "cancelling {id}: {status} {body}"
    );

    // Wait until the flow has settled every payment, watching that nothing died.
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM wallet_transactions WHERE wallet_id = ANY($1) AND status = 'PENDING'",
        )
        .bind(&wallets)
        .fetch_one(&db)
        .await
        .expect("counting pending payments");
        if pending == 0 {
            break;
        }
        let dead = fleet.dead();
        if !dead.is_empty() {
            let tails: Vec<String> = dead
                .iter()
                .filter_map(|name| {
                    fleet
                        .get(name)
                        .map(|s| format!("── {name} ({}):\n{}", s.log_path().display(), s.log_tail()))
                })
                .collect();
            panic!("{dead:?} died while {pending} payments were pending:\n{}", tails.join("\n"));
        }
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "{pending} of {} payments still pending after {SETTLE_TIMEOUT:?}; logs in {}",
            payments.len(),
            log_dir.display()
        );
        if last_report.elapsed() >= PROGRESS_INTERVAL {
            eprintln!(
                "whole flow: {pending} of {} payments pending after {:?}",
                payments.len(),
                started.elapsed()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("whole flow: {} payments settled in {:?}", payments.len(), started.elapsed());

    // The audit of this test's wallets, provider's ledger included.
    let sources = Sources::new(&settings, Some(PROVIDER.to_owned()));
    let scope = Scope { wallets: Some(wallets.clone()), since: None };
    let findings =
        paystream_audit::audit(&db, &sources, &scope, &Rules::default()).await.expect("the audit's snapshot");
    let report = paystream_audit::report::render(&findings);
    eprintln!("{report}");
    assert!(findings.clean(), "{report}");
    assert_eq!(findings.payments.get("pending"), None);
    let settled: usize = findings.payments.values().sum();
    let all = payments.len() + orders.len();
    assert_eq!(settled, all, "every payment of the test, the orders' included, is in the audit");
    assert_eq!(findings.results, all, "one result each");
    assert_eq!(findings.provider_checked, all, "the provider was asked about each");
    assert_orders_answered_once(&db, &codec, &orders, &order_paid, &order_failed).await;
    // The read side shows both doors' payments alike, each as settlement ended it.
    let mut shown: Vec<(Uuid, Uuid, usize)> =
        payments.iter().enumerate().map(|(i, &(user, _, id, _))| (user, id, i / PAYMENTS_PER_USER)).collect();
    shown.extend(
        orders
            .iter()
            .enumerate()
            .map(|(n, order)| (order.user_id, PayOrder::payment_id_for(&order.order_id), n)),
    );
    assert_read_side_shows(&client, &db, &shown).await;
    // Not a vacuous pass: both outcomes happened, and the provider's faults were exercised.
    assert!(findings.payments.get("completed").is_some_and(|&n| n > 0), "{report}");
    assert!(findings.payments.get("cancelled").is_some_and(|&n| n > 0), "{report}");
    let page = client
        .http
        .get(format!("{PROVIDER}/metrics"))
        .send()
        .await
        .expect("sim metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metric(&page, r#"paystream_provider_sim_charges_total{answer="unavailable"}"#) > 0.0,
        "no 5xx was answered:\n{page}"
    );
    let duplicates =
        metric(&page, r#"paystream_provider_sim_callbacks_total{kind="duplicate",status="SUCCEEDED"}"#)
            + metric(&page, r#"paystream_provider_sim_callbacks_total{kind="duplicate",status="FAILED"}"#);
    assert!(duplicates > 0.0, "no duplicate callback was sent:\n{page}");
    let lost = metric(&page, r#"paystream_provider_sim_callbacks_total{kind="lost",status="SUCCEEDED"}"#)
        + metric(&page, r#"paystream_provider_sim_callbacks_total{kind="lost",status="FAILED"}"#);
    assert!(lost > 0.0, "no callback was lost, so no payment was verified with the provider:\n{page}");

    assert_dead_lettered(&dlq, &poison);

    fleet.stop().await;
}
