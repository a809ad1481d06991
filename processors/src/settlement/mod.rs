//! The settlement consumer: applies each `PaymentResult` to the wallet database once.
//!
//! It reads `payments.results` (`read_committed`, so only results of committed saga
//! transactions) one record at a time. For each record:
//!
//! 1. decode it (the registry being away is retried; any other decode error sends the
//!    record to the DLQ with the error's kind as the reason);
//! 2. apply it in one Postgres transaction ([`apply`]): dedup by PaymentResultId, move the
//!    money, mark the payment settled; or refuse it ([`apply::Rejection`]) → DLQ;
//!    a transient database error is retried with the same record;
//! 3. only then store and commit the record's offset (asynchronously; a synchronous
//!    commit closes the run).
//!
//! Delivery is at least once and the effect exactly once: a record redelivered after a
//! crash, a rebalance or a replay by another group finds its PaymentResultId on the row
//! and changes nothing. Nothing is ever skipped: a record that cannot be applied now and
//! cannot be dead-lettered either stops the consumer with an error, its offset
//! uncommitted, after a bounded number of retries ([`crate::retry`]). A broken invariant
//! (a CHECK constraint refuses the change) also stops it: that is a bug to look at, not a
//! record to set aside.
//!
//! One consumer processes its partitions one record at a time; more instances in the
//! same group share the partitions (DESIGN.md, "Scale").

pub mod apply;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use paystream_schemas::events::{topics, PaymentResult};
use paystream_schemas::{DecodeError, EventCodec};
use paystream_stack::kafka;
use paystream_stack::postgres;
use paystream_stack::wait::NotReady;
use paystream_stack::StackSettings;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::error::SRCError;
use sqlx::PgPool;

use crate::dlq::{self, DeadLetter, DeadLetterQueue, SourceRecord};
use crate::retry::{self, Backoff, RetryError, RetryPolicy};
use crate::shutdown::Shutdown;

pub use apply::{ApplyError, Outcome, Rejection};
pub use metrics::SettlementMetrics;

/// The processor's name: `dlq.processor`, and part of the client ids.
pub const PROCESSOR: &str = "settlement";
/// The consumer group of the deployed settlement consumers.
pub const DEFAULT_GROUP_ID: &str = "paystream-settlement";
/// How long start-up waits for the wallet database.
pub const STARTUP_TIMEOUT_MS: u64 = 30_000;
/// `max.poll.interval.ms`: a member that does not ask for a record for this long is
/// considered dead by the group. The retry budget ([`retry::ATTEMPTS_MAX`]) stays inside it.
pub const MAX_POLL_INTERVAL_MS: u64 = 300_000;

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
        }
    }
}

/// Why settlement stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    /// The wallet database did not accept connections at start.
    #[error(transparent)]
    DatabaseNotReady(#[from] NotReady),
    /// The registry client could not be built (a malformed URL).
    #[error("schema registry client: {0}")]
    Registry(#[source] SRCError),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client: {0}")]
    Kafka(#[source] KafkaError),
    /// A transient failure outlasted the retry budget. The record's offset is not
    /// committed: the next run starts from it.
    #[error("{operation} of {topic}/{partition}@{offset} failed {attempts} times, giving up (offset not committed): {last_error}")]
    RetriesExhausted {
        operation: &'static str,
        topic: String,
        partition: i32,
        offset: i64,
        attempts: u32,
        last_error: String,
    },
    /// The database refused a change for a reason retrying cannot fix (a broken
    /// invariant, an unexpected error). The record's offset is not committed.
    #[error("applying {topic}/{partition}@{offset}: {source}")]
    Apply {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: ApplyError,
    },
    /// The DLQ refused a dead letter for a reason retrying cannot fix.
    #[error("dead-lettering {topic}/{partition}@{offset}: {source}")]
    DeadLetter {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: KafkaError,
    },
    /// The final, synchronous offset commit failed; the records after the last
    /// successful commit will be delivered again (and found to be duplicates).
    #[error("committing offsets at shutdown: {0}")]
    Commit(#[source] KafkaError),
}

/// Runs settlement until `shutdown` completes or an error stops it.
///
/// On shutdown the record in flight is finished (applied or dead-lettered, and its offset
/// stored) unless it is waiting to retry, in which case it is left uncommitted; then the
/// stored offsets are committed synchronously and the consumer leaves its group.
pub async fn run(
    config: SettlementConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SettlementError> {
    let mut shutdown = Shutdown::new(shutdown);
    let pool = postgres::connect(&config.wallet_db_url, config.startup_timeout).await?;
    let codec = EventCodec::new(&config.schema_registry_url).map_err(SettlementError::Registry)?;
    let dlq = DeadLetterQueue::new(&config.kafka_bootstrap, &config.dlq_topic, PROCESSOR)
        .map_err(SettlementError::Kafka)?;
    let consumer: StreamConsumer = consumer_config(&config).create().map_err(SettlementError::Kafka)?;
    consumer.subscribe(&[&config.results_topic]).map_err(SettlementError::Kafka)?;
    let consumer = Arc::new(consumer);
    tracing::info!(
        topic = %config.results_topic,
        group = %config.group_id,
        dlq = %config.dlq_topic,
        "settlement started"
    );

    let settlement = Settlement { config, pool, codec, dlq, consumer };
    let consumed = settlement.consume(&mut shutdown).await;
    // Offsets of records that were finished are committed even when a later one failed.
    let closed = settlement.close().await;
    match (&consumed, &closed) {
        (Ok(()), Ok(())) => tracing::info!("settlement stopped"),
        (Err(error), _) | (_, Err(error)) => tracing::error!(%error, "settlement stopped with an error"),
    }
    consumed.and(closed)
}

/// The consumer's settings: the stack's read_committed, manual-commit consumer, with the
/// settlement-specific keys spelled out.
fn consumer_config(config: &SettlementConfig) -> rdkafka::ClientConfig {
    let mut client = kafka::read_committed_consumer(&config.kafka_bootstrap, &config.group_id);
    client
        .set("client.id", format!("paystream-{PROCESSOR}"))
        // Offsets are stored by us after each record's effect is durable and committed
        // explicitly; the stack's consumer already turns both automatic paths off.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS.to_string());
    client
}

/// What happened to one record.
enum Handled {
    /// Its effect is durable (applied, duplicate or dead-lettered): commit past it.
    Done,
    /// Shutdown arrived while it waited to be retried: leave it uncommitted.
    Interrupted,
}

/// A running settlement consumer.
struct Settlement {
    /// Topics, group, retry policy and counters, as the caller gave them.
    config: SettlementConfig,
    /// The wallet database.
    pool: PgPool,
    /// Decodes results with their writer's schema.
    codec: EventCodec,
    /// Where refused records go.
    dlq: DeadLetterQueue,
    /// Shared with the blocking task that commits and closes it at the end.
    consumer: Arc<StreamConsumer>,
}

impl Settlement {
    /// The record loop.
    async fn consume<S: Future<Output = ()>>(
        &self,
        shutdown: &mut Shutdown<S>,
    ) -> Result<(), SettlementError> {
        let mut receive_backoff = Backoff::new(self.config.retry);
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.recv() => return Ok(()),
                received = self.consumer.recv() => received.map(|message| message.detach()),
            };
            let record = match received {
                Ok(record) => record,
                Err(error) => {
                    self.wait_after_receive_error(error, &mut receive_backoff, shutdown).await?;
                    continue;
                }
            };
            receive_backoff.reset();
            match self.handle(&record, shutdown).await? {
                Handled::Done => self.store_and_commit(&record),
                Handled::Interrupted => return Ok(()),
            }
        }
    }

    /// A failed `recv` (the broker away, the topic missing): pause and try again, within
    /// the retry budget counted over consecutive failures.
    async fn wait_after_receive_error<S: Future<Output = ()>>(
        &self,
        error: KafkaError,
        backoff: &mut Backoff,
        shutdown: &mut Shutdown<S>,
    ) -> Result<(), SettlementError> {
        let Some(delay) = backoff.next_delay() else {
            return Err(SettlementError::Kafka(error));
        };
        self.config.metrics.record_retry("consume");
        tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "receiving failed; retrying");
        tokio::select! {
            () = shutdown.recv() => {}
            () = tokio::time::sleep(delay) => {}
        }
        Ok(())
    }

    /// Decodes, applies or dead-letters one record.
    async fn handle<S: Future<Output = ()>>(
        &self,
        record: &OwnedMessage,
        shutdown: &mut Shutdown<S>,
    ) -> Result<Handled, SettlementError> {
        let source = SourceRecord {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
        };
        // A record without a value (a tombstone) decodes as "empty" and is dead-lettered.
        let payload = record.payload().unwrap_or_default();

        let codec = &self.codec;
        let decoded = retry::retry(
            self.config.retry,
            shutdown,
            || codec.decode::<PaymentResult>(payload),
            DecodeError::is_retriable,
            |error, delay| self.on_retry("decode", &source, error, delay),
        )
        .await;
        let result = match decoded {
            Ok(result) => result,
            Err(RetryError::Permanent(error)) => {
                return self.dead_letter(record, &source, error.kind(), &error.to_string(), shutdown).await;
            }
            Err(RetryError::Exhausted { attempts, last }) => {
                return Err(exhausted("decode", &source, attempts, &last));
            }
            Err(RetryError::Interrupted) => return Ok(Handled::Interrupted),
        };

        let pool = &self.pool;
        let applied = retry::retry(
            self.config.retry,
            shutdown,
            || apply::apply(pool, &result),
            ApplyError::is_transient,
            |error, delay| self.on_retry("apply", &source, error, delay),
        )
        .await;
        match applied {
            Ok(Outcome::Applied(applied)) => {
                self.config.metrics.record_applied(applied.status);
                tracing::debug!(
                    payment_id = %result.payment_id,
                    payment_result_id = %result.payment_result_id,
                    status = applied.status.symbol(),
                    wallet_id = %result.wallet_id,
                    wallet_version = applied.wallet_version,
                    "result applied"
                );
                Ok(Handled::Done)
            }
            Ok(Outcome::Duplicate) => {
                self.config.metrics.record_duplicate();
                tracing::debug!(payment_result_id = %result.payment_result_id, "duplicate result ignored");
                Ok(Handled::Done)
            }
            Ok(Outcome::Rejected(rejection)) => {
                let detail = format!(
                    "result {} ({}) of payment {}: {rejection}",
                    result.payment_result_id,
                    result.status.symbol(),
                    result.payment_id
                );
                self.dead_letter(record, &source, rejection.kind(), &detail, shutdown).await
            }
            Err(RetryError::Permanent(error)) => Err(SettlementError::Apply {
                topic: source.topic,
                partition: source.partition,
                offset: source.offset,
                source: error,
            }),
            Err(RetryError::Exhausted { attempts, last }) => {
                Err(exhausted("apply", &source, attempts, &last))
            }
            Err(RetryError::Interrupted) => Ok(Handled::Interrupted),
        }
    }

    /// Writes the original record to the DLQ and waits for the broker's acknowledgement.
    async fn dead_letter<S: Future<Output = ()>>(
        &self,
        record: &OwnedMessage,
        source: &SourceRecord,
        reason: &str,
        detail: &str,
        shutdown: &mut Shutdown<S>,
    ) -> Result<Handled, SettlementError> {
        let letter = DeadLetter {
            source,
            key: record.key(),
            value: record.payload(),
            headers: record.headers(),
            reason,
            detail,
        };
        let dlq = &self.dlq;
        let sent = retry::retry(
            self.config.retry,
            shutdown,
            || dlq.send(&letter),
            |error: &KafkaError| !is_permanent_delivery_error(error),
            |error, delay| self.on_retry("dead-letter", source, error, delay),
        )
        .await;
        match sent {
            Ok(delivered) => {
                self.config.metrics.record_dead_lettered(reason);
                tracing::warn!(
                    topic = %source.topic,
                    partition = source.partition,
                    offset = source.offset,
                    reason,
                    detail,
                    dlq = %dlq.topic(),
                    dlq_partition = delivered.partition,
                    dlq_offset = delivered.offset,
                    "record dead-lettered"
                );
                Ok(Handled::Done)
            }
            Err(RetryError::Permanent(error)) => Err(SettlementError::DeadLetter {
                topic: source.topic.clone(),
                partition: source.partition,
                offset: source.offset,
                source: error,
            }),
            Err(RetryError::Exhausted { attempts, last }) => {
                Err(exhausted("dead-letter", source, attempts, &last))
            }
            Err(RetryError::Interrupted) => Ok(Handled::Interrupted),
        }
    }

    fn on_retry(
        &self,
        operation: &'static str,
        source: &SourceRecord,
        error: &dyn std::fmt::Display,
        delay: Duration,
    ) {
        self.config.metrics.record_retry(operation);
        tracing::warn!(
            operation,
            topic = %source.topic,
            partition = source.partition,
            offset = source.offset,
            %error,
            delay_ms = delay.as_millis() as u64,
            "transient failure; retrying the same record"
        );
    }

    /// Marks `record` done: its offset + 1 is stored and an asynchronous commit sent.
    ///
    /// Both may fail without harm: storing fails when the partition was revoked meanwhile
    /// (its new owner starts at the last committed offset and finds duplicates), and a
    /// lost asynchronous commit is covered by the next one or by the final synchronous
    /// commit.
    fn store_and_commit(&self, record: &OwnedMessage) {
        let mut position = TopicPartitionList::new();
        let next = Offset::Offset(record.offset() + 1);
        if let Err(error) = position.add_partition_offset(record.topic(), record.partition(), next) {
            tracing::warn!(%error, "building the offset to store");
            return;
        }
        if let Err(error) = self.consumer.store_offsets(&position) {
            tracing::warn!(
                %error,
                topic = record.topic(),
                partition = record.partition(),
                offset = record.offset(),
                "storing the offset failed (partition revoked?); the record may be redelivered"
            );
            return;
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Async) {
            tracing::warn!(%error, "asynchronous offset commit failed; the next commit covers it");
        }
    }

    /// Commits the stored offsets synchronously, leaves the group and closes the pool.
    async fn close(self) -> Result<(), SettlementError> {
        let consumer = self.consumer;
        // Both the synchronous commit and the consumer's close block on the broker; keep
        // them off the async runtime.
        let committed = tokio::task::spawn_blocking(move || {
            let committed = consumer.commit_consumer_state(CommitMode::Sync);
            drop(consumer);
            committed
        })
        .await;
        self.pool.close().await;
        match committed {
            Ok(Ok(())) => Ok(()),
            // Nothing was stored since the last commit (or nothing was ever consumed).
            Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => Ok(()),
            Ok(Err(error)) => Err(SettlementError::Commit(error)),
            // The task only commits and drops the consumer: a panic there is a bug.
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            // The runtime is shutting down under us; the commit may not have happened.
            Err(_cancelled) => Err(SettlementError::Commit(KafkaError::Canceled)),
        }
    }
}

/// Delivery errors retrying cannot fix: the DLQ topic refuses this record as such.
fn is_permanent_delivery_error(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

fn exhausted(
    operation: &'static str,
    source: &SourceRecord,
    attempts: u32,
    last: &impl ToString,
) -> SettlementError {
    SettlementError::RetriesExhausted {
        operation,
        topic: source.topic.clone(),
        partition: source.partition,
        offset: source.offset,
        attempts,
        last_error: last.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_reads_committed_and_never_commits_on_its_own() {
        let config = SettlementConfig::new(&StackSettings::from_env(), {
            SettlementMetrics::register(&prometheus::Registry::new()).unwrap()
        });
        assert_eq!(config.results_topic, "payments.results");
        assert_eq!(config.dlq_topic, "payments.dlq");
        let client = consumer_config(&config);
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(client.get("group.id"), Some(DEFAULT_GROUP_ID));
    }

    #[test]
    fn oversized_records_are_not_retried_but_broker_trouble_is() {
        assert!(is_permanent_delivery_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(!is_permanent_delivery_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_permanent_delivery_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::NotEnoughReplicas
        )));
    }
}
