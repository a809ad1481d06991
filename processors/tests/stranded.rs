//! Stranded reservations (issue 11) on the real stack: the wallet database, Debezium's outbox
//! connector, Kafka, the registry, the saga on the real runtime and settlement.
//!
//! A stranded reservation is a PENDING row whose event never reached the saga or whose result
//! was never applied. The tests seed such rows as the API leaves them (the reservation and the
//! PENDING row in one transaction) but without the outbox row or with a result nobody settled,
//! accepted in the past. They are found by the queries of `paystream reservations stranded` and of
//! settlement's gauges, and resolved by the nudge: the payment's `PaymentInitiated` published again
//! through the API's own outbox write, which the real `wallet-outbox` connector delivers to
//! `payments.initiated`.
//!
//! The production saga and settlement (and their topics) belong to `dev/run`, the whole-flow test
//! and the chaos run, which may be running: a nudge sent to `payments.initiated` would be taken up
//! by them too (a charge at the simulator, a second settlement racing the test's). So the saga here
//! runs on topics of its own, and the nudge names its input as the outbox row's `aggregatetype`:
//! the production `wallet-outbox` connector routes by that value, so every hop — row, outbox,
//! Debezium, saga, results, settlement — is the real one, and nothing reaches the production flow.

mod common;

use std::time::{Duration, Instant};

use common::{callback, Stack, SETTLE, TIMEOUT};
use paystream_api::outbox::{self, NudgeError};
use paystream_processors::settlement::stranded::{
    self, Scope, StrandedConfig, Summary, LIST_ROWS_MAX, STRANDED_AFTER_MS,
};
use paystream_processors::settlement::{
    self, apply, Outcome, SettlementConfig, SettlementError, SettlementMetrics,
};
use paystream_schemas::events::{
    topics, ChargeCommand, PaymentInitiated, PaymentResult, PaymentResultStatus, ProviderStatus,
};
use paystream_schemas::{time, Amount};
use paystream_stack::testkit::{self, consume_until, Received};
use paystream_topology::ShutdownHandle;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long ago the seeded stranded payments were accepted: well past the threshold.
const STRANDED_AGE_S: i64 = 600;
/// The payment timeout of the test's saga: longer than the test, so no timer decides.
const SAGA_PAYMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the test waits for settlement to process its records, or to stop.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The name of the tests' users, by which [`settle_leftovers`] finds their rows.
const TEST_USER: &str = "stranded test";
/// A row of these tests inserted longer ago than this belongs to no running test.
const LEFTOVER_AFTER_S: i64 = 600;
/// The pause between two looks at a condition being awaited.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

fn threshold() -> Duration {
    Duration::from_millis(STRANDED_AFTER_MS)
}

/// A payment as the API accepted it.
#[derive(Clone, Debug)]
struct Seeded {
    payment_id: Uuid,
    amount: Amount,
}

/// A user with a RUB wallet holding `deposit`, and one payment per `(amount, age_s)` accepted
/// `age_s` seconds ago, each reserved and PENDING, as the API's transaction leaves them — but
/// with no outbox row: their `PaymentInitiated` is lost.
async fn seed(db: &PgPool, deposit: &str, payments: &[(&str, i64)]) -> (Uuid, Vec<Seeded>) {
    settle_leftovers(db).await;
    let (user_id, wallet_id) = (Uuid::new_v4(), Uuid::new_v4());
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO users (user_id, name, phone) VALUES ($1, $2, '+70000000000')")
        .bind(user_id)
        .bind(TEST_USER)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO wallets (wallet_id, user_id, currency, available, reserved) VALUES ($1, $2, 'RUB', $3, 0)")
        .bind(wallet_id)
        .bind(user_id)
        .bind(Decimal::from_str_exact(deposit).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO deposits (idempotency_key, wallet_id, amount) VALUES ($1, $2, $3)")
        .bind(testkit::unique("it-stranded-deposit"))
        .bind(wallet_id)
        .bind(Decimal::from_str_exact(deposit).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut seeded = Vec::new();
    for (amount, age_s) in payments {
        let payment = Seeded { payment_id: Uuid::new_v4(), amount: amount.parse().unwrap() };
        sqlx::query(
            "INSERT INTO wallet_transactions (payment_id, wallet_id, amount, kind, description, requested_at, accepted_at)
             VALUES ($1, $2, $3, 'mobile', 'Оплата связи', now() - ($4 + 1) * interval '1 second',
                     now() - $4 * interval '1 second')",
        )
        .bind(payment.payment_id)
        .bind(wallet_id)
        .bind(payment.amount.to_decimal())
        .bind(*age_s)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE wallets SET available = available - $2, reserved = reserved + $2 WHERE wallet_id = $1",
        )
        .bind(wallet_id)
        .bind(payment.amount.to_decimal())
        .execute(&mut *tx)
        .await
        .unwrap();
        seeded.push(payment);
    }
    tx.commit().await.unwrap();
    (wallet_id, seeded)
}

/// Settles, through settlement's own transaction, what an earlier run of these tests left PENDING
/// when it failed half-way (rows inserted more than [`LEFTOVER_AFTER_S`] ago: no running test's),
/// so that failed runs do not accumulate stranded reservations in the shared database. Their
/// events only ever went to the failed run's own topics.
async fn settle_leftovers(db: &PgPool) {
    type Row = (Uuid, Uuid, Decimal);
    let leftovers: Vec<Row> = sqlx::query_as(
        "SELECT t.payment_id, t.wallet_id, t.amount
         FROM wallet_transactions t JOIN wallets w ON w.wallet_id = t.wallet_id
              JOIN users u ON u.user_id = w.user_id
         WHERE u.name = $1 AND t.status = 'PENDING' AND t.created_at < now() - $2 * interval '1 second'",
    )
    .bind(TEST_USER)
    .bind(LEFTOVER_AFTER_S)
    .fetch_all(db)
    .await
    .unwrap();
    for (payment_id, wallet_id, amount) in leftovers {
        let payment = Seeded { payment_id, amount: Amount::try_from_decimal(amount).unwrap() };
        let result = failed_timeout(wallet_id, &payment);
        // Another test's janitor may have settled it first: a duplicate then.
        apply::apply(db, &result).await.unwrap();
    }
}

fn failed_timeout(wallet_id: Uuid, payment: &Seeded) -> PaymentResult {
    PaymentResult {
        payment_result_id: PaymentResult::id_for(payment.payment_id, PaymentResultStatus::FailedTimeout),
        payment_id: payment.payment_id,
        wallet_id,
        amount: payment.amount,
        status: PaymentResultStatus::FailedTimeout,
        reason: "left pending by a failed run of the stranded tests".into(),
        decided_at: time::now(),
    }
}

/// The `PaymentInitiated` the API wrote (or would have written) for a seeded row, read back.
async fn as_accepted(db: &PgPool, payment_id: Uuid) -> PaymentInitiated {
    type Row = (Uuid, Decimal, String, String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);
    let (wallet_id, amount, kind, description, requested_at, accepted_at): Row = sqlx::query_as(
        "SELECT wallet_id, amount, kind, description, requested_at, accepted_at
         FROM wallet_transactions WHERE payment_id = $1",
    )
    .bind(payment_id)
    .fetch_one(db)
    .await
    .unwrap();
    PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id,
        wallet_id,
        amount: Amount::try_from_decimal(amount).unwrap(),
        currency: "RUB".into(),
        kind,
        description,
        requested_at,
        initiated_at: accepted_at,
    }
}

/// Settles `payment` through settlement's own transaction, with a result of `status` (the
/// tests' way to leave nothing stranded behind them).
async fn settle_directly(db: &PgPool, wallet_id: Uuid, payment: &Seeded, status: PaymentResultStatus) {
    let result = PaymentResult {
        payment_result_id: PaymentResult::id_for(payment.payment_id, status),
        payment_id: payment.payment_id,
        wallet_id,
        amount: payment.amount,
        status,
        reason: "settled by the test".into(),
        decided_at: time::now(),
    };
    let outcome = apply::apply(db, &result).await.unwrap();
    assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
}

async fn row_status(db: &PgPool, payment_id: Uuid) -> (String, Option<Uuid>) {
    sqlx::query_as("SELECT status, payment_result_id FROM wallet_transactions WHERE payment_id = $1")
        .bind(payment_id)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn balances(db: &PgPool, wallet_id: Uuid) -> (Decimal, Decimal) {
    sqlx::query_as("SELECT available, reserved FROM wallets WHERE wallet_id = $1")
        .bind(wallet_id)
        .fetch_one(db)
        .await
        .unwrap()
}

fn money(text: &str) -> Decimal {
    Decimal::from_str_exact(text).unwrap()
}

/// Settlement on the test's own results topic, stopped by requesting `stop`.
struct Running {
    metrics: SettlementMetrics,
    stop: ShutdownHandle,
    task: JoinHandle<Result<(), SettlementError>>,
}

fn start_settlement(stack: &Stack, stranded: StrandedConfig) -> Running {
    let metrics = SettlementMetrics::register(&prometheus::Registry::new()).unwrap();
    let config = SettlementConfig {
        results_topic: stack.topics.results.clone(),
        dlq_topic: stack.dlq(),
        group_id: testkit::unique("it-stranded-settlement"),
        stranded,
        ..SettlementConfig::new(&stack.settings, metrics.clone())
    };
    let stop = ShutdownHandle::new();
    let task = tokio::spawn(settlement::run(config, stop.clone()));
    Running { metrics, stop, task }
}

impl Running {
    /// Waits (bounded) until `done` holds for the metrics, failing early if settlement stopped.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&SettlementMetrics) -> bool) {
        let started = Instant::now();
        while !done(&self.metrics) {
            if self.task.is_finished() {
                let ended = (&mut self.task).await;
                panic!("settlement stopped before {what}: {ended:?}");
            }
            assert!(started.elapsed() < SETTLE_TIMEOUT, "{what}: not within {SETTLE_TIMEOUT:?}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Requests shutdown and waits (bounded) for `run` to return. `run` awaits its stranded scan
    /// before it returns, so a return means the scan has stopped too.
    async fn stop(self) -> Result<(), SettlementError> {
        self.stop.request();
        tokio::time::timeout(SETTLE_TIMEOUT, self.task)
            .await
            .unwrap_or_else(|_| panic!("settlement did not return within {SETTLE_TIMEOUT:?}"))
            .expect("settlement panicked")
    }
}

/// The records keyed by one of `ids` that reach `consumer`, once there are `n` (and `SETTLE` more
/// to catch duplicates).
fn records_keyed(consumer: &rdkafka::consumer::BaseConsumer, ids: &[Uuid], n: usize) -> Vec<Received> {
    let keys: Vec<Vec<u8>> = ids.iter().map(|id| id.to_string().into_bytes()).collect();
    let mine = |r: &Received| r.key.as_ref().is_some_and(|k| keys.contains(k));
    consume_until(consumer, TIMEOUT, SETTLE, |received| received.iter().filter(|r| mine(r)).count() >= n)
        .into_iter()
        .filter(mine)
        .collect()
}

/// A lost result and a lost event, side by side: both are listed and counted as stranded, the
/// nudge publishes each payment's event once through the outbox (Debezium delivers it to the
/// saga's input, exactly the payment as accepted), the saga re-forwards the decided payment's one
/// result and starts the other, and settlement applies each result once. No money moves before
/// settlement moves it.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_result_and_a_lost_event_are_listed_then_resolved_by_a_nudge_through_the_outbox_saga_and_settlement(
) {
    let stack = Stack::new().await;
    let db = testkit::wallet_db(&stack.settings).await;
    let (wallet, seeded) = seed(&db, "100.00", &[("42.00", STRANDED_AGE_S), ("7.50", STRANDED_AGE_S)]).await;
    let (decided, unseen) = (seeded[0].clone(), seeded[1].clone());
    let saga = stack.start_saga_with(SAGA_PAYMENT_TIMEOUT).await;

    // `decided` reached the saga and was decided; its result never reached settlement (none runs
    // yet: as if dead-lettered). `unseen`'s event never reached the saga at all.
    let first = as_accepted(&db, decided.payment_id).await;
    stack.send(&stack.topics.initiated, decided.payment_id, &first).await;
    stack
        .send(
            &stack.topics.callbacks,
            decided.payment_id,
            &callback(decided.payment_id, ProviderStatus::Succeeded),
        )
        .await;
    let result = stack.results_for(decided.payment_id, 1).await;
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(result[0].status, PaymentResultStatus::Completed);

    // Both are stranded: listed (oldest first) and counted.
    let listed = stranded::list(&db, threshold(), Scope::Wallets(&[wallet]), LIST_ROWS_MAX).await.unwrap();
    let mut ids: Vec<Uuid> = listed.iter().map(|s| s.payment_id).collect();
    ids.sort();
    let mut expected = vec![decided.payment_id, unseen.payment_id];
    expected.sort();
    assert_eq!(ids, expected, "{listed:?}");
    for row in &listed {
        assert_eq!((row.wallet_id, row.currency.as_str()), (wallet, "RUB"));
        assert!(row.age >= Duration::from_secs(STRANDED_AGE_S as u64), "{row:?}");
    }
    let amounts: Decimal = listed.iter().map(|s| s.amount).sum();
    assert_eq!(amounts, money("49.50"));
    let counted = stranded::summary(&db, threshold(), Scope::Wallets(&[wallet])).await.unwrap();
    assert_eq!(counted.count, 2);
    assert!(counted.oldest_age >= Some(Duration::from_secs(STRANDED_AGE_S as u64)), "{counted:?}");
    let before = balances(&db, wallet).await;
    assert_eq!(before, (money("50.50"), money("49.50")));

    // The nudge: one event each through the outbox, delivered by the real connector to the saga.
    let tail = testkit::tail(&stack.settings, &stack.topics.initiated);
    let mut nudged = Vec::new();
    for payment in [&decided, &unseen] {
        let event = outbox::republish_payment_initiated(
            &db,
            &stack.codec,
            payment.payment_id,
            &stack.topics.initiated,
        )
        .await
        .unwrap();
        nudged.push(event);
    }
    assert_eq!(balances(&db, wallet).await, before, "a nudge moves no money");
    let ids = [decided.payment_id, unseen.payment_id];
    let delivered = tokio::task::spawn_blocking(move || records_keyed(&tail, &ids, 2)).await.unwrap();
    assert_eq!(
        delivered.len(),
        2,
        "exactly one record per nudge (the tail starts after the first event): {delivered:#?}"
    );
    for (payment, event) in [&decided, &unseen].into_iter().zip(&nudged) {
        let key = payment.payment_id.to_string().into_bytes();
        let record =
            delivered.iter().find(|r| r.key.as_ref() == Some(&key)).expect("the nudged payment's record");
        let decoded: PaymentInitiated = stack.codec.decode(record.value.as_deref().unwrap()).await.unwrap();
        assert_eq!(&decoded, event, "the record is the event the nudge wrote");
        let accepted = as_accepted(&db, payment.payment_id).await;
        assert_eq!(
            PaymentInitiated { event_id: decoded.event_id, ..accepted },
            decoded,
            "the same payment: id, wallet, amount, currency, kind, description, requested and accepted times"
        );
        assert_eq!(record.header("id"), Some(decoded.event_id.to_string().as_bytes()), "a new event id");
        assert_eq!(record.header("eventType"), Some(&b"PaymentInitiated"[..]));
        assert!(record.header("traceparent").is_some_and(|t| t.starts_with(b"00-")), "{record:?}");
    }
    assert_ne!(nudged[0].event_id, first.event_id);
    let outbox_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wallet_outbox WHERE aggregateid = ANY($1)")
            .bind(vec![decided.payment_id.to_string(), unseen.payment_id.to_string()])
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(outbox_rows, 0, "the outbox row is deleted in the transaction that wrote it");

    // The decided payment's one result again, unchanged; the unseen one starts: one charge.
    let results = stack.results_for(decided.payment_id, 2).await;
    assert_eq!(results.len(), 2, "the result and its re-forward: {results:?}");
    assert_eq!(results[1], results[0], "the same result, same id");
    let commands = stack.records_for(&stack.topics.commands, unseen.payment_id, 1);
    assert_eq!(commands.len(), 1, "one charge for the payment the saga never saw");
    let command: ChargeCommand = stack.codec.decode(commands[0].value.as_deref().unwrap()).await.unwrap();
    assert_eq!((command.wallet_id, command.amount), (wallet, unseen.amount));
    assert_eq!(stack.records_for(&stack.topics.commands, decided.payment_id, 1).len(), 1, "no second charge");
    stack
        .send(
            &stack.topics.callbacks,
            unseen.payment_id,
            &callback(unseen.payment_id, ProviderStatus::Succeeded),
        )
        .await;
    assert_eq!(stack.results_for(unseen.payment_id, 1).await.len(), 1);

    // Settlement applies each result once: the re-forward of the decided one is applied (its
    // first copy was never settled), the second copy is a duplicate.
    let mut settlement = start_settlement(&stack, StrandedConfig::default());
    settlement.wait_for("3 results processed", |m| m.records_total() >= 3).await;
    let metrics = &settlement.metrics;
    assert_eq!(metrics.records_total(), 3);
    assert_eq!(metrics.applied_total(PaymentResultStatus::Completed), 2);
    assert_eq!(metrics.duplicates_total(), 1);
    for payment in [&decided, &unseen] {
        let completed = PaymentResult::id_for(payment.payment_id, PaymentResultStatus::Completed);
        assert_eq!(row_status(&db, payment.payment_id).await, ("COMPLETED".to_owned(), Some(completed)));
    }
    assert_eq!(balances(&db, wallet).await, (money("50.50"), money("0.00")), "the debits, once each");
    assert!(stranded::list(&db, threshold(), Scope::Wallets(&[wallet]), LIST_ROWS_MAX)
        .await
        .unwrap()
        .is_empty());
    match outbox::republish_payment_initiated(
        &db,
        &stack.codec,
        decided.payment_id,
        topics::PAYMENTS_INITIATED,
    )
    .await
    {
        Err(NudgeError::NotPending { status, .. }) => assert_eq!(status, "COMPLETED"),
        other => panic!("a settled payment is not nudged: {other:?}"),
    }
    settlement.stop().await.unwrap();
    saga.close().unwrap();
    stack.cleanup().await;
}

/// The query lists PENDING rows past the threshold only, oldest first, of the wallets asked, up to
/// its bound; the summary counts the same rows; the nudge refuses what is not stranded.
#[tokio::test(flavor = "multi_thread")]
async fn the_stranded_query_lists_only_pending_rows_past_the_threshold_and_the_nudge_refuses_the_rest() {
    let settings = paystream_stack::StackSettings::from_env();
    let db = testkit::wallet_db(&settings).await;
    let codec = paystream_schemas::EventCodec::new(&settings.schema_registry_url).unwrap();
    let (wallet, seeded) =
        seed(&db, "100.00", &[("10.00", 900), ("20.00", STRANDED_AGE_S), ("30.00", 900), ("1.00", 0)]).await;
    let (oldest, old, settled, fresh) = (&seeded[0], &seeded[1], &seeded[2], &seeded[3]);
    settle_directly(&db, wallet, settled, PaymentResultStatus::Completed).await;

    let ids = |rows: &[stranded::StrandedReservation]| rows.iter().map(|r| r.payment_id).collect::<Vec<_>>();
    let listed = stranded::list(&db, threshold(), Scope::Wallets(&[wallet]), LIST_ROWS_MAX).await.unwrap();
    assert_eq!(
        ids(&listed),
        vec![oldest.payment_id, old.payment_id],
        "pending, past the threshold, oldest first"
    );
    assert_eq!((listed[0].amount, listed[0].wallet_id), (money("10.00"), wallet));
    assert!((900..960).contains(&listed[0].age.as_secs()), "{:?}", listed[0]);
    let everything =
        stranded::list(&db, Duration::ZERO, Scope::Wallets(&[wallet]), LIST_ROWS_MAX).await.unwrap();
    assert_eq!(
        ids(&everything),
        vec![oldest.payment_id, old.payment_id, fresh.payment_id],
        "--older-than-s 0"
    );
    let bounded = stranded::list(&db, Duration::ZERO, Scope::Wallets(&[wallet]), 1).await.unwrap();
    assert_eq!(ids(&bounded), vec![oldest.payment_id]);
    let elsewhere =
        stranded::list(&db, Duration::ZERO, Scope::Wallets(&[Uuid::new_v4()]), LIST_ROWS_MAX).await.unwrap();
    assert!(elsewhere.is_empty());
    let all = stranded::list(&db, threshold(), Scope::All, LIST_ROWS_MAX).await.unwrap();
    assert!(all.iter().any(|r| r.payment_id == oldest.payment_id), "every wallet's include this one");

    let counted = stranded::summary(&db, threshold(), Scope::Wallets(&[wallet])).await.unwrap();
    assert_eq!(counted.count, 2);
    assert_eq!(counted.oldest_age.map(|a| a.as_secs() / 60), Some(15), "{counted:?}");
    let none = stranded::summary(&db, threshold(), Scope::Wallets(&[Uuid::new_v4()])).await.unwrap();
    assert_eq!(none, Summary { count: 0, oldest_age: None });
    let global = stranded::summary(&db, threshold(), Scope::All).await.unwrap();
    assert!(global.count >= 2 && global.oldest_age >= counted.oldest_age, "{global:?}");

    match outbox::republish_payment_initiated(&db, &codec, settled.payment_id, topics::PAYMENTS_INITIATED)
        .await
    {
        Err(NudgeError::NotPending { status, .. }) => assert_eq!(status, "COMPLETED"),
        other => panic!("{other:?}"),
    }
    let unknown = Uuid::new_v4();
    assert!(
        matches!(outbox::republish_payment_initiated(&db, &codec, unknown, topics::PAYMENTS_INITIATED).await, Err(NudgeError::UnknownPayment(id)) if id == unknown)
    );

    // Nothing is left stranded: the rest is settled through settlement's own transaction.
    for payment in [oldest, old, fresh] {
        settle_directly(&db, wallet, payment, PaymentResultStatus::FailedTimeout).await;
    }
    assert_eq!(balances(&db, wallet).await, (money("70.00"), money("0.00")));
}

/// Settlement's scan keeps the gauges current while it runs — up when a stranded row appears, down
/// when it is settled — and stops with its consumer loop.
#[tokio::test(flavor = "multi_thread")]
async fn settlement_keeps_the_stranded_gauges_current_and_stops_the_scan_with_its_loop() {
    /// Older than any row another test leaves pending, so the oldest age is this row's.
    const ANCIENT_S: i64 = 400 * 24 * 60 * 60;
    let stack = Stack::new().await;
    let db = testkit::wallet_db(&stack.settings).await;
    let scan = StrandedConfig { after: threshold(), interval: Duration::from_millis(200) };
    let mut settlement = start_settlement(&stack, scan);
    let (wallet, seeded) = seed(&db, "5.00", &[("5.00", ANCIENT_S)]).await;
    settlement
        .wait_for("the ancient row counted", |m| {
            m.stranded().count() >= 1 && m.stranded().oldest_age_s() >= ANCIENT_S
        })
        .await;
    settle_directly(&db, wallet, &seeded[0], PaymentResultStatus::FailedTimeout).await;
    settlement
        .wait_for("the settled row no longer the oldest", |m| m.stranded().oldest_age_s() < ANCIENT_S)
        .await;
    assert_eq!(settlement.metrics.retries_total(stranded::SCAN_OPERATION), 0, "no scan failed");
    settlement.stop().await.unwrap();
    stack.cleanup().await;
}
