//! Seed 004's Kafka door on the real stack: Kafka, the registry, the wallet database and the
//! production `wallet-outbox` Debezium connector.
//!
//! Each test runs the inbox consumer and settlement in-process, on topics of its own (the
//! commands, the saga's input, the answers, the results, the DLQ) with groups of its own, so the
//! production flow (`dev/run`, the whole-flow test, the chaos run) never sees them. The outbox rows
//! name the test's topics as their `aggregatetype`, and the production connector routes by it, so
//! every hop from the inbox row to the answer on its topic is the real one. The saga is stood in
//! for by producing its `PaymentResult` to the test's results topic, as settlement's tests do.
//!
//! Every wait is bounded and polls a condition; after each test the wallets are checked for
//! conservation of money.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::settlement::{assert_money_conserved, money, seed_user_wallet, settlement_config, Running};
use paystream_processors::orders::client::OrdersClient;
use paystream_processors::orders::{self, OrderTopics, OrdersConfig, OrdersMetrics};
use paystream_processors::settlement;
use paystream_schemas::events::{
    CommandAmount, OrderFailureReason, OrderPaid, OrderPaymentFailed, PayOrder, PaymentInitiated,
    PaymentResult, PaymentResultStatus,
};
use paystream_schemas::registry::{catalog, RegistryClient, CONTRACT_COMPATIBILITY};
use paystream_schemas::{time, Amount, Event, EventCodec};
use paystream_stack::testkit::{self, consume_until, Received};
use paystream_stack::{kafka, wait, StackSettings};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// Budget for a command, a result or an event to reach its expected state.
const TIMEOUT: Duration = Duration::from_secs(90);
/// How long a reader keeps reading after it has what it expects, to catch a second copy.
const SETTLE: Duration = Duration::from_secs(3);
/// Partitions of the tests' topics.
const PARTITIONS: i32 = 3;
/// Pause between two looks at a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The name of the tests' users.
const TEST_USER: &str = "orders test";

// ---------------------------------------------------------------------------------------
// The stack, the test's topics and its processes
// ---------------------------------------------------------------------------------------

/// One test's door: its topics, the inbox consumer and settlement on them.
struct Door {
    settings: StackSettings,
    db: PgPool,
    codec: EventCodec,
    client: OrdersClient,
    commands: String,
    topics: OrderTopics,
    results: String,
    dlq: String,
    inbox: Option<Running<orders::OrdersError>>,
    settlement: Option<Running<settlement::SettlementError>>,
    inbox_metrics: OrdersMetrics,
}

/// Stops `running`, checking it stopped cleanly (`what` names it in the failure).
async fn stop<E: std::fmt::Debug + Send + 'static>(running: Running<E>, what: &str) {
    running.stop().await.unwrap_or_else(|e| panic!("{what} stopped with an error: {e:?}"));
}

/// The names of a test's topics under `base`.
fn topic_names(base: &str) -> (String, OrderTopics, String, String) {
    (
        format!("{base}.pay-order"),
        OrderTopics {
            initiated: format!("{base}.initiated"),
            paid: format!("{base}.order-paid"),
            failed: format!("{base}.order-payment-failed"),
        },
        format!("{base}.results"),
        format!("{base}.dlq"),
    )
}

/// The stack once Kafka, the registry, the database and the outbox connector answer, with the
/// order contracts registered under the project's rule.
async fn stack() -> (StackSettings, PgPool) {
    let (settings, db) = common::settlement::stack().await;
    let registry = RegistryClient::new(&settings.schema_registry_url).expect("registry client");
    // `paystream schemas register` does this in dev/up; a stack started before the contracts
    // existed has not, and a codec would otherwise register them under the global rule.
    for contract in
        catalog().into_iter().filter(|c| ["PayOrder", "OrderPaid", "OrderPaymentFailed"].contains(&c.name))
    {
        registry
            .register_with_rule(&contract.subject, contract.schema, CONTRACT_COMPATIBILITY)
            .await
            .unwrap_or_else(|e| panic!("registering {}: {e}", contract.name));
    }
    let connect = testkit::connect_stack(&settings).await;
    let what = "the wallet-outbox connector RUNNING".to_owned();
    if let Err(not_ready) = wait::until_ready(what, testkit::CONNECTOR_TIMEOUT, || async {
        match connect.status("wallet-outbox").await {
            Ok(status) if status.failure().is_none() => Ok(()),
            Ok(status) => Err(format!("{status:?}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    {
        panic!("{not_ready} (dev/up registers it)");
    }
    (settings, db)
}

impl Door {
    /// A door on topics of its own, with the inbox consumer and settlement running.
    async fn open() -> Self {
        let (settings, db) = stack().await;
        let base = testkit::unique("it.orders");
        let (commands, topics, results, dlq) = topic_names(&base);
        let specs: Vec<kafka::TopicSpec> =
            [&commands, &topics.initiated, &topics.paid, &topics.failed, &results, &dlq]
                .into_iter()
                .map(|t| kafka::TopicSpec::new(t.clone(), PARTITIONS))
                .collect();
        kafka::ensure_topics(&settings.kafka_bootstrap, &specs).await.expect("topics");
        let codec = EventCodec::new(&settings.schema_registry_url).expect("codec");
        let client = OrdersClient::new(
            &settings.kafka_bootstrap,
            EventCodec::new(&settings.schema_registry_url).unwrap(),
        )
        .expect("producer");
        let inbox_metrics = OrdersMetrics::register(&prometheus::Registry::new()).unwrap();
        let mut door = Self {
            settings,
            db,
            codec,
            client,
            commands,
            topics,
            results,
            dlq,
            inbox: None,
            settlement: None,
            inbox_metrics,
        };
        door.start_inbox();
        door.start_settlement();
        door
    }

    fn inbox_config(&self) -> OrdersConfig {
        let mut config = OrdersConfig::new(&self.settings, self.inbox_metrics.clone());
        config.commands_topic = self.commands.clone();
        config.topics = self.topics.clone();
        config.dlq_topic = self.dlq.clone();
        config.group_id = format!("{}-inbox", self.commands);
        config
    }

    fn start_inbox(&mut self) {
        let config = self.inbox_config();
        self.inbox = Some(Running::spawn(|shutdown| orders::run(config, shutdown)));
    }

    fn start_settlement(&mut self) {
        let group = format!("{}-settle", self.results);
        let config = settlement_config(&self.settings, &self.results, &self.dlq, &group);
        self.settlement = Some(Running::spawn(|shutdown| settlement::run(config, shutdown)));
    }

    /// Stops both processors (checking they stopped cleanly) and deletes the topics.
    async fn close(mut self) {
        if let Some(inbox) = self.inbox.take() {
            stop(inbox, "the inbox consumer").await;
        }
        if let Some(settlement) = self.settlement.take() {
            stop(settlement, "settlement").await;
        }
        let names = [
            &self.commands,
            &self.topics.initiated,
            &self.topics.paid,
            &self.topics.failed,
            &self.results,
            &self.dlq,
        ];
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        testkit::delete_topics(&self.settings, &names).await;
    }

    async fn send(&self, command: &PayOrder) {
        self.client
            .send(&self.commands, command)
            .await
            .unwrap_or_else(|e| panic!("sending {command:?}: {e}"));
    }

    /// Produces the saga's result for an order's payment to the test's results topic.
    async fn result(&self, order_id: &str, wallet_id: Uuid, amount: Amount, status: PaymentResultStatus) {
        let payment_id = PayOrder::payment_id_for(order_id);
        let result = PaymentResult {
            payment_result_id: PaymentResult::id_for(payment_id, status),
            payment_id,
            wallet_id,
            amount,
            status,
            reason: format!("{} in an orders test", status.symbol()),
            decided_at: time::now(),
        };
        let value = self.codec.encode(&result).await.expect("encode the result");
        self.client
            .send_raw(
                &self.results,
                payment_id.to_string().as_bytes(),
                &value,
                &result.payment_result_id.to_string(),
            )
            .await
            .expect("produce the result");
    }

    /// Waits until `done` holds for the inbox's record count.
    async fn await_commands(&self, count: u64) {
        let started = Instant::now();
        while self.inbox_metrics.consumer().records_total() < count {
            assert!(
                started.elapsed() < TIMEOUT,
                "the inbox finished {} of {count} commands in {TIMEOUT:?}",
                self.inbox_metrics.consumer().records_total()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The records on `topic` keyed by `key`, once at least `count` arrived and [`SETTLE`] passed.
    fn read(&self, topic: &str, key: &str, count: usize) -> Vec<Received> {
        let reader = testkit::consumer(&self.settings, topic, "read_committed");
        let keyed = |r: &Received| r.key.as_deref() == Some(key.as_bytes());
        consume_until(&reader, TIMEOUT, SETTLE, |rs| rs.iter().filter(|r| keyed(r)).count() >= count)
            .into_iter()
            .filter(keyed)
            .collect()
    }

    async fn decode<E: Event>(&self, records: &[Received]) -> Vec<E> {
        let mut events = Vec::new();
        for r in records {
            events.push(self.codec.decode::<E>(r.value.as_deref().expect("a value")).await.expect("decodes"));
        }
        events
    }

    /// The one `OrderPaid` of `order_id` (panics on none or more).
    async fn the_paid(&self, order_id: &str) -> OrderPaid {
        let records = self.read(&self.topics.paid, order_id, 1);
        let mut events: Vec<OrderPaid> = self.decode(&records).await;
        assert_eq!(events.len(), 1, "exactly one OrderPaid for {order_id}: {events:?}");
        events.remove(0)
    }

    /// The one `OrderPaymentFailed` of `order_id` (panics on none or more).
    async fn the_failure(&self, order_id: &str) -> OrderPaymentFailed {
        let records = self.read(&self.topics.failed, order_id, 1);
        let mut events: Vec<OrderPaymentFailed> = self.decode(&records).await;
        assert_eq!(events.len(), 1, "exactly one OrderPaymentFailed for {order_id}: {events:?}");
        events.remove(0)
    }

    /// The number of records on `topic` keyed by `key`, read to the end.
    fn count(&self, topic: &str, key: &str) -> usize {
        self.read(topic, key, 0).len()
    }
}

// ---------------------------------------------------------------------------------------
// Wallets, commands and what the database says
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Wallet {
    user_id: Uuid,
    wallet_id: Uuid,
}

fn amount(text: &str) -> Amount {
    text.parse().expect("amount")
}

/// A user with a RUB wallet holding `deposit`.
async fn seed_wallet(db: &PgPool, deposit: &str) -> Wallet {
    let mut tx = db.begin().await.unwrap();
    let (user_id, wallet_id) = seed_user_wallet(&mut tx, TEST_USER, money(deposit), Decimal::ZERO).await;
    tx.commit().await.unwrap();
    Wallet { user_id, wallet_id }
}

/// A command to pay `amount` from `wallet` (named by its user and currency) for a new order.
fn command(wallet: &Wallet, amount: &str) -> PayOrder {
    PayOrder {
        command_id: Uuid::new_v4(),
        order_id: testkit::unique("order"),
        user_id: wallet.user_id,
        wallet_id: None,
        amount: self::amount(amount).into(),
        currency: "RUB".into(),
        description: "an order paid over Kafka".into(),
        ordered_at: time::now(),
    }
}

async fn balance(db: &PgPool, wallet_id: Uuid) -> (Decimal, Decimal) {
    sqlx::query_as("SELECT available, reserved FROM wallets WHERE wallet_id = $1")
        .bind(wallet_id)
        .fetch_one(db)
        .await
        .unwrap()
}

/// The order's inbox row: (outcome, failure_reason, answer).
async fn inbox_row(db: &PgPool, order_id: &str) -> Option<(String, Option<String>, Option<String>)> {
    sqlx::query_as("SELECT outcome, failure_reason, answer FROM order_inbox WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(db)
        .await
        .unwrap()
}

/// Waits for the order's inbox row to have `answer` (`None`: any row).
async fn await_row(
    db: &PgPool,
    order_id: &str,
    answer: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    let started = Instant::now();
    loop {
        if let Some(row) = inbox_row(db, order_id).await {
            if answer.is_none() || row.2.as_deref() == answer {
                return row;
            }
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "order {order_id}: no inbox row answered {answer:?} in {TIMEOUT:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The status of the order's payment row, if one was opened.
async fn payment_status(db: &PgPool, order_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM wallet_transactions WHERE payment_id = $1")
        .bind(PayOrder::payment_id_for(order_id))
        .fetch_optional(db)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_order_paid_through_kafka_is_debited_once_and_answered_once() {
    let door = Door::open().await;
    let wallet = seed_wallet(&door.db, "100.00").await;
    let order = command(&wallet, "30.00");
    door.send(&order).await;

    // The inbox opened the payment on the HTTP door's path: reserved, PENDING, PaymentInitiated
    // through the outbox and Debezium.
    let (outcome, reason, answer) = await_row(&door.db, &order.order_id, None).await;
    assert_eq!((outcome.as_str(), reason, answer), ("RESERVED", None, None));
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("70.00"), money("30.00")));
    assert_eq!(payment_status(&door.db, &order.order_id).await.as_deref(), Some("PENDING"));
    let payment_id = PayOrder::payment_id_for(&order.order_id);
    let initiated = door.read(&door.topics.initiated, &payment_id.to_string(), 1);
    let initiated: Vec<PaymentInitiated> = door.decode(&initiated).await;
    assert_eq!(initiated.len(), 1, "{initiated:?}");
    assert_eq!(
        (initiated[0].wallet_id, initiated[0].amount, initiated[0].kind.as_str(), initiated[0].requested_at),
        (wallet.wallet_id, amount("30.00"), "purchase", order.ordered_at)
    );

    // The saga's result, delivered twice: one settlement, one answer.
    for _ in 0..2 {
        door.result(&order.order_id, wallet.wallet_id, amount("30.00"), PaymentResultStatus::Completed).await;
    }
    await_row(&door.db, &order.order_id, Some("PAID")).await;
    let paid = door.the_paid(&order.order_id).await;
    assert_eq!(
        paid,
        OrderPaid {
            event_id: OrderPaid::id_for(&order.order_id),
            order_id: order.order_id.clone(),
            command_id: order.command_id,
            payment_id,
            wallet_id: wallet.wallet_id,
            amount: amount("30.00"),
            currency: "RUB".into(),
            paid_at: paid.paid_at,
        }
    );
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("70.00"), money("0.00")));
    assert_eq!(payment_status(&door.db, &order.order_id).await.as_deref(), Some("COMPLETED"));
    assert_eq!(door.count(&door.topics.failed, &order.order_id), 0, "a paid order has no failure");
    assert_money_conserved(&door.db, wallet.wallet_id).await;
    door.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_command_five_times_and_another_for_the_order_debit_once_and_answer_once() {
    let door = Door::open().await;
    let wallet = seed_wallet(&door.db, "100.00").await;
    let order = command(&wallet, "25.00");
    for _ in 0..5 {
        door.send(&order).await;
    }
    // A second command for the same order, asking for more: the order is already commanded.
    let second = PayOrder { command_id: Uuid::new_v4(), amount: amount("40.00").into(), ..order.clone() };
    door.send(&second).await;
    door.await_commands(6).await;
    assert_eq!(door.inbox_metrics.commands_total("reserved"), 1);
    assert_eq!(door.inbox_metrics.commands_total("duplicate"), 5);
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("75.00"), money("25.00")));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_transactions WHERE wallet_id = $1")
        .bind(wallet.wallet_id)
        .fetch_one(&door.db)
        .await
        .unwrap();
    assert_eq!(rows, 1, "one payment opened");

    door.result(&order.order_id, wallet.wallet_id, amount("25.00"), PaymentResultStatus::Completed).await;
    let paid = door.the_paid(&order.order_id).await;
    assert_eq!(
        (paid.command_id, paid.amount),
        (order.command_id, amount("25.00")),
        "the first command's answer"
    );
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("75.00"), money("0.00")));
    // Sending it again after the answer changes nothing either.
    door.send(&order).await;
    door.await_commands(7).await;
    assert_eq!(door.count(&door.topics.paid, &order.order_id), 1);
    assert_eq!(door.count(&door.topics.failed, &order.order_id), 0);
    assert_money_conserved(&door.db, wallet.wallet_id).await;
    door.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn insufficient_funds_is_answered_at_once_and_reserves_nothing() {
    let door = Door::open().await;
    let wallet = seed_wallet(&door.db, "10.00").await;
    let order = command(&wallet, "50.00");
    door.send(&order).await;
    let failure = door.the_failure(&order.order_id).await;
    assert_eq!(
        (failure.reason, failure.amount, failure.command_id, failure.event_id),
        (
            OrderFailureReason::InsufficientFunds,
            Some(amount("50.00")),
            order.command_id,
            OrderPaymentFailed::id_for(&order.order_id)
        )
    );
    let (outcome, reason, answer) = await_row(&door.db, &order.order_id, Some("FAILED")).await;
    assert_eq!((outcome.as_str(), reason.as_deref()), ("REFUSED", Some("INSUFFICIENT_FUNDS")));
    assert_eq!(answer.as_deref(), Some("FAILED"));
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("10.00"), money("0.00")));
    assert_eq!(payment_status(&door.db, &order.order_id).await, None, "no payment opened");
    assert_eq!(door.count(&door.topics.initiated, &PayOrder::payment_id_for(&order.order_id).to_string()), 0);
    assert_money_conserved(&door.db, wallet.wallet_id).await;
    door.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_or_timed_out_payment_answers_failed_once_and_releases_the_reservation() {
    let door = Door::open().await;
    let wallet = seed_wallet(&door.db, "100.00").await;
    let failed = command(&wallet, "20.00");
    let timed_out = command(&wallet, "30.00");
    door.send(&failed).await;
    door.send(&timed_out).await;
    await_row(&door.db, &failed.order_id, None).await;
    await_row(&door.db, &timed_out.order_id, None).await;
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("50.00"), money("50.00")));

    for status in [PaymentResultStatus::Failed, PaymentResultStatus::Failed] {
        door.result(&failed.order_id, wallet.wallet_id, amount("20.00"), status).await;
    }
    door.result(&timed_out.order_id, wallet.wallet_id, amount("30.00"), PaymentResultStatus::FailedTimeout)
        .await;
    let answers = [
        (&failed, OrderFailureReason::PaymentFailed, "20.00"),
        (&timed_out, OrderFailureReason::PaymentTimedOut, "30.00"),
    ];
    for (order, reason, paid) in answers {
        let failure = door.the_failure(&order.order_id).await;
        assert_eq!((failure.reason, failure.amount), (reason, Some(amount(paid))), "{failure:?}");
        assert_eq!(payment_status(&door.db, &order.order_id).await.as_deref(), Some("CANCELLED"));
        assert_eq!(door.count(&door.topics.paid, &order.order_id), 0);
    }
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("100.00"), money("0.00")));
    assert_money_conserved(&door.db, wallet.wallet_id).await;
    door.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_commands_are_dead_lettered_or_answered_and_the_inbox_goes_on() {
    let door = Door::open().await;
    let wallet = seed_wallet(&door.db, "100.00").await;
    let other = seed_wallet(&door.db, "100.00").await;

    // Not a command at all: garbage bytes, and a frame naming a schema id nobody registered.
    door.client.send_raw(&door.commands, b"garbage", b"not avro at all", "garbage").await.unwrap();
    door.client
        .send_raw(&door.commands, b"unknown", b"\x00\x7f\xff\xff\xf0\x02\x04", "unknown")
        .await
        .unwrap();
    // A command without an order id: nothing to answer to.
    let no_order = PayOrder { order_id: String::new(), ..command(&wallet, "1.00") };
    door.send(&no_order).await;
    // Commands that can never succeed, each answered.
    let unknown_wallet = PayOrder { wallet_id: Some(Uuid::new_v4()), ..command(&wallet, "1.00") };
    let someone_elses = PayOrder { wallet_id: Some(other.wallet_id), ..command(&wallet, "1.00") };
    let wrong_currency =
        PayOrder { wallet_id: Some(wallet.wallet_id), currency: "USD".into(), ..command(&wallet, "1.00") };
    let no_such_currency_wallet = PayOrder { currency: "USD".into(), ..command(&wallet, "1.00") };
    let zero = PayOrder { amount: CommandAmount::from_avro_bytes(vec![0x00]), ..command(&wallet, "1.00") };
    let negative =
        PayOrder { amount: CommandAmount::from_avro_bytes(vec![0xFF]), ..command(&wallet, "1.00") };
    let refused = [
        (&unknown_wallet, OrderFailureReason::UnknownWallet),
        (&someone_elses, OrderFailureReason::WalletNotOwned),
        (&wrong_currency, OrderFailureReason::CurrencyMismatch),
        (&no_such_currency_wallet, OrderFailureReason::UnknownWallet),
        (&zero, OrderFailureReason::InvalidAmount),
        (&negative, OrderFailureReason::InvalidAmount),
    ];
    for (order, _) in &refused {
        door.send(order).await;
    }
    // And after all of them, a good one.
    let good = command(&wallet, "5.00");
    door.send(&good).await;

    let (outcome, _, _) = await_row(&door.db, &good.order_id, None).await;
    assert_eq!(outcome, "RESERVED", "the inbox went on past the poison");
    for (order, reason) in refused {
        let failure = door.the_failure(&order.order_id).await;
        assert_eq!(failure.reason, reason, "{failure:?}");
        assert_eq!(payment_status(&door.db, &order.order_id).await, None, "{reason:?}: no payment opened");
    }
    let reader = testkit::consumer(&door.settings, &door.dlq, "read_committed");
    let letters = consume_until(&reader, TIMEOUT, SETTLE, |r| r.len() >= 3);
    let mut reasons: Vec<&str> = letters
        .iter()
        .map(|r| std::str::from_utf8(r.header("dlq.reason").expect("a reason")).unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["no-order-id", "unknown-schema-id", "wrong-magic-byte"], "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter.header("dlq.processor"), Some(&b"orders"[..]));
        assert_eq!(letter.header("dlq.source.topic"), Some(door.commands.as_bytes()));
    }
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("95.00"), money("5.00")));
    assert_eq!(balance(&door.db, other.wallet_id).await, (money("100.00"), money("0.00")));
    assert_money_conserved(&door.db, wallet.wallet_id).await;
    assert_money_conserved(&door.db, other.wallet_id).await;
    door.close().await;
}

// ---------------------------------------------------------------------------------------
// kill -9 of the inbox consumer mid-stream.

const CHILD_BASE: &str = "ORDERS_CHILD_TOPIC_BASE";

/// Not a test of its own: the inbox process the kill test starts and kills (`--ignored --exact`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by the_inbox_killed_mid_stream_debits_no_order_twice_and_loses_none"]
async fn child_inbox_process() {
    let base = std::env::var(CHILD_BASE).unwrap_or_else(|_| panic!("{CHILD_BASE} is set by the parent test"));
    let settings = StackSettings::from_env();
    let (commands, topics, _, dlq) = topic_names(&base);
    let mut config =
        OrdersConfig::new(&settings, OrdersMetrics::register(&prometheus::Registry::new()).unwrap());
    config.group_id = format!("{commands}-inbox");
    config.commands_topic = commands;
    config.topics = topics;
    config.dlq_topic = dlq;
    // Killed, never stopped: nothing requests its stop token.
    orders::run(config, paystream_topology::ShutdownHandle::new()).await.unwrap();
}

/// Orders the kill test sends.
const KILL_ORDERS: usize = 60;
/// The pause between two of its commands, so that the kill lands while they stream in.
const KILL_SEND_INTERVAL: Duration = Duration::from_millis(25);

#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_killed_mid_stream_debits_no_order_twice_and_loses_none() {
    let mut door = Door::open().await;
    // This test's inbox is the child process; settlement is not needed.
    stop(door.inbox.take().expect("started"), "the in-process inbox").await;
    let base = door.commands.trim_end_matches(".pay-order").to_owned();
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_inbox_process", "--test-threads=1"])
            .env(CHILD_BASE, &base)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting the inbox process")
    };
    // Enough for every order (1.01 + 2.01 + … + 60.01 = 1830.60).
    let wallet = seed_wallet(&door.db, "2000.00").await;
    let orders: Vec<PayOrder> =
        (0..KILL_ORDERS).map(|i| command(&wallet, &format!("{}.01", i + 1))).collect();
    let answered = |db: PgPool, ids: Vec<String>| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM order_inbox WHERE order_id = ANY($1)")
            .bind(ids)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();

    let mut child = spawn();
    let mut killed = false;
    for (i, order) in orders.iter().enumerate() {
        door.send(order).await;
        // Each command goes out twice, as an at-least-once orders service may send it.
        door.send(order).await;
        if !killed {
            let recorded = answered(door.db.clone(), ids.clone()).await;
            if recorded > 0 && (recorded as usize) < i + 1 {
                child.kill().expect("kill -9");
                child.wait().unwrap();
                killed = true;
                child = spawn();
            }
        }
        tokio::time::sleep(KILL_SEND_INTERVAL).await;
    }
    // Commands sent before the inbox started to record nothing yet: kill it while it catches up.
    let started = Instant::now();
    while !killed {
        let recorded = answered(door.db.clone(), ids.clone()).await;
        if recorded > 0 && (recorded as usize) < KILL_ORDERS {
            child.kill().expect("kill -9");
            child.wait().unwrap();
            killed = true;
            child = spawn();
        }
        assert!(started.elapsed() < TIMEOUT, "never caught the inbox mid-stream ({recorded} recorded)");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    loop {
        let recorded = answered(door.db.clone(), ids.clone()).await;
        if recorded as usize == KILL_ORDERS {
            break;
        }
        assert!(started.elapsed() < TIMEOUT, "{recorded} of {KILL_ORDERS} orders recorded after the kill");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Every order opened exactly one payment, reserved once, with one PaymentInitiated.
    let per_payment: BTreeMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT payment_id, count(*) FROM wallet_transactions WHERE wallet_id = $1 GROUP BY payment_id",
    )
    .bind(wallet.wallet_id)
    .fetch_all(&door.db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(per_payment.len(), KILL_ORDERS, "one payment per order");
    let expected: Decimal = orders.iter().map(|o| o.amount.amount().unwrap().to_decimal()).sum();
    let (available, reserved) = balance(&door.db, wallet.wallet_id).await;
    assert_eq!(reserved, expected, "each order reserved once");
    assert_eq!(available, money("2000.00") - expected);
    for order in &orders {
        assert_eq!(
            per_payment.get(&PayOrder::payment_id_for(&order.order_id)),
            Some(&1),
            "{}",
            order.order_id
        );
    }
    let reader = testkit::consumer(&door.settings, &door.topics.initiated, "read_committed");
    let events = consume_until(&reader, TIMEOUT, SETTLE, |r| {
        r.iter().filter_map(|r| r.key.clone()).collect::<std::collections::BTreeSet<_>>().len() >= KILL_ORDERS
    });
    // Debezium delivers at least once: a copy carries the same event id.
    let mut event_ids: BTreeMap<Vec<u8>, std::collections::BTreeSet<Vec<u8>>> = BTreeMap::new();
    for event in &events {
        let id = event.header("id").expect("the event id header").to_vec();
        event_ids.entry(event.key.clone().expect("a key")).or_default().insert(id);
    }
    assert_eq!(event_ids.len(), KILL_ORDERS);
    assert!(event_ids.values().all(|ids| ids.len() == 1), "one PaymentInitiated per order: {event_ids:?}");
    assert_money_conserved(&door.db, wallet.wallet_id).await;
    door.close().await;
}

// ---------------------------------------------------------------------------------------
// The wallet database away: retried, never dead-lettered.

/// How long the wallet database stays away from the inbox.
const DB_OUTAGE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread")]
async fn commands_met_by_a_database_outage_are_retried_not_dead_lettered() {
    let mut door = Door::open().await;
    stop(door.inbox.take().expect("started"), "the in-process inbox").await;
    // The inbox reaches the wallet database through a proxy the test switches off.
    let upstream = "127.0.0.1:5432";
    assert!(door.settings.wallet_db_url.contains(upstream), "the stack's database is at {upstream}");
    let proxy = paystream_stack::fault_proxy::FaultProxy::start(upstream).expect("fault proxy");
    let mut config = door.inbox_config();
    config.wallet_db_url = door.settings.wallet_db_url.replace(upstream, &proxy.addr().to_string());
    let metrics = config.metrics.clone();
    let inbox = Running::spawn(|shutdown| orders::run(config, shutdown));

    let wallet = seed_wallet(&door.db, "100.00").await;
    let first = command(&wallet, "10.00");
    door.send(&first).await;
    await_row(&door.db, &first.order_id, None).await;

    proxy.set_up(false);
    let during: Vec<PayOrder> = (0..3).map(|_| command(&wallet, "10.00")).collect();
    for order in &during {
        door.send(order).await;
    }
    let started = Instant::now();
    while metrics.consumer().retries_total("record") == 0 {
        assert!(started.elapsed() < TIMEOUT, "the inbox never met the outage");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    tokio::time::sleep(DB_OUTAGE).await;
    proxy.set_up(true);

    for order in &during {
        let (outcome, _, _) = await_row(&door.db, &order.order_id, None).await;
        assert_eq!(outcome, "RESERVED", "{}", order.order_id);
    }
    assert_eq!(metrics.commands_total("reserved"), 4);
    assert_eq!(balance(&door.db, wallet.wallet_id).await, (money("60.00"), money("40.00")));
    let dlq = testkit::consumer(&door.settings, &door.dlq, "read_committed");
    let letters = consume_until(&dlq, Duration::from_secs(5), SETTLE, |_| true);
    assert!(letters.is_empty(), "nothing is dead-lettered for an outage: {letters:#?}");
    stop(inbox, "the inbox behind the proxy").await;
    assert_money_conserved(&door.db, wallet.wallet_id).await;
    door.close().await;
}
