//! Settlement's real-stack fixture, shared by the binaries that run settlement: its own tests and
//! the orders door's (which settles the payments its inbox opens). The stack once the registry
//! answers, wallets seeded as the wallet service leaves them, a processor run in a task and
//! stopped through its stop token, and the conservation-of-money check every test ends with.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use paystream_processors::settlement::{SettlementConfig, SettlementMetrics};
use paystream_stack::testkit;
use paystream_stack::StackSettings;
use paystream_topology::ShutdownHandle;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Budget for a processor's `run` to return after its stop was requested.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A decimal amount of money from its text.
pub fn money(text: &str) -> Decimal {
    Decimal::from_str_exact(text).expect("decimal")
}

/// Kafka and the wallet database once each answers, and the registry once it does (panics naming
/// the missing one and `dev/up` otherwise).
pub async fn stack() -> (StackSettings, PgPool) {
    let settings = testkit::kafka_stack().await;
    super::registry_ready(&settings).await;
    let db = testkit::wallet_db(&settings).await;
    (settings, db)
}

/// Inserts, in `tx`, a user named `user` with a RUB wallet holding `available` and `reserved`,
/// and the deposit of `deposit` it came from; (user id, wallet id).
pub async fn seed_user_wallet(
    tx: &mut Transaction<'_, Postgres>,
    user: &str,
    deposit: Decimal,
    reserved: Decimal,
) -> (Uuid, Uuid) {
    let (user_id, wallet_id) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO users (user_id, name, phone) VALUES ($1, $2, '+70000000000')")
        .bind(user_id)
        .bind(user)
        .execute(&mut **tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO wallets (wallet_id, user_id, currency, available, reserved) VALUES ($1, $2, 'RUB', $3, $4)",
    )
    .bind(wallet_id)
    .bind(user_id)
    .bind(deposit - reserved)
    .bind(reserved)
    .execute(&mut **tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO deposits (idempotency_key, wallet_id, amount) VALUES ($1, $2, $3)")
        .bind(testkit::unique("it-deposit"))
        .bind(wallet_id)
        .bind(deposit)
        .execute(&mut **tx)
        .await
        .unwrap();
    (user_id, wallet_id)
}

/// DESIGN.md invariant 1 for one wallet, and the reservation matching the pending payments.
pub async fn assert_money_conserved(db: &PgPool, wallet_id: Uuid) {
    let (available, reserved, deposited, completed, pending): (Decimal, Decimal, Decimal, Decimal, Decimal) =
        sqlx::query_as(
            "SELECT w.available, w.reserved,
                    (SELECT coalesce(sum(amount), 0) FROM deposits d WHERE d.wallet_id = w.wallet_id),
                    (SELECT coalesce(sum(amount), 0) FROM wallet_transactions t
                      WHERE t.wallet_id = w.wallet_id AND t.status = 'COMPLETED'),
                    (SELECT coalesce(sum(amount), 0) FROM wallet_transactions t
                      WHERE t.wallet_id = w.wallet_id AND t.status = 'PENDING')
               FROM wallets w WHERE w.wallet_id = $1",
        )
        .bind(wallet_id)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(
        available + reserved,
        deposited - completed,
        "money not conserved in wallet {wallet_id}: available {available} + reserved {reserved} \
         != deposits {deposited} - completed {completed}"
    );
    assert_eq!(reserved, pending, "wallet {wallet_id} reserves {reserved}, its pending payments {pending}");
}

/// Settlement on a test's results and DLQ topics, as group `group`, counting into fresh metrics.
pub fn settlement_config(
    settings: &StackSettings,
    results: &str,
    dlq: &str,
    group: &str,
) -> SettlementConfig {
    let metrics = SettlementMetrics::register(&prometheus::Registry::new()).expect("metrics");
    SettlementConfig {
        results_topic: results.to_owned(),
        dlq_topic: dlq.to_owned(),
        group_id: group.to_owned(),
        ..SettlementConfig::new(settings, metrics)
    }
}

/// A processor's `run` in a task, and the stop token it watches.
pub struct Running<E> {
    shutdown: ShutdownHandle,
    pub task: JoinHandle<Result<(), E>>,
}

impl<E: Debug + Send + 'static> Running<E> {
    /// Spawns `run` with a stop token of its own.
    pub fn spawn<F>(run: impl FnOnce(ShutdownHandle) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let shutdown = ShutdownHandle::new();
        Self { task: tokio::spawn(run(shutdown.clone())), shutdown }
    }

    /// Requests the stop and waits (bounded) for `run` to return.
    pub async fn stop(self) -> Result<(), E> {
        self.shutdown.request();
        Self::join(self.task).await
    }

    /// Waits (bounded) for `task` to return, panicking if it does not or it panicked.
    pub async fn join(task: JoinHandle<Result<(), E>>) -> Result<(), E> {
        tokio::time::timeout(STOP_TIMEOUT, task)
            .await
            .unwrap_or_else(|_| panic!("the processor did not return within {STOP_TIMEOUT:?}"))
            .expect("the processor panicked")
    }

    /// Waits until `done` holds, for at most `timeout`, failing at once if `run` returned; `what`
    /// names the condition in the failure.
    pub async fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn() -> bool) {
        /// Pause between two looks at the condition.
        const POLL_INTERVAL: Duration = Duration::from_millis(100);
        let started = Instant::now();
        while !done() {
            if self.task.is_finished() {
                let ended = (&mut self.task).await;
                panic!("the processor stopped before {what}: {ended:?}");
            }
            assert!(started.elapsed() < timeout, "not within {timeout:?}: {what}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
