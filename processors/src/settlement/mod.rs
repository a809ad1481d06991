//! The settlement consumer: applies each `PaymentResult` to the wallet database once.
//!
//! It reads `payments.results` (`read_committed`, so only results of committed saga
//! transactions) through the shared consumer loop ([`crate::consumer`]), which decodes
//! each record, retries, dead-letters and commits; this module says what a result means:
//!
//! - apply it in one Postgres transaction ([`apply`]): dedup by PaymentResultId, move the
//!   money, mark the payment settled → done;
//! - a duplicate (the PaymentResultId is already on the row) → done, nothing changed;
//! - a result refused for its own data ([`apply::Rejection`]: unknown payment, mismatched
//!   amount, wallet or result id, a numeric overflow, a constraint outside the
//!   invariants) → rolled back, dead-lettered with the rejection's kind as the reason;
//! - a transient database error → retried with the same record;
//! - a broken invariant ([`ApplyError::Invariant`]) or any other database error → stop,
//!   offset uncommitted: that is a bug to look at, not a record to set aside.
//!
//! [`apply`]'s module doc has the table of which failure is which.
//!
//! Next to the loop, [`stranded::watch`] keeps the gauges of stranded reservations current
//! (PENDING rows past the payment timeout, the verification and a slack: their event or their
//! result was lost); it runs as long as the loop and stops with it.
//!
//! Delivery is at least once and the effect exactly once: a record redelivered after a
//! crash, a rebalance or a replay by another group finds its PaymentResultId on the row
//! and changes nothing. Each partition's results are applied in order, partitions
//! concurrently (the payment row is locked `FOR UPDATE`, so results of one wallet on two
//! partitions serialise on the database); more instances in the same group share the
//! partitions (DESIGN.md, "Scale").

pub mod apply;
pub mod metrics;
pub mod stranded;

use std::sync::Arc;
use std::time::Duration;

use paystream_schemas::events::{topics, PaymentResult};
use paystream_stack::postgres;
use paystream_stack::wait::NotReady;
use paystream_stack::StackSettings;
use paystream_topology::ShutdownHandle;
use sqlx::PgPool;

use crate::consumer::{self, ConsumerConfig, ConsumerError, Context, Handled, Handler};
use crate::dlq;
use crate::orders::answer::Answers;
use crate::retry::RetryPolicy;
use paystream_schemas::EventCodec;

pub use apply::{ApplyError, Outcome, Rejection};
pub use metrics::SettlementMetrics;

/// The processor's name: `dlq.processor`, and part of the client ids.
pub const PROCESSOR: &str = "settlement";
/// The consumer group of the deployed settlement consumers.
pub const DEFAULT_GROUP_ID: &str = "paystream-settlement";
/// How long start-up waits for the wallet database.
pub const STARTUP_TIMEOUT_MS: u64 = 30_000;

/// Everything settlement needs to run.
#[derive(Clone, Debug)]
pub struct SettlementConfig {
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// The Schema Registry's Confluent API, to fetch the writer schema of each result.
    pub schema_registry_url: String,
    /// The wallet database, where balances and payments live.
    pub wallet_db_url: String,
    /// The topic of PaymentResults (`payments.results`); tests use their own.
    pub results_topic: String,
    /// Where records that cannot be applied go (`payments.dlq`).
    pub dlq_topic: String,
    /// The consumer group: its committed offsets are settlement's progress. Instances of
    /// one deployment share it; a new group replays the whole topic (harmlessly).
    pub group_id: String,
    /// How long start-up waits for the wallet database to accept connections.
    pub startup_timeout: Duration,
    /// Back-off and bound for transient failures (registry, database, DLQ, broker).
    pub retry: RetryPolicy,
    /// Where the counters go; registered by the caller.
    pub metrics: SettlementMetrics,
    /// The scan for stranded reservations (threshold, interval).
    pub stranded: stranded::StrandedConfig,
}

impl SettlementConfig {
    /// The deployed configuration: the stack's addresses, the flow's topics, the default
    /// group and retry policy.
    pub fn new(stack: &StackSettings, metrics: SettlementMetrics) -> Self {
        Self {
            kafka_bootstrap: stack.kafka_bootstrap.clone(),
            schema_registry_url: stack.schema_registry_url.clone(),
            wallet_db_url: stack.wallet_db_url.clone(),
            results_topic: topics::PAYMENTS_RESULTS.to_owned(),
            dlq_topic: dlq::DEFAULT_TOPIC.to_owned(),
            group_id: DEFAULT_GROUP_ID.to_owned(),
            startup_timeout: Duration::from_millis(STARTUP_TIMEOUT_MS),
            retry: RetryPolicy::default(),
            metrics,
            stranded: stranded::StrandedConfig::default(),
        }
    }

    /// The shared loop's part of the configuration.
    pub fn consumer(&self) -> ConsumerConfig {
        ConsumerConfig::builder(PROCESSOR, &self.kafka_bootstrap, &self.schema_registry_url)
            .reads(&self.results_topic, &self.group_id, &self.dlq_topic)
            .retry(self.retry)
            .build()
    }
}

/// Why settlement stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    /// The wallet database did not accept connections at start.
    #[error(transparent)]
    DatabaseNotReady(#[from] NotReady),
    /// The consumer loop stopped: a client could not be built, a transient failure outlasted
    /// the retry budget, the DLQ or the final commit refused, or the database refused a change
    /// for a reason retrying cannot fix that is not the record's own data (a broken invariant:
    /// `ConsumerError::Handler` with the `ApplyError`). The record's offset is not committed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError<ApplyError>),
}

/// Runs settlement until `shutdown` is requested or an error stops it.
///
/// On shutdown the records in flight are finished (applied or dead-lettered, and their
/// offsets stored) unless they are waiting to retry, in which case they are left
/// uncommitted; then the stored offsets are committed synchronously and the consumer
/// leaves its group.
pub async fn run(config: SettlementConfig, shutdown: ShutdownHandle) -> Result<(), SettlementError> {
    let pool = postgres::connect(&config.wallet_db_url, config.startup_timeout).await?;
    // Orders' answers are encoded with the registry, before the result's transaction.
    let codec = EventCodec::new(&config.schema_registry_url)
        .map_err(|error| SettlementError::Consumer(ConsumerError::Registry(error)))?;
    // The scan stops when the loop returns, for a shutdown or an error.
    let stop_scan = ShutdownHandle::new();
    let scan = tokio::spawn(stranded::watch(
        pool.clone(),
        config.stranded,
        config.metrics.clone(),
        stop_scan.clone(),
    ));
    let handler = Arc::new(Settle {
        pool: pool.clone(),
        metrics: config.metrics.clone(),
        answers: Answers::new(pool.clone(), codec),
    });
    let consumed =
        consumer::run(config.consumer(), handler, config.metrics.consumer().clone(), shutdown).await;
    stop_scan.request();
    if let Err(error) = scan.await {
        tracing::error!(%error, "the scan for stranded reservations panicked");
    }
    pool.close().await;
    consumed.map_err(SettlementError::from)
}

/// Settlement's meaning of a result.
struct Settle {
    /// The wallet database.
    pool: PgPool,
    /// Applied and duplicate counters.
    metrics: SettlementMetrics,
    /// The answers to orders whose payments settle (`crate::orders::answer`).
    answers: Answers,
}

impl Handler for Settle {
    type Event = PaymentResult;
    type Error = ApplyError;

    async fn handle(&self, result: &PaymentResult, _context: &mut Context<'_>) -> Handled<ApplyError> {
        // A payment that came from an order (the inbox row tells) is answered in the
        // transaction that applies its result.
        let answer = match self.answers.for_result(result).await {
            Ok(answer) => answer,
            Err(error) if error.is_retriable() => {
                return Handled::Retriable { operation: "apply", error: error.to_string() }
            }
            Err(error) => {
                return Handled::Exhausted {
                    operation: "answer-order",
                    attempts: 1,
                    last_error: error.to_string(),
                }
            }
        };
        match apply::apply_answering(&self.pool, result, answer.as_ref()).await {
            Ok(Outcome::Applied(applied)) => {
                self.metrics.record_applied(applied.status);
                tracing::debug!(
                    payment_id = %result.payment_id,
                    payment_result_id = %result.payment_result_id,
                    status = applied.status.symbol(),
                    wallet_id = %result.wallet_id,
                    wallet_version = applied.wallet_version,
                    "result applied"
                );
                Handled::Done
            }
            Ok(Outcome::Duplicate) => {
                self.metrics.record_duplicate();
                tracing::debug!(payment_result_id = %result.payment_result_id, "duplicate result ignored");
                Handled::Done
            }
            Ok(Outcome::Rejected(rejection)) => Handled::Poison {
                reason: rejection.kind(),
                detail: format!(
                    "result {} ({}) of payment {}: {rejection}",
                    result.payment_result_id,
                    result.status.symbol(),
                    result.payment_id
                ),
            },
            Err(error) if error.is_transient() => {
                Handled::Retriable { operation: "apply", error: error.to_string() }
            }
            Err(error) => Handled::Fatal(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_consumer_reads_the_results_and_dead_letters_to_the_dlq() {
        let config = SettlementConfig::new(&StackSettings::from_env(), {
            SettlementMetrics::register(&prometheus::Registry::new()).unwrap()
        });
        assert_eq!(config.results_topic, "payments.results");
        assert_eq!(config.dlq_topic, "payments.dlq");
        let consumer = config.consumer();
        assert_eq!(consumer.topic, "payments.results");
        assert_eq!(consumer.processor, PROCESSOR);
        let client = consumer::client_config(&consumer);
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("group.id"), Some(DEFAULT_GROUP_ID));
    }
}
