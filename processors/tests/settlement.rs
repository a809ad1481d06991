//! Settlement against the real stack: Kafka, the Schema Registry and the wallet database.
//!
//! Every test makes its own results topic, DLQ topic and consumer group, and seeds its own
//! users, wallets, deposits and payments with fresh UUIDs, so tests run in parallel and
//! twice in a row. Results are produced as the saga will write them: Avro in the Confluent
//! wire format, keyed by paymentId. Each payment is pinned to a partition so the tests
//! control per-partition order.
//!
//! Waits are bounded and poll a condition (the consumer's counters, the database); after
//! each test every wallet is checked for conservation of money:
//! `available + reserved = deposits − completed payments`, and `reserved` is the sum of
//! the pending payments.

mod common;

use std::time::{Duration, Instant};

use common::settlement::{assert_money_conserved, money, seed_user_wallet, settlement_config};
use paystream_processors::consumer::ConsumerError;
use paystream_processors::dlq;
use paystream_processors::retry::RetryPolicy;
use paystream_processors::settlement::{
    self, ApplyError, SettlementConfig, SettlementError, SettlementMetrics,
};
use paystream_schemas::events::{PaymentResult, PaymentResultStatus};
use paystream_schemas::{time, Amount, EventCodec};
use paystream_stack::testkit::{self, Received};
use paystream_stack::{kafka, StackSettings};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use PaymentResultStatus::{Completed, Failed, FailedTimeout};

/// Budget for settlement to reach an expected state.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the DLQ reader keeps reading after it has what it expects, to catch extras.
const DLQ_SETTLE: Duration = Duration::from_secs(1);
/// Partitions of every results topic in these tests.
const PARTITIONS: i32 = 3;
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// The stack and the test's own topics
// ---------------------------------------------------------------------------------------

struct Stack {
    settings: StackSettings,
    db: PgPool,
    codec: EventCodec,
    producer: FutureProducer,
}

/// Kafka, the registry and the wallet database, once each answers (panics naming the
/// missing one and `dev/up` otherwise).
async fn stack() -> Stack {
    let (settings, db) = common::settlement::stack().await;
    let codec = EventCodec::new(&settings.schema_registry_url).expect("codec");
    let producer = kafka::idempotent_producer(&settings.kafka_bootstrap).create().expect("producer");
    Stack { settings, db, codec, producer }
}

/// A results topic, a DLQ topic and a group id no other test uses.
struct Topics {
    results: String,
    dlq: String,
}

impl Topics {
    async fn create(stack: &Stack) -> Self {
        let topics = Self { results: testkit::unique("it.results"), dlq: testkit::unique("it.dlq") };
        testkit::create_topic(&stack.settings, &topics.results, PARTITIONS).await;
        testkit::create_topic(&stack.settings, &topics.dlq, PARTITIONS).await;
        topics
    }

    async fn delete(self, stack: &Stack) {
        testkit::delete_topics(&stack.settings, &[&self.results, &self.dlq]).await;
    }
}

// ---------------------------------------------------------------------------------------
// Wallets and payments, seeded as the wallet service would leave them
// ---------------------------------------------------------------------------------------

/// A payment accepted by the wallet service: its amount is reserved, its row PENDING.
#[derive(Clone, Debug)]
struct Payment {
    payment_id: Uuid,
    wallet_id: Uuid,
    amount: Amount,
    /// The results partition its records go to.
    partition: i32,
}

impl Payment {
    fn result(&self, status: PaymentResultStatus) -> PaymentResult {
        PaymentResult {
            payment_result_id: PaymentResult::id_for(self.payment_id, status),
            payment_id: self.payment_id,
            wallet_id: self.wallet_id,
            amount: self.amount,
            status,
            reason: format!("{} in a test", status.symbol()),
            decided_at: time::now(),
        }
    }
}

/// A user with one wallet holding `deposit`, and one pending payment per amount in
/// `payments` (reserved out of the deposit), payment i on partition i % PARTITIONS.
async fn seed_wallet(db: &PgPool, deposit: &str, payments: &[&str]) -> (Uuid, Vec<Payment>) {
    let amounts: Vec<Amount> = payments.iter().map(|a| a.parse().expect("amount")).collect();
    let reserved: Decimal = amounts.iter().map(|a| a.to_decimal()).sum();
    assert!(money(deposit) >= reserved, "the test reserves more than it deposits");

    let mut tx = db.begin().await.unwrap();
    let (_, wallet_id) = seed_user_wallet(&mut tx, "settlement test", money(deposit), reserved).await;
    let mut seeded = Vec::new();
    for (i, amount) in amounts.into_iter().enumerate() {
        let payment = Payment {
            payment_id: Uuid::new_v4(),
            wallet_id,
            amount,
            partition: i32::try_from(i).unwrap() % PARTITIONS,
        };
        sqlx::query(
            "INSERT INTO wallet_transactions (payment_id, wallet_id, amount, kind, description, requested_at, accepted_at)
             VALUES ($1, $2, $3, 'test', 'settlement test', now(), now())",
        )
        .bind(payment.payment_id)
        .bind(wallet_id)
        .bind(amount.to_decimal())
        .execute(&mut *tx)
        .await
        .unwrap();
        seeded.push(payment);
    }
    tx.commit().await.unwrap();
    (wallet_id, seeded)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct WalletState {
    available: Decimal,
    reserved: Decimal,
    version: i64,
    /// `updated_at` in microseconds since the epoch: any write moves it.
    updated_at_micros: i64,
}

async fn wallet(db: &PgPool, wallet_id: Uuid) -> WalletState {
    let (available, reserved, version, updated_at_micros): (Decimal, Decimal, i64, i64) = sqlx::query_as(
        "SELECT available, reserved, version, (extract(epoch FROM updated_at) * 1000000)::bigint
           FROM wallets WHERE wallet_id = $1",
    )
    .bind(wallet_id)
    .fetch_one(db)
    .await
    .unwrap();
    WalletState { available, reserved, version, updated_at_micros }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PaymentState {
    status: String,
    payment_result_id: Option<Uuid>,
    result_status: Option<String>,
    result_reason: Option<String>,
    settled_at_micros: Option<i64>,
}

async fn payment(db: &PgPool, payment_id: Uuid) -> PaymentState {
    let (status, payment_result_id, result_status, result_reason, settled_at_micros) = sqlx::query_as(
        "SELECT status, payment_result_id, result_status, result_reason,
                (extract(epoch FROM settled_at) * 1000000)::bigint
           FROM wallet_transactions WHERE payment_id = $1",
    )
    .bind(payment_id)
    .fetch_one(db)
    .await
    .unwrap();
    PaymentState { status, payment_result_id, result_status, result_reason, settled_at_micros }
}

/// Asserts `payment` was settled by `status`'s result.
async fn assert_settled(db: &PgPool, payment: &Payment, status: PaymentResultStatus) {
    let state = self::payment(db, payment.payment_id).await;
    let expected_row_status = if status == Completed { "COMPLETED" } else { "CANCELLED" };
    assert_eq!(state.status, expected_row_status, "{payment:?}: {state:?}");
    assert_eq!(state.payment_result_id, Some(PaymentResult::id_for(payment.payment_id, status)), "{state:?}");
    assert_eq!(state.result_status.as_deref(), Some(status.symbol()), "{state:?}");
    assert_eq!(state.result_reason, Some(format!("{} in a test", status.symbol())), "{state:?}");
    assert!(state.settled_at_micros.is_some(), "{state:?}");
}

async fn assert_pending(db: &PgPool, payment: &Payment) {
    let state = self::payment(db, payment.payment_id).await;
    assert_eq!(
        state,
        PaymentState {
            status: "PENDING".into(),
            payment_result_id: None,
            result_status: None,
            result_reason: None,
            settled_at_micros: None
        }
    );
}

// ---------------------------------------------------------------------------------------
// Producing results
// ---------------------------------------------------------------------------------------

/// Where a record landed, and its bytes.
#[derive(Clone, Debug)]
struct Produced {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

async fn produce_raw(
    stack: &Stack,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Produced {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).partition(partition);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    let delivery = stack
        .producer
        .send(record, Timeout::After(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    assert_eq!(delivery.partition, partition);
    Produced {
        partition,
        offset: delivery.offset,
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
    }
}

/// Produces `result`, encoded through the registry, keyed by its paymentId, to `partition`.
async fn produce(stack: &Stack, topic: &str, partition: i32, result: &PaymentResult) -> Produced {
    let value = stack.codec.encode(result).await.expect("encode");
    produce_raw(stack, topic, partition, Some(result.payment_id.to_string().as_bytes()), Some(&value)).await
}

/// Produces `result` as [`produce`] does, with a `traceparent` header as the saga writes it.
async fn produce_traced(
    stack: &Stack,
    topic: &str,
    partition: i32,
    result: &PaymentResult,
    traceparent: &str,
) -> Produced {
    let value = stack.codec.encode(result).await.expect("encode");
    let key = result.payment_id.to_string();
    let record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .key(key.as_bytes())
        .payload(&value)
        .headers(OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(traceparent) }));
    let delivery = stack
        .producer
        .send(record, Timeout::After(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    Produced { partition, offset: delivery.offset, key: Some(key.into_bytes()), value: Some(value) }
}

// ---------------------------------------------------------------------------------------
// Running settlement
// ---------------------------------------------------------------------------------------

/// Settlement in a task, and its counters.
struct Running {
    metrics: SettlementMetrics,
    process: common::settlement::Running<SettlementError>,
}

fn config(stack: &Stack, topics: &Topics, group: &str) -> SettlementConfig {
    settlement_config(&stack.settings, &topics.results, &topics.dlq, group)
}

fn start(config: SettlementConfig) -> Running {
    let metrics = config.metrics.clone();
    Running {
        metrics,
        process: common::settlement::Running::spawn(|shutdown| settlement::run(config, shutdown)),
    }
}

impl Running {
    /// Requests shutdown and waits (bounded) for `run` to return.
    async fn stop(self) -> Result<(), SettlementError> {
        self.process.stop().await
    }

    /// Waits (bounded) for `run` to return on its own.
    async fn join(self) -> Result<(), SettlementError> {
        common::settlement::Running::join(self.process.task).await
    }

    /// Waits until `count` records were processed (the counter moves after each record's
    /// database commit or DLQ acknowledgement), and asserts no more than that were.
    async fn wait_for_records(&mut self, count: u64) {
        let metrics = self.metrics.clone();
        let what = format!("{count} records processed");
        self.process.wait_until(&what, SETTLE_TIMEOUT, || metrics.records_total() >= count).await;
        assert_eq!(self.metrics.records_total(), count, "more records than produced were processed");
    }
}

/// Reads the DLQ until `count` letters arrived (and `DLQ_SETTLE` more, to catch extras).
async fn dead_letters(stack: &Stack, topics: &Topics, count: usize) -> Vec<Received> {
    let reader = testkit::consumer(&stack.settings, &topics.dlq, "read_committed");
    tokio::task::spawn_blocking(move || {
        testkit::consume_until(&reader, SETTLE_TIMEOUT, DLQ_SETTLE, |r| r.len() >= count)
    })
    .await
    .unwrap()
}

fn header<'a>(letter: &'a Received, name: &str) -> &'a str {
    std::str::from_utf8(letter.header(name).unwrap_or_else(|| panic!("no header {name}: {letter:?}")))
        .expect("utf-8 header")
}

/// Asserts `letter` is `original`, read from `topics.results`, dead-lettered for `reason`.
fn assert_dead_letter(letter: &Received, topics: &Topics, original: &Produced, reason: &str) {
    assert_eq!(header(letter, dlq::HEADER_REASON), reason);
    assert!(!header(letter, dlq::HEADER_DETAIL).is_empty());
    assert_eq!(header(letter, dlq::HEADER_SOURCE_TOPIC), topics.results);
    assert_eq!(header(letter, dlq::HEADER_SOURCE_PARTITION), original.partition.to_string());
    assert_eq!(header(letter, dlq::HEADER_SOURCE_OFFSET), original.offset.to_string());
    assert_eq!(header(letter, dlq::HEADER_PROCESSOR), "settlement");
    assert_eq!(letter.key, original.key, "the key must be the original's");
    assert_eq!(letter.value, original.value, "the value must be the original bytes");
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// COMPLETED consumes the reservation; FAILED and FAILED_TIMEOUT return it to
/// `available`; each settles its row with the result's id, status and reason, in one
/// transaction that also bumps the wallet's version. A payment without a result stays
/// pending.
#[tokio::test(flavor = "multi_thread")]
async fn results_settle_payments_with_the_right_money_movements() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let (wallet_id, payments) = seed_wallet(&stack.db, "100.00", &["10.00", "20.00", "30.00", "5.00"]).await;
    let before = wallet(&stack.db, wallet_id).await;
    assert_eq!((before.available, before.reserved), (money("35.00"), money("65.00")));

    for (p, status) in payments.iter().zip([Completed, Failed, FailedTimeout]) {
        produce(&stack, &topics.results, p.partition, &p.result(status)).await;
    }
    let mut running = start(config(&stack, &topics, &testkit::unique("it-settle")));
    running.wait_for_records(3).await;

    let after = wallet(&stack.db, wallet_id).await;
    assert_eq!(after.available, money("85.00"), "35.00 + 20.00 (FAILED) + 30.00 (FAILED_TIMEOUT) returned");
    assert_eq!(after.reserved, money("5.00"), "only the pending payment stays reserved");
    assert_eq!(after.version, before.version + 3, "one version per applied result");
    assert_settled(&stack.db, &payments[0], Completed).await;
    assert_settled(&stack.db, &payments[1], Failed).await;
    assert_settled(&stack.db, &payments[2], FailedTimeout).await;
    assert_pending(&stack.db, &payments[3]).await;
    for status in [Completed, Failed, FailedTimeout] {
        assert_eq!(running.metrics.applied_total(status), 1, "{status:?}");
    }
    assert_eq!(running.metrics.duplicates_total(), 0);
    assert_money_conserved(&stack.db, wallet_id).await;

    running.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}

/// Each result delivered two or three times, interleaved with other payments' results,
/// and one copy on another partition than its payment's: each payment is settled once,
/// every other copy is counted as a duplicate and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn redelivered_and_reordered_results_are_applied_once() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let (wallet_id, payments) =
        seed_wallet(&stack.db, "1000.00", &["100.00", "200.00", "300.00", "50.00"]).await;
    let [a, b, c, d] = [&payments[0], &payments[1], &payments[2], &payments[3]];
    let (ra, rb, rc, rd) =
        (a.result(Completed), b.result(Failed), c.result(FailedTimeout), d.result(Completed));

    let other_partition = (b.partition + 1) % PARTITIONS;
    let plan = [
        (b.partition, &rb),
        (a.partition, &ra),
        (b.partition, &rb),
        (c.partition, &rc),
        (a.partition, &ra),
        (d.partition, &rd),
        (c.partition, &rc),
        (other_partition, &rb),
        (a.partition, &ra),
        (d.partition, &rd),
    ];
    for (partition, result) in plan {
        produce(&stack, &topics.results, partition, result).await;
    }
    let mut running = start(config(&stack, &topics, &testkit::unique("it-settle")));
    running.wait_for_records(plan.len() as u64).await;

    assert_eq!(running.metrics.applied_total(Completed), 2);
    assert_eq!(running.metrics.applied_total(Failed), 1);
    assert_eq!(running.metrics.applied_total(FailedTimeout), 1);
    assert_eq!(running.metrics.duplicates_total(), 6);
    let after = wallet(&stack.db, wallet_id).await;
    assert_eq!(after.available, money("850.00"), "350.00 + 200.00 + 300.00 returned, once each");
    assert_eq!(after.reserved, Decimal::ZERO);
    assert_eq!(after.version, 4, "four results applied, nothing else");
    assert_settled(&stack.db, a, Completed).await;
    assert_settled(&stack.db, b, Failed).await;
    assert_settled(&stack.db, c, FailedTimeout).await;
    assert_settled(&stack.db, d, Completed).await;
    assert_money_conserved(&stack.db, wallet_id).await;

    running.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}

/// Records settlement must not apply go to the DLQ as they arrived, with the reason and
/// their source in headers, and the records after them on the same partitions are still
/// applied: an unknown payment, a wrong amount, a wrong wallet, a second result for a
/// settled payment, an UNKNOWN status, bytes that are not Avro, and a record without value.
#[tokio::test(flavor = "multi_thread")]
async fn poison_records_are_dead_lettered_with_their_reason_and_processing_continues() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let (wallet_id, p) =
        seed_wallet(&stack.db, "500.00", &["10.00", "20.00", "30.00", "40.00", "50.00", "60.00"]).await;
    let results = &topics.results;

    let stranger = Payment { payment_id: Uuid::new_v4(), ..p[0].clone() };
    let unknown_payment = produce(&stack, results, p[0].partition, &stranger.result(Completed)).await;
    let wrong_amount = PaymentResult { amount: "21.00".parse().unwrap(), ..p[1].result(Failed) };
    let amount_mismatch = produce(&stack, results, p[1].partition, &wrong_amount).await;
    let wrong_wallet = PaymentResult { wallet_id: Uuid::new_v4(), ..p[2].result(Completed) };
    let wallet_mismatch = produce(&stack, results, p[2].partition, &wrong_wallet).await;
    produce(&stack, results, p[3].partition, &p[3].result(Completed)).await;
    let conflicting = produce(&stack, results, p[3].partition, &p[3].result(FailedTimeout)).await;
    let key4 = p[4].payment_id.to_string();
    let garbage =
        produce_raw(&stack, results, p[4].partition, Some(key4.as_bytes()), Some(b"{\"not\": \"avro\"}"))
            .await;
    let unknown_status =
        produce(&stack, results, p[5].partition, &p[5].result(PaymentResultStatus::Unknown)).await;
    let key0 = p[0].payment_id.to_string();
    let tombstone = produce_raw(&stack, results, p[0].partition, Some(key0.as_bytes()), None).await;
    // The valid results come after the poison on every partition.
    for (payment, status) in
        [(&p[0], Completed), (&p[1], Failed), (&p[2], Completed), (&p[4], Failed), (&p[5], Completed)]
    {
        produce(&stack, results, payment.partition, &payment.result(status)).await;
    }

    let mut running = start(config(&stack, &topics, &testkit::unique("it-settle")));
    running.wait_for_records(13).await;

    let expected = [
        (&unknown_payment, "unknown-payment"),
        (&amount_mismatch, "amount-mismatch"),
        (&wallet_mismatch, "wallet-mismatch"),
        (&conflicting, "conflicting-result"),
        (&garbage, "wrong-magic-byte"),
        (&unknown_status, "unknown-status"),
        (&tombstone, "empty"),
    ];
    let letters = dead_letters(&stack, &topics, expected.len()).await;
    assert_eq!(letters.len(), expected.len(), "exactly one letter per poison record: {letters:#?}");
    for (original, reason) in expected {
        let letter = letters
            .iter()
            .find(|l| l.header(dlq::HEADER_REASON) == Some(reason.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}: {letters:#?}"));
        assert_dead_letter(letter, &topics, original, reason);
        assert_eq!(running.metrics.dead_lettered_total(reason), 1, "{reason}");
    }

    // Everything valid was applied, the conflicting result did not overwrite the first.
    assert_settled(&stack.db, &p[0], Completed).await;
    assert_settled(&stack.db, &p[1], Failed).await;
    assert_settled(&stack.db, &p[2], Completed).await;
    assert_settled(&stack.db, &p[3], Completed).await;
    assert_settled(&stack.db, &p[4], Failed).await;
    assert_settled(&stack.db, &p[5], Completed).await;
    let after = wallet(&stack.db, wallet_id).await;
    assert_eq!(after.available, money("360.00"), "290.00 + 20.00 + 50.00 returned");
    assert_eq!(after.reserved, Decimal::ZERO);
    assert_money_conserved(&stack.db, wallet_id).await;

    running.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}

/// A consumer in a new group reads the whole topic again, as after a lost offsets topic
/// or a deliberate replay: every result is a duplicate, and the wallet (balances,
/// version, updated_at) and the payments are left exactly as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_replay_by_a_new_group_changes_nothing() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let (wallet_id, p) =
        seed_wallet(&stack.db, "300.00", &["11.11", "22.22", "33.33", "44.44", "55.55"]).await;
    let statuses = [Completed, Failed, FailedTimeout, Completed, Failed];
    for (payment, status) in p.iter().zip(statuses) {
        produce(&stack, &topics.results, payment.partition, &payment.result(status)).await;
    }
    // And one redelivery already in the first pass.
    produce(&stack, &topics.results, p[0].partition, &p[0].result(Completed)).await;

    let mut first = start(config(&stack, &topics, &testkit::unique("it-settle")));
    first.wait_for_records(6).await;
    first.stop().await.expect("a clean stop");
    let wallet_before = wallet(&stack.db, wallet_id).await;
    let mut payments_before = Vec::new();
    for payment in &p {
        payments_before.push(self::payment(&stack.db, payment.payment_id).await);
    }
    assert_money_conserved(&stack.db, wallet_id).await;

    let mut replay = start(config(&stack, &topics, &testkit::unique("it-settle-replay")));
    replay.wait_for_records(6).await;
    assert_eq!(replay.metrics.duplicates_total(), 6, "every record of the replay is a duplicate");
    for status in [Completed, Failed, FailedTimeout] {
        assert_eq!(replay.metrics.applied_total(status), 0, "{status:?}");
    }
    assert_eq!(wallet(&stack.db, wallet_id).await, wallet_before, "the replay wrote to the wallet");
    for (payment, before) in p.iter().zip(&payments_before) {
        assert_eq!(&self::payment(&stack.db, payment.payment_id).await, before);
    }
    assert_money_conserved(&stack.db, wallet_id).await;

    replay.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}

/// Stopping commits the offsets of the finished records; a restart in the same group
/// resumes after them. Every partition holds first-run records before second-run ones,
/// so a restart that re-read anything would count duplicates before the new results.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_same_group_resumes_after_the_committed_offsets() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let amounts =
        ["1.00", "2.00", "3.00", "4.00", "5.00", "6.00", "7.00", "8.00", "9.00", "10.00", "11.00", "12.00"];
    let (wallet_id, p) = seed_wallet(&stack.db, "100.00", &amounts).await;
    let group = testkit::unique("it-settle");
    let status_of = |i: usize| [Completed, Failed, FailedTimeout][i % 3];

    for (i, payment) in p[..6].iter().enumerate() {
        produce(&stack, &topics.results, payment.partition, &payment.result(status_of(i))).await;
    }
    let mut first = start(config(&stack, &topics, &group));
    first.wait_for_records(6).await;
    first.stop().await.expect("a clean stop");

    for (i, payment) in p.iter().enumerate().skip(6) {
        produce(&stack, &topics.results, payment.partition, &payment.result(status_of(i))).await;
    }
    let mut second = start(config(&stack, &topics, &group));
    second.wait_for_records(6).await;
    assert_eq!(second.metrics.duplicates_total(), 0, "the restart re-read committed records");
    for (i, payment) in p.iter().enumerate() {
        assert_settled(&stack.db, payment, status_of(i)).await;
    }
    assert_eq!(wallet(&stack.db, wallet_id).await.version, 12);
    assert_money_conserved(&stack.db, wallet_id).await;

    second.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}

/// A wallet whose reservation is smaller than a pending payment (corrupted data) makes the
/// CHECK on `reserved` refuse the settlement. That is a bug to look at: settlement stops
/// with an invariant error, dead-letters nothing, commits nothing; once the data is
/// repaired, the same record is delivered again and applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_invariant_stops_settlement_without_skipping_the_record() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let (wallet_id, p) = seed_wallet(&stack.db, "100.00", &["10.00"]).await;
    sqlx::query("UPDATE wallets SET available = 100.00, reserved = 0 WHERE wallet_id = $1")
        .bind(wallet_id)
        .execute(&stack.db)
        .await
        .unwrap();
    produce(&stack, &topics.results, p[0].partition, &p[0].result(Completed)).await;
    let group = testkit::unique("it-settle");

    let broken = start(config(&stack, &topics, &group));
    let metrics = broken.metrics.clone();
    let error = broken.join().await.expect_err("settlement must stop on a broken invariant");
    match &error {
        SettlementError::Consumer(ConsumerError::Handler {
            source: ApplyError::Invariant(detail), ..
        }) => {
            assert!(detail.contains("wallets_reserved_check"), "{detail}");
        }
        other => panic!("expected an invariant error, got {other}"),
    }
    assert_eq!(metrics.records_total(), 0, "nothing may be committed or dead-lettered");
    assert_pending(&stack.db, &p[0]).await;
    assert_eq!(
        wallet(&stack.db, wallet_id).await.reserved,
        Decimal::ZERO,
        "the failed transaction rolled back"
    );

    // Repair the wallet as an operator would; the same record must come back.
    sqlx::query("UPDATE wallets SET available = 90.00, reserved = 10.00 WHERE wallet_id = $1")
        .bind(wallet_id)
        .execute(&stack.db)
        .await
        .unwrap();
    let mut repaired = start(config(&stack, &topics, &group));
    repaired.wait_for_records(1).await;
    assert_eq!(repaired.metrics.applied_total(Completed), 1);
    assert_settled(&stack.db, &p[0], Completed).await;
    assert_money_conserved(&stack.db, wallet_id).await;

    repaired.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}

/// A result whose application the database refuses for a reason of that record's own data
/// (issue 11, scenario 3) is set aside, not a reason to stop: here the wallet's `version`
/// counter is at the bigint maximum, so bumping it overflows (SQLSTATE 22003). The record
/// goes to the DLQ with reason `numeric-overflow` and its original headers, its
/// transaction rolls back (the wallet and the payment are exactly as before), and the
/// next result on the same partition, for another wallet, is applied. A result whose id
/// is not `PaymentResult::id_for(paymentId, status)` is dead-lettered the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_the_database_refuses_for_its_own_data_is_dead_lettered_and_the_next_applies() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let (poisoned_wallet, poisoned) = seed_wallet(&stack.db, "100.00", &["10.00"]).await;
    let (healthy_wallet, healthy) = seed_wallet(&stack.db, "100.00", &["20.00", "30.00"]).await;
    sqlx::query("UPDATE wallets SET version = 9223372036854775807 WHERE wallet_id = $1")
        .bind(poisoned_wallet)
        .execute(&stack.db)
        .await
        .unwrap();
    let wallet_before = wallet(&stack.db, poisoned_wallet).await;
    let partition = 0;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    let overflowing =
        produce_traced(&stack, &topics.results, partition, &poisoned[0].result(Failed), traceparent).await;
    let forged = PaymentResult { payment_result_id: Uuid::new_v4(), ..healthy[1].result(Completed) };
    let mismatched = produce(&stack, &topics.results, partition, &forged).await;
    produce(&stack, &topics.results, partition, &healthy[0].result(Failed)).await;
    produce(&stack, &topics.results, partition, &healthy[1].result(Completed)).await;

    let mut running = start(config(&stack, &topics, &testkit::unique("it-settle")));
    running.wait_for_records(4).await;

    let letters = dead_letters(&stack, &topics, 2).await;
    assert_eq!(letters.len(), 2, "one letter per refused record: {letters:#?}");
    let letter_for = |reason: &str| {
        letters
            .iter()
            .find(|l| l.header(dlq::HEADER_REASON) == Some(reason.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}: {letters:#?}"))
    };
    let overflow_letter = letter_for("numeric-overflow");
    assert_dead_letter(overflow_letter, &topics, &overflowing, "numeric-overflow");
    assert!(header(overflow_letter, dlq::HEADER_DETAIL).contains("22003"), "{overflow_letter:?}");
    assert_eq!(header(overflow_letter, "traceparent"), traceparent, "the original headers travel on");
    assert_dead_letter(letter_for("result-id-mismatch"), &topics, &mismatched, "result-id-mismatch");
    assert_eq!(running.metrics.dead_lettered_total("numeric-overflow"), 1);
    assert_eq!(running.metrics.dead_lettered_total("result-id-mismatch"), 1);

    // Nothing of the refused record was applied: the transaction rolled back.
    assert_pending(&stack.db, &poisoned[0]).await;
    assert_eq!(wallet(&stack.db, poisoned_wallet).await, wallet_before);
    // The records after it were.
    assert_settled(&stack.db, &healthy[0], Failed).await;
    assert_settled(&stack.db, &healthy[1], Completed).await;
    let after = wallet(&stack.db, healthy_wallet).await;
    assert_eq!((after.available, after.reserved), (money("70.00"), Decimal::ZERO));
    assert_money_conserved(&stack.db, poisoned_wallet).await;
    assert_money_conserved(&stack.db, healthy_wallet).await;

    running.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}

/// The wallet database caps a balance (`available + reserved`) at the largest
/// `numeric(14,2)`, so a refund, which moves money from `reserved` to `available`, can
/// never overflow: the deposit that would break the cap is refused by the constraint, and
/// a refund on a wallet filled to the cap is applied.
#[tokio::test(flavor = "multi_thread")]
async fn the_balance_cap_refuses_the_deposit_a_refund_could_not_survive() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let (wallet_id, payments) = seed_wallet(&stack.db, "100.00", &["60.00"]).await;
    let cap = settlement::apply::MAX_BALANCE;
    let fill = sqlx::query("UPDATE wallets SET available = $2 - reserved WHERE wallet_id = $1")
        .bind(wallet_id)
        .bind(cap)
        .execute(&stack.db)
        .await;
    assert!(fill.is_ok(), "a wallet may hold exactly the cap: {fill:?}");
    let over = sqlx::query("UPDATE wallets SET available = available + 0.01 WHERE wallet_id = $1")
        .bind(wallet_id)
        .execute(&stack.db)
        .await
        .expect_err("one cent over the cap must be refused");
    let db = over.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("23514"), "{db}");
    assert_eq!(db.constraint(), Some("wallets_balance_max"), "{db}");
    let state = wallet(&stack.db, wallet_id).await;
    assert_eq!(state.available + state.reserved, cap);

    produce(&stack, &topics.results, payments[0].partition, &payments[0].result(Failed)).await;
    let mut running = start(config(&stack, &topics, &testkit::unique("it-settle")));
    running.wait_for_records(1).await;
    assert_eq!(running.metrics.applied_total(Failed), 1, "the refund at the cap applies");
    assert_settled(&stack.db, &payments[0], Failed).await;
    let refunded = wallet(&stack.db, wallet_id).await;
    assert_eq!((refunded.available, refunded.reserved), (cap, Decimal::ZERO));

    running.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}

/// While the registry is unreachable a result cannot be decoded: that is not the record's
/// fault, so it is retried, never dead-lettered. When the retries run out, settlement
/// stops with the offset uncommitted; a shutdown during the back-off stops it cleanly,
/// also uncommitted; with the registry back, the record is applied once.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_that_cannot_be_decoded_yet_is_retried_and_never_skipped() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let (wallet_id, p) = seed_wallet(&stack.db, "50.00", &["12.34"]).await;
    produce(&stack, &topics.results, p[0].partition, &p[0].result(Failed)).await;
    let group = testkit::unique("it-settle");
    // Nothing listens on port 1.
    let registry_away = "http://127.0.0.1:1/apis/ccompat/v7";

    let mut exhausting = config(&stack, &topics, &group);
    exhausting.schema_registry_url = registry_away.to_owned();
    exhausting.retry = RetryPolicy {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        attempts_max: 4,
        elapsed_max: Duration::from_secs(60),
    };
    let run = start(exhausting);
    let metrics = run.metrics.clone();
    match run.join().await {
        Err(SettlementError::Consumer(ConsumerError::RetriesExhausted {
            operation: "decode",
            attempts: 4,
            ..
        })) => {}
        other => panic!("expected the decode retries to run out, got {other:?}"),
    }
    assert_eq!(metrics.retries_total("decode"), 3, "three pauses between four attempts");
    assert_eq!(metrics.records_total(), 0, "nothing dead-lettered, nothing committed");

    let mut patient = config(&stack, &topics, &group);
    patient.schema_registry_url = registry_away.to_owned();
    let waiting = start(patient);
    let started = Instant::now();
    while waiting.metrics.retries_total("decode") == 0 {
        assert!(started.elapsed() < SETTLE_TIMEOUT, "settlement never tried to decode");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let metrics = waiting.metrics.clone();
    waiting.stop().await.expect("a shutdown during a back-off is a clean stop");
    assert_eq!(metrics.records_total(), 0);
    assert_pending(&stack.db, &p[0]).await;

    let mut recovered = start(config(&stack, &topics, &group));
    recovered.wait_for_records(1).await;
    assert_eq!(recovered.metrics.applied_total(Failed), 1);
    assert_settled(&stack.db, &p[0], Failed).await;
    let after = wallet(&stack.db, wallet_id).await;
    assert_eq!((after.available, after.reserved), (money("50.00"), Decimal::ZERO));
    assert_money_conserved(&stack.db, wallet_id).await;

    recovered.stop().await.expect("a clean stop");
    topics.delete(&stack).await;
}
