//! Stranded reservations (issue 11): payments the wallet accepted whose result never arrived.
//!
//! A reservation is stranded when its `PaymentInitiated` never reached the saga (dead-lettered,
//! or skipped by an outbox connector) or its `PaymentResult` never got applied (dead-lettered
//! here): the row stays PENDING and the amount stays reserved, and nothing in the flow would
//! ever move it. This module finds them — [`list`] for `paystream reservations stranded`,
//! [`summary`] for the gauges — and [`watch`] keeps the gauges current next to settlement's
//! consumer loop. They are resolved by `paystream reservations nudge`, which publishes the
//! payment's event again through the wallet outbox (`paystream_api::outbox`), so the saga and
//! settlement resolve it as they resolve every payment; nothing here writes.
//!
//! # When a PENDING row is stranded
//!
//! A healthy payment has its result applied within [`STRANDED_AFTER_MS`] of its acceptance:
//!
//! - the saga's payment timeout ([`PAYMENT_TIMEOUT_MS`], 60 s): without the provider's verdict
//!   by then, the saga verifies;
//! - the verification ([`VERIFICATION_MARGIN_MS`], 80 s): a status query and, if the provider
//!   holds no charge, a void, each answered within the dispatcher's whole retry budget
//!   ([`DISPATCH_BUDGET_MS`], `processors/src/saga/deadline.rs`);
//! - [`SLACK_MS`] (30 s) for the pipeline around them: Debezium's poll, the saga's, the timers'
//!   and settlement's commit cycles, the timer's lateness, the clock skew the deadline's margin
//!   allows.
//!
//! So 170 s with the defaults. A payment whose provider stays away longer is still being asked
//! (the saga holds the reservation on purpose and raises `paystream_saga_verification_overdue_total`
//! after its bound): it is listed too, because from the wallet database it looks the same, and a
//! nudge of it is harmless — the saga ignores a PaymentInitiated for a payment in flight.
//!
//! # Why settlement computes the gauges
//!
//! Settlement is the process that moves rows out of PENDING and already holds the wallet
//! database's pool; a reservation is stranded exactly when settlement has not applied its
//! result. The API has the pool too, but it scales with request load (every replica would scan
//! the same table) and says nothing about the flow's back end. One scan every
//! [`SCAN_INTERVAL_MS`] is one aggregate query; no index covers `status`, so it reads the table:
//! cheap at this stack's size, and a partial index on `accepted_at WHERE status = 'PENDING'` is
//! the remedy when it is not. Every settlement instance reports the same global figures (take
//! `max` across instances, not `sum`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_topology::ShutdownHandle;
use prometheus::{IntGauge, Registry};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use super::metrics::SettlementMetrics;
use crate::dispatcher::backoff::{ATTEMPTS_MAX, BACKOFF_MAX_MS};
use crate::dispatcher::REQUEST_TIMEOUT_MS;
use crate::saga::processor::defaults;

/// The saga's default payment timeout.
pub const PAYMENT_TIMEOUT_MS: u64 = defaults::PAYMENT_TIMEOUT_MS;
/// The dispatcher's default retry budget for one command or provider request: every attempt
/// timing out, every pause the longest (`DispatchBudget::total`, 40 s).
pub const DISPATCH_BUDGET_MS: u64 =
    ATTEMPTS_MAX as u64 * REQUEST_TIMEOUT_MS + (ATTEMPTS_MAX as u64 - 1) * BACKOFF_MAX_MS;
/// The verification after the timer: a status query and a void, each within the budget.
pub const VERIFICATION_MARGIN_MS: u64 = 2 * DISPATCH_BUDGET_MS;
/// The pipeline's own delays around the timeout and the verification.
pub const SLACK_MS: u64 = 30_000;
/// A PENDING row accepted longer ago than this is stranded.
pub const STRANDED_AFTER_MS: u64 = PAYMENT_TIMEOUT_MS + VERIFICATION_MARGIN_MS + SLACK_MS;
/// How often settlement recomputes the gauges.
pub const SCAN_INTERVAL_MS: u64 = 15_000;
/// How long one scan may take before it counts as failed (the gauges keep their last value).
pub const SCAN_TIMEOUT_MS: u64 = 10_000;
/// The most rows [`list`] returns: an operator's table, not an export.
pub const LIST_ROWS_MAX: i64 = 1_000;
/// The settlement `retries_total` operation a failed scan is counted under (retried at the
/// next interval).
pub const SCAN_OPERATION: &str = "stranded_scan";

/// One stranded reservation, as `paystream reservations stranded` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StrandedReservation {
    /// The payment (and the nudge's argument).
    pub payment_id: Uuid,
    /// The wallet whose money is held.
    pub wallet_id: Uuid,
    /// The amount reserved.
    pub amount: Decimal,
    /// The wallet's currency.
    pub currency: String,
    /// When the API accepted the payment.
    pub accepted_at: DateTime<Utc>,
    /// How long ago that was, by the database's clock.
    pub age: Duration,
}

/// How many reservations are stranded, and the oldest one's age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// PENDING rows older than the threshold.
    pub count: u64,
    /// The oldest one's age; `None` when there is none.
    pub oldest_age: Option<Duration>,
}

/// Which wallets to look at: all of them (the gauges, the command), or some (a test's own, a
/// command's `--wallet`).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every wallet.
    All,
    /// These wallets only.
    Wallets(&'a [Uuid]),
}

impl Scope<'_> {
    /// The `uuid[]` bound to the queries: NULL for every wallet.
    fn wallets(self) -> Option<Vec<Uuid>> {
        match self {
            Scope::All => None,
            Scope::Wallets(wallets) => Some(wallets.to_vec()),
        }
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn age(age_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(age_ms).unwrap_or(0))
}

/// The PENDING rows accepted more than `older_than` ago, oldest first, at most `rows_max`.
pub async fn list(
    db: &PgPool,
    older_than: Duration,
    scope: Scope<'_>,
    rows_max: i64,
) -> Result<Vec<StrandedReservation>, sqlx::Error> {
    type Row = (Uuid, Uuid, Decimal, String, DateTime<Utc>, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.payment_id, t.wallet_id, t.amount, w.currency, t.accepted_at,
                (EXTRACT(EPOCH FROM now() - t.accepted_at) * 1000)::bigint
         FROM wallet_transactions t JOIN wallets w ON w.wallet_id = t.wallet_id
         WHERE t.status = 'PENDING'
           AND t.accepted_at < now() - $1::bigint * interval '1 millisecond'
           AND ($2::uuid[] IS NULL OR t.wallet_id = ANY($2))
         ORDER BY t.accepted_at, t.payment_id
         LIMIT $3",
    )
    .bind(ms(older_than))
    .bind(scope.wallets())
    .bind(rows_max)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(payment_id, wallet_id, amount, currency, accepted_at, age_ms)| StrandedReservation {
            payment_id,
            wallet_id,
            amount,
            currency,
            accepted_at,
            age: age(age_ms),
        })
        .collect())
}

/// How many PENDING rows were accepted more than `older_than` ago, and the oldest one's age.
pub async fn summary(db: &PgPool, older_than: Duration, scope: Scope<'_>) -> Result<Summary, sqlx::Error> {
    let (count, oldest_ms): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), (EXTRACT(EPOCH FROM now() - min(accepted_at)) * 1000)::bigint
         FROM wallet_transactions
         WHERE status = 'PENDING'
           AND accepted_at < now() - $1::bigint * interval '1 millisecond'
           AND ($2::uuid[] IS NULL OR wallet_id = ANY($2))",
    )
    .bind(ms(older_than))
    .bind(scope.wallets())
    .fetch_one(db)
    .await?;
    Ok(Summary { count: u64::try_from(count).unwrap_or(0), oldest_age: oldest_ms.map(age) })
}

/// The two gauges of stranded reservations.
#[derive(Clone, Debug)]
pub struct StrandedGauges {
    /// `paystream_wallet_stranded_reservations`: PENDING rows past [`STRANDED_AFTER_MS`].
    count: IntGauge,
    /// `paystream_wallet_stranded_reservations_oldest_age_seconds`: the oldest one's age, 0
    /// when there is none.
    oldest_age_s: IntGauge,
}

impl StrandedGauges {
    /// Creates the gauges and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauges = Self {
            count: IntGauge::new(
                "paystream_wallet_stranded_reservations",
                "PENDING payments accepted longer ago than the payment timeout, the verification margin \
                 and the slack: their event never reached the saga or their result was never applied. \
                 List with `paystream reservations stranded`, resolve with `paystream reservations nudge`.",
            )?,
            oldest_age_s: IntGauge::new(
                "paystream_wallet_stranded_reservations_oldest_age_seconds",
                "Age of the oldest stranded reservation, in seconds (0 when there is none).",
            )?,
        };
        registry.register(Box::new(gauges.count.clone()))?;
        registry.register(Box::new(gauges.oldest_age_s.clone()))?;
        Ok(gauges)
    }

    /// Shows `summary`.
    pub fn set(&self, summary: Summary) {
        self.count.set(i64::try_from(summary.count).unwrap_or(i64::MAX));
        let oldest_s = summary.oldest_age.map_or(0, |age| age.as_secs());
        self.oldest_age_s.set(i64::try_from(oldest_s).unwrap_or(i64::MAX));
    }

    /// The count shown.
    pub fn count(&self) -> i64 {
        self.count.get()
    }

    /// The oldest age shown, in seconds.
    pub fn oldest_age_s(&self) -> i64 {
        self.oldest_age_s.get()
    }
}

/// What [`watch`] scans for and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrandedConfig {
    /// A PENDING row older than this is stranded.
    pub after: Duration,
    /// The pause between two scans.
    pub interval: Duration,
}

impl Default for StrandedConfig {
    fn default() -> Self {
        Self {
            after: Duration::from_millis(STRANDED_AFTER_MS),
            interval: Duration::from_millis(SCAN_INTERVAL_MS),
        }
    }
}

/// Scans once and shows the result; a failed or slow scan keeps the last figures and is
/// counted under `retries_total{operation="stranded_scan"}` (the next interval retries it).
pub async fn refresh(db: &PgPool, config: StrandedConfig, metrics: &SettlementMetrics) {
    let scanned =
        tokio::time::timeout(Duration::from_millis(SCAN_TIMEOUT_MS), summary(db, config.after, Scope::All))
            .await;
    match scanned {
        Ok(Ok(found)) => {
            // Logged when the figure changes, not at every scan.
            if found.count > 0 && i64::try_from(found.count).ok() != Some(metrics.stranded().count()) {
                tracing::warn!(
                    count = found.count,
                    oldest_age_s = found.oldest_age.map_or(0, |a| a.as_secs()),
                    "stranded reservations: `paystream reservations stranded` lists them"
                );
            }
            metrics.stranded().set(found);
        }
        Ok(Err(error)) => {
            metrics.consumer().record_retry(SCAN_OPERATION);
            tracing::warn!(%error, "scanning for stranded reservations failed; retried at the next interval");
        }
        Err(_) => {
            metrics.consumer().record_retry(SCAN_OPERATION);
            tracing::warn!(timeout_ms = SCAN_TIMEOUT_MS, "scanning for stranded reservations timed out");
        }
    }
}

/// Keeps the gauges current until `stop` is requested: a scan at once, then one per interval
/// (a late tick is delayed, never bunched).
pub async fn watch(db: PgPool, config: StrandedConfig, metrics: SettlementMetrics, stop: ShutdownHandle) {
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.requested() => return,
            _ = ticks.tick() => refresh(&db, config, &metrics).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::deadline::DispatchBudget;

    #[test]
    fn the_threshold_is_the_timeout_the_verification_and_the_slack() {
        let budget = DispatchBudget {
            attempts_max: ATTEMPTS_MAX,
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            backoff_max: Duration::from_millis(BACKOFF_MAX_MS),
        };
        assert_eq!(u128::from(DISPATCH_BUDGET_MS), budget.total().as_millis(), "the saga's own arithmetic");
        assert_eq!(DISPATCH_BUDGET_MS, 40_000);
        assert_eq!(STRANDED_AFTER_MS, 60_000 + 80_000 + 30_000);
        assert!(
            Duration::from_millis(STRANDED_AFTER_MS)
                > Duration::from_millis(PAYMENT_TIMEOUT_MS) + crate::saga::deadline::TIMEOUT_MARGIN,
            "past the timer and the deadline's margin"
        );
        assert_eq!(StrandedConfig::default().after, Duration::from_millis(STRANDED_AFTER_MS));
    }

    #[test]
    fn the_gauges_show_a_summary_and_zero_when_nothing_is_stranded() {
        let gauges = StrandedGauges::register(&Registry::new()).unwrap();
        gauges.set(Summary { count: 3, oldest_age: Some(Duration::from_millis(612_900)) });
        assert_eq!((gauges.count(), gauges.oldest_age_s()), (3, 612));
        gauges.set(Summary::default());
        assert_eq!((gauges.count(), gauges.oldest_age_s()), (0, 0));
    }
}
