//! The one consumer loop every plain (non-topology) processor runs: consume → decode →
//! handle → retry → DLQ → commit, with per-partition workers and rebalance handling.
//!
//! Settlement and the dispatcher are [`Handler`]s: each says what one decoded record
//! means, and this loop does the rest the same way for both.
//!
//! # One record
//!
//! 1. **Decode** the value with the registry codec into the handler's [`Handler::Event`].
//!    A retriable decode error (the registry away) is retried with back-off and never
//!    dead-lettered; any other decode error sends the record to the DLQ with the error's
//!    kind as the reason.
//! 2. **Handle** it. The handler answers with [`Handled`]: `Done` (its effect is durable),
//!    `Retriable` (a dependency failed: the loop calls the handler again after a back-off,
//!    within [`RetryPolicy`]), `Poison(reason)` (the record itself is unusable: DLQ),
//!    `Fatal` (stop the consumer, offset uncommitted), or `Interrupted` (the stop signal
//!    arrived while the handler was waiting).
//! 3. **Dead-letter** when asked: the original key, value and headers plus the `dlq.*`
//!    reason headers ([`crate::dlq`]), acknowledged by the broker before going on.
//! 4. **Commit**: only once the handler's work or the dead letter is durable is the
//!    record's offset + 1 stored and an asynchronous commit sent; the final commit (at
//!    shutdown, at a revocation) is synchronous.
//!
//! Nothing is skipped: a record that outlasts the retry budget, or whose dead letter
//! cannot be written, stops the consumer with its offset uncommitted, and the next run
//! starts from it. Delivery is at least once; handlers make the effect exactly once (by
//! their own dedup keys).
//!
//! # Workers, order and bounds
//!
//! The loop receives from one [`StreamConsumer`] and routes each record to its
//! partition's worker task through a queue of at most [`ConsumerConfig::queue_max`]
//! records; a worker handles its records one at a time, in offset order, so the records
//! of one key are never reordered, and partitions proceed concurrently. When a queue is
//! full the loop waits for room, which delays its next `recv()` (and so a rebalance) by at
//! most one record's handling.
//!
//! # Rebalances
//!
//! A revoked partition's worker stops and drops its queue, its record in flight finishes
//! (bounded), and the finished offsets are committed, all inside the revoke callback and
//! so before the partition can be assigned elsewhere: at most one instance works a
//! partition's records at a time. [`rebalance`] explains how.
//!
//! # Shutdown
//!
//! The trigger is the process's one stop token, a [`ShutdownHandle`] (the topology runtime's;
//! the binary's signal handler requests it). When it is requested no new record is started; a record in flight finishes unless it is waiting to retry, in which case it is
//! left uncommitted; the stored offsets are committed synchronously and the consumer
//! leaves its group.

pub mod metrics;
pub mod rebalance;

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use paystream_schemas::{DecodeError, Event, EventCodec};
use paystream_stack::{kafka, trace};
use paystream_topology::ShutdownHandle;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::error::SRCError;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::dlq::{DeadLetter, DeadLetterQueue, SourceRecord};
use crate::retry::{self, Backoff, RetryError, RetryPolicy};

pub use metrics::{ConsumerMetrics, Labels};
use rebalance::{LoopContext, Partition, Partitions, WorkerStart};
pub use rebalance::{ABORT_GRACE_MS, REVOKE_DRAIN_MAX_MS};

/// `max.poll.interval.ms`: a member that does not ask for a record for this long is
/// considered dead by the group. The retry budget ([`retry::ELAPSED_MAX_MS`]) and a full
/// queue's wait for room stay inside it.
pub const MAX_POLL_INTERVAL_MS: u64 = 300_000;
/// Records queued per partition worker: enough to keep a worker busy between fetches,
/// small enough that a revocation has little to drop and memory stays bounded (256 ×
/// a few hundred bytes per record × partitions).
pub const QUEUE_MAX: usize = 256;

// A revocation holds up the whole group's rebalance; its bound must stay far inside the
// rebalance timeout (`max.poll.interval.ms`).
const _: () = assert!(REVOKE_DRAIN_MAX_MS + ABORT_GRACE_MS < MAX_POLL_INTERVAL_MS / 10);

/// The stop signal a worker and its handler watch: the worker's own [`ShutdownHandle`],
/// requested when its partition is revoked or when the loop ends (for a shutdown or an error),
/// whichever comes first.
pub type Stop = ShutdownHandle;

/// What one loop consumes and where it sends what it cannot use.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// The processor's name: `dlq.processor`, the client ids, the logs.
    pub processor: &'static str,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// The Schema Registry's Confluent API, to fetch each record's writer schema.
    pub schema_registry_url: String,
    /// The topic consumed.
    pub topic: String,
    /// Where poison records go (`payments.dlq`).
    pub dlq_topic: String,
    /// The consumer group: its committed offsets are the processor's progress.
    pub group_id: String,
    /// Back-off and bound for transient failures (registry, handler, DLQ, broker).
    pub retry: RetryPolicy,
    /// Records queued per partition worker.
    pub queue_max: usize,
    /// How long a revocation waits for the records in flight on the revoked partitions.
    pub revoke_drain: Duration,
}

impl ConsumerConfig {
    /// The start of `processor`'s loop against Kafka at `kafka_bootstrap` and the registry at
    /// `schema_registry_url`: every processor on this loop (settlement, the dispatcher's two
    /// loops, the orders inbox) builds its configuration here, so the deployed bounds
    /// ([`QUEUE_MAX`], [`REVOKE_DRAIN_MAX_MS`], [`RetryPolicy::default`]) are set in one place.
    pub fn builder(
        processor: &'static str,
        kafka_bootstrap: &str,
        schema_registry_url: &str,
    ) -> ConsumerBuilder {
        ConsumerBuilder(Self {
            processor,
            kafka_bootstrap: kafka_bootstrap.to_owned(),
            schema_registry_url: schema_registry_url.to_owned(),
            topic: String::new(),
            dlq_topic: String::new(),
            group_id: String::new(),
            retry: RetryPolicy::default(),
            queue_max: QUEUE_MAX,
            revoke_drain: Duration::from_millis(REVOKE_DRAIN_MAX_MS),
        })
    }
}

/// A [`ConsumerConfig`] being built ([`ConsumerConfig::builder`]).
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until built or run"]
pub struct ConsumerBuilder(ConsumerConfig);

impl ConsumerBuilder {
    /// Reads `topic` as group `group_id`, dead-lettering what cannot be used to `dlq_topic`.
    pub fn reads(mut self, topic: &str, group_id: &str, dlq_topic: &str) -> Self {
        (self.0.topic, self.0.group_id, self.0.dlq_topic) = (topic.into(), group_id.into(), dlq_topic.into());
        self
    }

    /// Retries transient failures under `retry` instead of the default policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.0.retry = retry;
        self
    }

    /// Queues at most `queue_max` records per partition worker instead of [`QUEUE_MAX`].
    pub fn queue_max(mut self, queue_max: usize) -> Self {
        self.0.queue_max = queue_max;
        self
    }

    /// The configuration.
    pub fn build(self) -> ConsumerConfig {
        self.0
    }
}

/// What a handler made of one record.
#[derive(Debug)]
pub enum Handled<E> {
    /// Its effect is durable (applied, duplicate, answered): commit past it.
    Done,
    /// A dependency failed in a way a retry may fix; the loop calls the handler again with
    /// the same record after a back-off, counted under `operation`.
    Retriable { operation: &'static str, error: String },
    /// The record itself cannot be used: it goes to the DLQ with this stable `reason`
    /// (declared in the processor's [`Labels::reasons`]) and `detail`, then is committed.
    Poison { reason: &'static str, detail: String },
    /// The handler's own retries of `operation` ran out ([`Context::retry`]): stop,
    /// offset uncommitted.
    Exhausted { operation: &'static str, attempts: u32, last_error: String },
    /// Retrying cannot fix it and it is not the record's fault (a broken invariant, a
    /// refused output): stop, offset uncommitted.
    Fatal(E),
    /// The stop signal arrived while the handler waited: leave the record uncommitted.
    Interrupted,
}

impl<E> Handled<E> {
    /// The handled form of a [`Context::retry`] that did not succeed: `permanent` decides
    /// what a non-transient error means.
    pub fn from_retry<F: Display>(
        operation: &'static str,
        error: RetryError<F>,
        permanent: impl FnOnce(F) -> Self,
    ) -> Self {
        match error {
            RetryError::Permanent(error) => permanent(error),
            RetryError::Exhausted { attempts, last } => {
                Self::Exhausted { operation, attempts, last_error: last.to_string() }
            }
            RetryError::Interrupted => Self::Interrupted,
        }
    }
}

/// What a handler may use while it handles one record.
pub struct Context<'a> {
    /// The record as it arrived (key, headers).
    pub message: &'a OwnedMessage,
    /// Where it was read.
    pub source: &'a SourceRecord,
    /// Requested on shutdown or when the record's partition is revoked.
    pub stop: &'a Stop,
    /// The loop's retry policy, for [`Context::retry`].
    policy: RetryPolicy,
    /// Where [`Context::retry`] counts.
    metrics: &'a ConsumerMetrics,
    /// For the logs.
    processor: &'static str,
}

impl Context<'_> {
    /// Runs `op` until it succeeds, fails permanently, runs out of attempts or the stop
    /// signal arrives during a pause, counting and logging each retry under `operation`.
    /// For a step that must not repeat the handler's earlier steps (the dispatcher's
    /// outcome, produced after an HTTP call).
    pub async fn retry<T, E, Fut>(
        &mut self,
        operation: &'static str,
        op: impl FnMut() -> Fut,
        is_transient: impl Fn(&E) -> bool,
    ) -> Result<T, RetryError<E>>
    where
        E: Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let (metrics, source, processor) = (self.metrics, self.source, self.processor);
        retry::retry(self.policy, self.stop, op, is_transient, |error, delay| {
            on_retry(metrics, processor, operation, source, error, delay)
        })
        .await
    }
}

/// One processor's meaning of a record.
pub trait Handler: Send + Sync + 'static {
    /// The contract of the topic's values.
    type Event: Event + Send + Sync;
    /// Why the handler stops the consumer ([`Handled::Fatal`]).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Handles one decoded record. Called again with the same record after a
    /// [`Handled::Retriable`], so everything before the durable effect must be repeatable.
    fn handle(
        &self,
        event: &Self::Event,
        context: &mut Context<'_>,
    ) -> impl Future<Output = Handled<Self::Error>> + Send;
}

/// Why a loop stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError<E: std::error::Error + 'static> {
    /// The loop needs a multi-thread runtime: a revocation blocks its thread while the
    /// revoked partitions' workers finish on others.
    #[error("the consumer loop needs a multi-thread tokio runtime")]
    Runtime,
    /// The registry client could not be built (a malformed URL).
    #[error("schema registry client: {0}")]
    Registry(#[source] SRCError),
    /// A Kafka client could not be created or subscribed, or receiving kept failing.
    #[error("kafka client: {0}")]
    Kafka(#[source] KafkaError),
    /// A transient failure outlasted the retry budget; the offset is not committed.
    #[error("{operation} of {topic}/{partition}@{offset} failed {attempts} times, giving up (offset not committed): {last_error}")]
    RetriesExhausted {
        operation: &'static str,
        topic: String,
        partition: i32,
        offset: i64,
        attempts: u32,
        last_error: String,
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
    /// The handler stopped the consumer ([`Handled::Fatal`]); the offset is not committed.
    #[error("handling {topic}/{partition}@{offset}: {source}")]
    Handler {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: E,
    },
    /// The final, synchronous offset commit failed; the records after the last successful
    /// commit will be delivered again (and found to be duplicates).
    #[error("committing offsets at shutdown: {0}")]
    Commit(#[source] KafkaError),
}

/// The consumer's settings: the stack's read_committed, manual-commit consumer, with the
/// loop's keys spelled out.
pub fn client_config(config: &ConsumerConfig) -> rdkafka::ClientConfig {
    let mut client = kafka::read_committed_consumer(&config.kafka_bootstrap, &config.group_id);
    client
        .set("client.id", format!("paystream-{}", config.processor))
        // Offsets are stored by the workers after each record's effect is durable and
        // committed explicitly; both automatic paths stay off.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS.to_string())
        // Cooperative rebalancing: a member joining or leaving moves only the partitions
        // that change owner; the others keep their workers and queues.
        .set("partition.assignment.strategy", "cooperative-sticky");
    client
}

/// Runs the loop for `handler` until `shutdown` is requested or an error stops it.
pub async fn run<H: Handler>(
    config: ConsumerConfig,
    handler: Arc<H>,
    metrics: ConsumerMetrics,
    shutdown: ShutdownHandle,
) -> Result<(), ConsumerError<H::Error>> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if !multi_thread {
        return Err(ConsumerError::Runtime);
    }
    let codec = EventCodec::new(&config.schema_registry_url).map_err(ConsumerError::Registry)?;
    let dlq = DeadLetterQueue::new(&config.kafka_bootstrap, &config.dlq_topic, config.processor)
        .map_err(ConsumerError::Kafka)?;
    let partitions = Arc::new(Partitions::default());
    let context = LoopContext {
        processor: config.processor,
        partitions: partitions.clone(),
        revoke_drain: config.revoke_drain,
        metrics: metrics.clone(),
    };
    let consumer: StreamConsumer<LoopContext> =
        client_config(&config).create_with_context(context).map_err(ConsumerError::Kafka)?;
    consumer.subscribe(&[&config.topic]).map_err(ConsumerError::Kafka)?;
    tracing::info!(
        processor = config.processor,
        topic = %config.topic,
        group = %config.group_id,
        dlq = %config.dlq_topic,
        "consumer started"
    );

    let shared = Arc::new(Shared { config, handler, codec, dlq, metrics, consumer: Arc::new(consumer) });
    let mut workers = JoinSet::new();
    let consumed = consume(&shared, &partitions, &mut workers, &shutdown).await;
    // Stop every worker (a record in flight finishes first) and collect them.
    partitions.clear();
    let drained = join_all(&mut workers).await;
    let processor = shared.config.processor;
    let closed = close(shared).await;
    let result = consumed.and(drained).and(closed);
    match &result {
        Ok(()) => tracing::info!(processor, "consumer stopped"),
        Err(error) => tracing::error!(processor, %error, "consumer stopped with an error"),
    }
    result
}

/// What the workers share.
struct Shared<H: Handler> {
    config: ConsumerConfig,
    handler: Arc<H>,
    /// Decodes values with their writer's schema.
    codec: EventCodec,
    dlq: DeadLetterQueue,
    metrics: ConsumerMetrics,
    /// Workers store offsets and commit through it; the loop receives from it.
    consumer: Arc<StreamConsumer<LoopContext>>,
}

type Workers<E> = JoinSet<Result<(), ConsumerError<E>>>;

/// The main loop: receive, route each record to its partition's worker, watch the workers.
async fn consume<H: Handler>(
    shared: &Arc<Shared<H>>,
    partitions: &Partitions,
    workers: &mut Workers<H::Error>,
    shutdown: &ShutdownHandle,
) -> Result<(), ConsumerError<H::Error>> {
    let mut receive_backoff = Backoff::new(shared.config.retry);
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.requested() => return Ok(()),
            Some(joined) = workers.join_next() => match joined {
                // A worker ends early after a revocation (Ok) or with an error.
                Ok(Ok(())) => continue,
                Ok(Err(error)) => return Err(error),
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                // Aborted after outlasting a revocation's bound.
                Err(_cancelled) => continue,
            },
            received = shared.consumer.recv() => received.map(|message| message.detach()),
        };
        let record = match received {
            Ok(record) => record,
            Err(error) if is_connection_state(&error) => {
                // librdkafka reconnects by itself and queues one such error per change of a
                // broker connection; while the broker restarts they pile up. They say nothing
                // about a record, so they spend no retry budget: counting them once exhausted
                // the budget minutes after the broker was back.
                shared.metrics.record_retry("consume");
                tracing::warn!(processor = shared.config.processor, %error, "broker connection lost; librdkafka reconnects");
                continue;
            }
            Err(error) => {
                let Some(delay) = receive_backoff.next_delay() else {
                    return Err(ConsumerError::Kafka(error));
                };
                shared.metrics.record_retry("consume");
                tracing::warn!(
                    processor = shared.config.processor,
                    %error,
                    delay_ms = delay.as_millis() as u64,
                    "receiving failed; retrying"
                );
                tokio::select! {
                    () = shutdown.requested() => return Ok(()),
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        receive_backoff.reset();
        let partition: Partition = (record.topic().to_owned(), record.partition());
        if !partitions.is_assigned(&partition) {
            // Cannot happen with librdkafka's fetch versions; if it did, the partition's
            // owner reads the record from its committed offset.
            tracing::warn!(
                processor = shared.config.processor,
                topic = %partition.0,
                partition = partition.1,
                offset = record.offset(),
                "record of a partition not assigned to this member; dropped"
            );
            continue;
        }
        let queue = match partitions.queue(&partition) {
            Some(queue) => queue,
            None => {
                let (slot, start) = Partitions::prepare(shared.config.queue_max);
                let queue = slot.queue();
                let abort = workers.spawn(worker(shared.clone(), start));
                partitions.insert(partition, slot, abort);
                queue
            }
        };
        tokio::select! {
            biased;
            () = shutdown.requested() => return Ok(()),
            sent = queue.send(record) => {
                if sent.is_err() {
                    // The worker is gone, so it failed: join_next reports its error, and
                    // nothing after this record may be committed by anyone else.
                    continue;
                }
            }
        }
    }
}

/// Whether a consumer error only reports the state of a broker connection (the broker restarting,
/// a network blip), which librdkafka recovers from on its own.
fn is_connection_state(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::NetworkException
        ) | KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
        )
    )
}

/// Waits for every worker; the first error wins.
async fn join_all<E: std::error::Error + 'static>(workers: &mut Workers<E>) -> Result<(), ConsumerError<E>> {
    let mut result = Ok(());
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                if result.is_ok() {
                    result = Err(error);
                }
            }
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_cancelled) => {}
        }
    }
    result
}

/// What became of one record in the loop.
enum Finished {
    /// Durable (handled or dead-lettered): commit past it.
    Done,
    /// The stop signal arrived first: leave it uncommitted.
    Interrupted,
}

/// Works one partition's records in order until its queue closes or it is told to stop.
async fn worker<H: Handler>(
    shared: Arc<Shared<H>>,
    start: WorkerStart,
) -> Result<(), ConsumerError<H::Error>> {
    // `stop` is requested by the revocation of the partition or by the loop's end.
    let WorkerStart { mut queue, stop, exit: _exit } = start;
    loop {
        let record = tokio::select! {
            biased;
            () = stop.requested() => return Ok(()),
            record = queue.recv() => match record {
                Some(record) => record,
                None => return Ok(()),
            },
        };
        // One span per record, under the trace its headers carry (paystream_stack::trace).
        let span = trace::record_span(
            shared.config.processor,
            record.topic(),
            record.partition(),
            record.offset(),
            record.key().and_then(|key| std::str::from_utf8(key).ok()).unwrap_or_default(),
            trace::parent_from_kafka(record.headers()),
        );
        match shared.process(&record, &stop).instrument(span).await? {
            Finished::Done => {
                shared.store_and_commit(&record);
                shared.metrics.record_finished();
            }
            Finished::Interrupted => return Ok(()),
        }
    }
}

impl<H: Handler> Shared<H> {
    /// Decodes, handles (with retries) or dead-letters one record.
    async fn process(&self, record: &OwnedMessage, stop: &Stop) -> Result<Finished, ConsumerError<H::Error>> {
        let source = SourceRecord {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
        };
        // A record without a value (a tombstone) decodes as "empty" and is dead-lettered.
        let payload = record.payload().unwrap_or_default();
        let (codec, metrics, processor) = (&self.codec, &self.metrics, self.config.processor);
        let decoded = retry::retry(
            self.config.retry,
            stop,
            || codec.decode::<H::Event>(payload),
            DecodeError::is_retriable,
            |error, delay| on_retry(metrics, processor, "decode", &source, error, delay),
        )
        .await;
        let event = match decoded {
            Ok(event) => event,
            Err(RetryError::Permanent(error)) => {
                return self.dead_letter(record, &source, error.kind(), &error.to_string(), stop).await;
            }
            Err(RetryError::Exhausted { attempts, last }) => {
                return Err(exhausted("decode", &source, attempts, &last));
            }
            Err(RetryError::Interrupted) => return Ok(Finished::Interrupted),
        };

        let mut backoff = Backoff::new(self.config.retry);
        loop {
            let mut context = Context {
                message: record,
                source: &source,
                stop,
                policy: self.config.retry,
                metrics,
                processor,
            };
            let (operation, error) = match self.handler.handle(&event, &mut context).await {
                Handled::Done => return Ok(Finished::Done),
                Handled::Poison { reason, detail } => {
                    return self.dead_letter(record, &source, reason, &detail, stop).await;
                }
                Handled::Retriable { operation, error } => (operation, error),
                Handled::Exhausted { operation, attempts, last_error } => {
                    return Err(exhausted(operation, &source, attempts, &last_error));
                }
                Handled::Fatal(error) => {
                    return Err(ConsumerError::Handler {
                        topic: source.topic,
                        partition: source.partition,
                        offset: source.offset,
                        source: error,
                    });
                }
                Handled::Interrupted => return Ok(Finished::Interrupted),
            };
            let Some(delay) = backoff.next_delay() else {
                return Err(exhausted(operation, &source, backoff.failures(), &error));
            };
            on_retry(metrics, processor, operation, &source, &error, delay);
            tokio::select! {
                () = stop.requested() => return Ok(Finished::Interrupted),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Writes the original record to the DLQ and waits for the broker's acknowledgement.
    async fn dead_letter(
        &self,
        record: &OwnedMessage,
        source: &SourceRecord,
        reason: &str,
        detail: &str,
        stop: &Stop,
    ) -> Result<Finished, ConsumerError<H::Error>> {
        let letter = DeadLetter {
            source,
            key: record.key(),
            value: record.payload(),
            headers: record.headers(),
            reason,
            detail,
        };
        let (dlq, metrics, processor) = (&self.dlq, &self.metrics, self.config.processor);
        let sent = retry::retry(
            self.config.retry,
            stop,
            || dlq.send(&letter),
            |error: &KafkaError| !is_permanent_delivery_error(error),
            |error, delay| on_retry(metrics, processor, "dead-letter", source, error, delay),
        )
        .await;
        match sent {
            Ok(delivered) => {
                self.metrics.record_dead_lettered(reason);
                tracing::warn!(
                    processor,
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
                Ok(Finished::Done)
            }
            Err(RetryError::Permanent(error)) => Err(ConsumerError::DeadLetter {
                topic: source.topic.clone(),
                partition: source.partition,
                offset: source.offset,
                source: error,
            }),
            Err(RetryError::Exhausted { attempts, last }) => {
                Err(exhausted("dead-letter", source, attempts, &last))
            }
            Err(RetryError::Interrupted) => Ok(Finished::Interrupted),
        }
    }

    /// Marks `record` done: its offset + 1 is stored and an asynchronous commit sent.
    ///
    /// Both may fail without harm: storing fails when the partition is no longer assigned
    /// (its new owner starts at the last committed offset and finds duplicates), and a
    /// lost asynchronous commit is covered by the next one, the revocation's or the final
    /// synchronous commit.
    fn store_and_commit(&self, record: &OwnedMessage) {
        let mut position = TopicPartitionList::new();
        let next = Offset::Offset(record.offset() + 1);
        if let Err(error) = position.add_partition_offset(record.topic(), record.partition(), next) {
            tracing::warn!(%error, "building the offset to store");
            return;
        }
        if let Err(error) = self.consumer.store_offsets(&position) {
            tracing::warn!(
                processor = self.config.processor,
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
}

/// Commits the stored offsets synchronously and leaves the group.
async fn close<H: Handler>(shared: Arc<Shared<H>>) -> Result<(), ConsumerError<H::Error>> {
    let consumer = shared.consumer.clone();
    drop(shared);
    // Both the synchronous commit and the consumer's close block on the broker; keep them
    // off the async runtime.
    let committed = tokio::task::spawn_blocking(move || {
        let committed = consumer.commit_consumer_state(CommitMode::Sync);
        drop(consumer);
        committed
    })
    .await;
    match committed {
        // Nothing was stored since the last commit (or nothing was ever consumed).
        Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => Ok(()),
        Ok(Err(error)) => Err(ConsumerError::Commit(error)),
        // The task only commits and drops the consumer: a panic there is a bug.
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        // The runtime is shutting down under us; the commit may not have happened.
        Err(_cancelled) => Err(ConsumerError::Commit(KafkaError::Canceled)),
    }
}

fn on_retry(
    metrics: &ConsumerMetrics,
    processor: &'static str,
    operation: &'static str,
    source: &SourceRecord,
    error: &dyn Display,
    delay: Duration,
) {
    metrics.record_retry(operation);
    tracing::warn!(
        processor,
        operation,
        topic = %source.topic,
        partition = source.partition,
        offset = source.offset,
        %error,
        delay_ms = delay.as_millis() as u64,
        "transient failure; retrying the same record"
    );
}

/// Delivery errors retrying cannot fix: the topic refuses this record as such.
pub fn is_permanent_delivery_error(error: &KafkaError) -> bool {
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

fn exhausted<E: std::error::Error + 'static>(
    operation: &'static str,
    source: &SourceRecord,
    attempts: u32,
    last: &impl ToString,
) -> ConsumerError<E> {
    ConsumerError::RetriesExhausted {
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
    fn a_broker_away_is_a_connection_state_and_a_bad_record_is_not() {
        assert!(is_connection_state(&KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown)));
        assert!(is_connection_state(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_connection_state(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
        assert!(!is_connection_state(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::GroupAuthorizationFailed
        )));
    }

    fn config() -> ConsumerConfig {
        ConsumerConfig::builder("test", "127.0.0.1:9092", "http://127.0.0.1:8081/apis/ccompat/v7")
            .reads("t", "g", "payments.dlq")
            .build()
    }

    #[test]
    fn the_builder_sets_the_deployed_bounds_unless_told_otherwise() {
        let built = config();
        assert_eq!(
            (built.topic.as_str(), built.group_id.as_str(), built.dlq_topic.as_str()),
            ("t", "g", "payments.dlq")
        );
        assert_eq!(built.retry, RetryPolicy::default());
        assert_eq!(built.queue_max, QUEUE_MAX);
        assert_eq!(built.revoke_drain, Duration::from_millis(REVOKE_DRAIN_MAX_MS));
        let retry = RetryPolicy { attempts_max: 3, ..RetryPolicy::default() };
        let tuned = ConsumerConfig::builder("test", "k", "r").retry(retry).queue_max(7).build();
        assert_eq!((tuned.retry, tuned.queue_max), (retry, 7));
    }

    #[test]
    fn the_consumer_reads_committed_never_commits_on_its_own_and_rebalances_cooperatively() {
        let client = client_config(&config());
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(client.get("group.id"), Some("g"));
        assert_eq!(client.get("client.id"), Some("paystream-test"));
        assert_eq!(client.get("partition.assignment.strategy"), Some("cooperative-sticky"));
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_is_refused() {
        struct Nothing;
        impl Handler for Nothing {
            type Event = paystream_schemas::events::PaymentResult;
            type Error = std::io::Error;
            async fn handle(&self, _: &Self::Event, _: &mut Context<'_>) -> Handled<Self::Error> {
                Handled::Done
            }
        }
        let metrics = ConsumerMetrics::register(
            &prometheus::Registry::new(),
            Labels { prefix: "paystream_test", reasons: &[], operations: &[] },
        )
        .unwrap();
        let refused = run(config(), Arc::new(Nothing), metrics, ShutdownHandle::new()).await;
        assert!(matches!(refused, Err(ConsumerError::Runtime)));
    }
}
