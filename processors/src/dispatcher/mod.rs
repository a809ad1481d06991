//! The provider dispatcher: turns each `ChargeCommand` into an HTTP charge and reports
//! what became of it as a `DispatchOutcome`.
//!
//! It reads `payments.provider-commands` (`read_committed`: only commands of committed
//! saga transactions; group `paystream-dispatcher`). For each command:
//!
//! 1. decode it (the registry being away is retried; any other decode error sends the
//!    record to the DLQ with the error's kind as the reason);
//! 2. skip it if its commandId was answered within the in-memory window ([`dedup`]);
//! 3. call the provider ([`provider`]): `POST /v1/charges` with
//!    `Idempotency-Key: <paymentId>`, connect and request timeouts, at most
//!    [`HttpRetryPolicy::attempts_max`] attempts spaced by full-jitter backoff ([`backoff`]),
//!    at most [`DispatcherConfig::concurrency_max`] calls on the wire at once;
//! 4. produce the outcome to `payments.dispatch-outcomes`, keyed by paymentId, with an
//!    idempotent producer, and wait for the broker's acknowledgement: `ACCEPTED` on a 2xx,
//!    `REJECTED` on a 4xx other than 408/429, `RETRIES_EXHAUSTED` after the last attempt;
//! 5. only then store and commit the command's offset.
//!
//! # Delivery
//!
//! The HTTP call cannot be inside a Kafka transaction, so the dispatcher is at least once
//! end to end: a crash between the call and the commit (or between the outcome and the
//! commit) repeats the call and may repeat the outcome. That is safe because of two
//! idempotency keys held by others: the provider deduplicates charges by the
//! `Idempotency-Key` (the paymentId; the same charge again gets the same answer and
//! charges nothing), and the saga must deduplicate outcomes by commandId. The commandId
//! window here only saves calls; the provider's key is the guarantee.
//!
//! After `RETRIES_EXHAUSTED` the provider may still have taken the charge (a 202 lost to
//! a timeout); its callback then arrives after the saga has failed the payment, and the
//! saga's terminal state absorbs it (DESIGN.md). Reconciling such a charge with the
//! provider is outside the dispatcher.
//!
//! # Concurrency and order
//!
//! One task per assigned partition processes its commands in order, so the commands of
//! one payment (one key, one partition) are never reordered; partitions proceed
//! concurrently, and a semaphore bounds the HTTP calls in flight across all of them. A
//! command that is being retried holds up its partition for at most
//! `attempts_max × request timeout + (attempts_max − 1) × backoff_max` (40 s with the
//! defaults); the other partitions carry on. Each partition task buffers at most
//! [`DispatcherConfig::partition_buffer_max`] records; when it is full the consumer waits.
//!
//! On shutdown no new command is started; a call in progress finishes (bounded by the
//! request timeout) and its outcome is produced and committed; a command waiting for its
//! next attempt is left uncommitted and will be dispatched again by the next run.

pub mod backoff;
pub mod dedup;
pub mod metrics;
pub mod provider;

use paystream_topology::dlq::truncate;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paystream_schemas::events::{topics, ChargeCommand, DispatchOutcome, DispatchResult};
use paystream_schemas::{time, DecodeError, EventCodec};
use paystream_stack::kafka;
use paystream_stack::StackSettings;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::error::SRCError;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::dlq::{self, DeadLetter, DeadLetterQueue, SourceRecord};
use crate::retry::{self, Backoff, RetryError, RetryPolicy};
use crate::shutdown::Shutdown;

pub use backoff::HttpRetryPolicy;
pub use dedup::DedupWindow;
pub use metrics::DispatcherMetrics;
pub use provider::{Attempt, AttemptError, ProviderClient};

/// The processor's name: `dlq.processor`, and part of the client ids.
pub const PROCESSOR: &str = "dispatcher";
/// The consumer group of the deployed dispatchers.
pub const DEFAULT_GROUP_ID: &str = "paystream-dispatcher";
/// The provider of the local stack: the simulator (`paystream provider-sim`).
pub const DEFAULT_PROVIDER_URL: &str = "http://127.0.0.1:8090";
/// Longest wait to establish a connection to the provider.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longest wait for one attempt, connection included.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// HTTP calls in flight across all partitions.
pub const CONCURRENCY_MAX: usize = 32;
/// Records buffered per partition task.
pub const PARTITION_BUFFER_MAX: usize = 256;
/// `max.poll.interval.ms`: the consumer may wait on a full partition buffer this long
/// before the group considers it dead.
pub const MAX_POLL_INTERVAL_MS: u64 = 300_000;
/// How long an outcome may wait for the broker's acknowledgement before the send fails
/// and is retried.
pub const DELIVERY_TIMEOUT_MS: u64 = 30_000;
/// How long a send may wait for room in the producer's queue.
pub const ENQUEUE_TIMEOUT_MS: u64 = 5_000;
/// Longest `detail` written into an outcome.
pub const DETAIL_BYTES_MAX: usize = 1_000;

/// Everything the dispatcher needs to run.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// The Schema Registry's Confluent API (decode commands, encode outcomes).
    pub schema_registry_url: String,
    /// Where ChargeCommands are read (`payments.provider-commands`); tests use their own.
    pub commands_topic: String,
    /// Where DispatchOutcomes go (`payments.dispatch-outcomes`).
    pub outcomes_topic: String,
    /// Where undecodable commands go (`payments.dlq`).
    pub dlq_topic: String,
    /// The consumer group: its committed offsets are the dispatcher's progress.
    pub group_id: String,
    /// The provider's base URL; charges go to `{provider_url}/v1/charges`.
    pub provider_url: String,
    /// Longest wait to connect to the provider.
    pub connect_timeout: Duration,
    /// Longest wait for one attempt.
    pub request_timeout: Duration,
    /// Attempts and backoff of the HTTP calls.
    pub http_retry: HttpRetryPolicy,
    /// HTTP calls in flight at once, across partitions.
    pub concurrency_max: usize,
    /// Records buffered per partition task.
    pub partition_buffer_max: usize,
    /// Command ids remembered for deduplication.
    pub dedup_window_max: usize,
    /// Back-off and bound for Kafka-side transient failures (registry, broker, DLQ).
    pub retry: RetryPolicy,
    /// Where the counters go; registered by the caller.
    pub metrics: DispatcherMetrics,
}

impl DispatcherConfig {
    /// The deployed configuration: the stack's addresses, the flow's topics, the defaults.
    pub fn new(stack: &StackSettings, provider_url: &str, metrics: DispatcherMetrics) -> Self {
        Self {
            kafka_bootstrap: stack.kafka_bootstrap.clone(),
            schema_registry_url: stack.schema_registry_url.clone(),
            commands_topic: topics::PAYMENTS_PROVIDER_COMMANDS.to_owned(),
            outcomes_topic: topics::PAYMENTS_DISPATCH_OUTCOMES.to_owned(),
            dlq_topic: dlq::DEFAULT_TOPIC.to_owned(),
            group_id: DEFAULT_GROUP_ID.to_owned(),
            provider_url: provider_url.to_owned(),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            http_retry: HttpRetryPolicy::default(),
            concurrency_max: CONCURRENCY_MAX,
            partition_buffer_max: PARTITION_BUFFER_MAX,
            dedup_window_max: dedup::WINDOW_MAX,
            retry: RetryPolicy::default(),
            metrics,
        }
    }
}

/// Why the dispatcher stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The registry client could not be built (a malformed URL).
    #[error("schema registry client: {0}")]
    Registry(#[source] SRCError),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client: {0}")]
    Kafka(#[source] KafkaError),
    /// The HTTP client could not be built.
    #[error("provider HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    /// A Kafka-side transient failure outlasted the retry budget. The command's offset is
    /// not committed: the next run starts from it.
    #[error("{operation} of {topic}/{partition}@{offset} failed {attempts} times, giving up (offset not committed): {last_error}")]
    RetriesExhausted {
        operation: &'static str,
        topic: String,
        partition: i32,
        offset: i64,
        attempts: u32,
        last_error: String,
    },
    /// The outcome or the dead letter was refused for a reason retrying cannot fix.
    #[error("{operation} of {topic}/{partition}@{offset}: {source}")]
    Produce {
        operation: &'static str,
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: KafkaError,
    },
    /// The final, synchronous offset commit failed; commands after the last successful
    /// commit will be dispatched again (and deduplicated by the provider).
    #[error("committing offsets at shutdown: {0}")]
    Commit(#[source] KafkaError),
}

/// Runs the dispatcher until `shutdown` completes or an error stops it.
pub async fn run(config: DispatcherConfig, shutdown: impl Future<Output = ()>) -> Result<(), DispatchError> {
    let mut shutdown = Shutdown::new(shutdown);
    let codec = EventCodec::new(&config.schema_registry_url).map_err(DispatchError::Registry)?;
    let dlq = DeadLetterQueue::new(&config.kafka_bootstrap, &config.dlq_topic, PROCESSOR)
        .map_err(DispatchError::Kafka)?;
    let producer: FutureProducer = producer_config(&config).create().map_err(DispatchError::Kafka)?;
    let provider = ProviderClient::new(&config.provider_url, config.connect_timeout, config.request_timeout)
        .map_err(DispatchError::Http)?;
    let consumer: StreamConsumer = consumer_config(&config).create().map_err(DispatchError::Kafka)?;
    consumer.subscribe(&[&config.commands_topic]).map_err(DispatchError::Kafka)?;
    tracing::info!(
        topic = %config.commands_topic,
        outcomes = %config.outcomes_topic,
        group = %config.group_id,
        provider = %provider.charges_url(),
        attempts_max = config.http_retry.attempts_max,
        concurrency_max = config.concurrency_max,
        "dispatcher started"
    );
    let shared = Arc::new(Shared {
        calls: Semaphore::new(config.concurrency_max.max(1)),
        dedup: Mutex::new(DedupWindow::new(config.dedup_window_max)),
        consumer: Arc::new(consumer),
        config,
        codec,
        dlq,
        producer,
        provider,
    });

    let (stop, stopped) = watch::channel(false);
    let mut partitions = Partitions { senders: HashMap::new(), tasks: JoinSet::new(), stopped };
    let consumed = consume(&shared, &mut partitions, &mut shutdown).await;
    // Stop every partition task (a call in progress finishes first) and collect them.
    let _ = stop.send(true);
    let drained = partitions.join_all().await;
    let closed = close(shared).await;
    let result = consumed.and(drained).and(closed);
    match &result {
        Ok(()) => tracing::info!("dispatcher stopped"),
        Err(error) => tracing::error!(%error, "dispatcher stopped with an error"),
    }
    result
}

/// The consumer's settings: the stack's read_committed, manual-commit consumer.
fn consumer_config(config: &DispatcherConfig) -> rdkafka::ClientConfig {
    let mut client = kafka::read_committed_consumer(&config.kafka_bootstrap, &config.group_id);
    client
        .set("client.id", format!("paystream-{PROCESSOR}"))
        // Offsets are stored by the partition tasks after each command's outcome is
        // acknowledged, and committed explicitly; both automatic paths stay off.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS.to_string());
    client
}

/// The outcome producer: idempotent, `acks=all`, Java's murmur2 partitioner (so an
/// outcome lands on its payment's partition, co-partitioned with the saga's inputs).
fn producer_config(config: &DispatcherConfig) -> rdkafka::ClientConfig {
    let mut client = kafka::idempotent_producer(&config.kafka_bootstrap);
    client
        .set("client.id", format!("paystream-{PROCESSOR}"))
        .set("message.timeout.ms", DELIVERY_TIMEOUT_MS.to_string());
    client
}

/// What the partition tasks share.
struct Shared {
    config: DispatcherConfig,
    codec: EventCodec,
    dlq: DeadLetterQueue,
    /// Writes outcomes.
    producer: FutureProducer,
    /// Calls the provider.
    provider: ProviderClient,
    /// One permit per HTTP call in flight.
    calls: Semaphore,
    /// Command ids answered recently (a short critical section, never across an `.await`).
    dedup: Mutex<DedupWindow>,
    /// Partition tasks store offsets through it; the main loop receives from it.
    consumer: Arc<StreamConsumer>,
}

/// The partition tasks and the channels that feed them.
struct Partitions {
    /// One bounded channel per partition seen, to its task.
    senders: HashMap<(String, i32), mpsc::Sender<OwnedMessage>>,
    /// The tasks; one ends early only with an error (or a panic).
    tasks: JoinSet<Result<(), DispatchError>>,
    /// Turns true when the tasks are to stop.
    stopped: watch::Receiver<bool>,
}

impl Partitions {
    /// The channel to `record`'s partition task, starting the task on first use.
    fn sender(&mut self, shared: &Arc<Shared>, record: &OwnedMessage) -> mpsc::Sender<OwnedMessage> {
        let key = (record.topic().to_owned(), record.partition());
        self.senders
            .entry(key)
            .or_insert_with(|| {
                let (sender, receiver) = mpsc::channel(shared.config.partition_buffer_max.max(1));
                self.tasks.spawn(partition_task(shared.clone(), receiver, self.stopped.clone()));
                sender
            })
            .clone()
    }

    /// Closes the channels and waits for every task; the first error wins.
    async fn join_all(mut self) -> Result<(), DispatchError> {
        self.senders.clear();
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
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
}

/// The main loop: receive, hand each record to its partition's task, watch the tasks.
async fn consume<S: Future<Output = ()>>(
    shared: &Arc<Shared>,
    partitions: &mut Partitions,
    shutdown: &mut Shutdown<S>,
) -> Result<(), DispatchError> {
    let mut receive_backoff = Backoff::new(shared.config.retry);
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.recv() => return Ok(()),
            Some(joined) = partitions.tasks.join_next() => match joined {
                // A task ends early only with an error: stop everything with it.
                Ok(Ok(())) => continue,
                Ok(Err(error)) => return Err(error),
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(_cancelled) => continue,
            },
            received = shared.consumer.recv() => received.map(|message| message.detach()),
        };
        let record = match received {
            Ok(record) => record,
            Err(error) => {
                let Some(delay) = receive_backoff.next_delay() else {
                    return Err(DispatchError::Kafka(error));
                };
                shared.config.metrics.record_kafka_retry("consume");
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "receiving failed; retrying");
                tokio::select! {
                    () = shutdown.recv() => return Ok(()),
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        receive_backoff.reset();
        let sender = partitions.sender(shared, &record);
        tokio::select! {
            biased;
            () = shutdown.recv() => return Ok(()),
            sent = sender.send(record) => {
                if sent.is_err() {
                    // The task is gone, so it failed: its error is collected by join_all,
                    // and nothing after this record may be committed by anyone else.
                    return Ok(());
                }
            }
        }
    }
}

/// What happened to one command.
enum Handled {
    /// Its outcome is durable (answered, duplicate or dead-lettered): commit past it.
    Done,
    /// Shutdown arrived while it waited to be retried: leave it uncommitted.
    Interrupted,
}

/// Processes one partition's commands in order until its channel closes or stop is set.
async fn partition_task(
    shared: Arc<Shared>,
    mut records: mpsc::Receiver<OwnedMessage>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), DispatchError> {
    let mut shutdown = Shutdown::new(async move {
        // A dropped sender means the dispatcher is going away: stop as well.
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    loop {
        let record = tokio::select! {
            biased;
            () = shutdown.recv() => return Ok(()),
            record = records.recv() => match record {
                Some(record) => record,
                None => return Ok(()),
            },
        };
        match shared.handle(&record, &mut shutdown).await? {
            Handled::Done => shared.store_and_commit(&record),
            Handled::Interrupted => return Ok(()),
        }
    }
}

/// The result of calling the provider for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Dispatched {
    outcome: DispatchResult,
    attempts: u32,
    detail: String,
}

impl Shared {
    /// Decodes, deduplicates, dispatches and reports one command, or dead-letters it.
    async fn handle<S: Future<Output = ()>>(
        &self,
        record: &OwnedMessage,
        shutdown: &mut Shutdown<S>,
    ) -> Result<Handled, DispatchError> {
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
            || codec.decode::<ChargeCommand>(payload),
            DecodeError::is_retriable,
            |error, delay| self.on_retry("decode", &source, error, delay),
        )
        .await;
        let command = match decoded {
            Ok(command) => command,
            Err(RetryError::Permanent(error)) => {
                return self.dead_letter(record, &source, error.kind(), &error.to_string(), shutdown).await;
            }
            Err(RetryError::Exhausted { attempts, last }) => {
                return Err(exhausted("decode", &source, attempts, &last));
            }
            Err(RetryError::Interrupted) => return Ok(Handled::Interrupted),
        };

        if self.lock_dedup().contains(&command.command_id) {
            self.config.metrics.record_duplicate();
            tracing::debug!(command_id = %command.command_id, payment_id = %command.payment_id, "duplicate command skipped");
            return Ok(Handled::Done);
        }

        let Some(dispatched) = self.dispatch(&command, shutdown).await else {
            return Ok(Handled::Interrupted);
        };
        let outcome = DispatchOutcome {
            command_id: command.command_id,
            payment_id: command.payment_id,
            outcome: dispatched.outcome,
            attempts: i32::try_from(dispatched.attempts).unwrap_or(i32::MAX),
            detail: truncate(&dispatched.detail, DETAIL_BYTES_MAX).to_owned(),
            decided_at: time::now(),
        };
        if let Handled::Interrupted = self.publish(&outcome, record, &source, shutdown).await? {
            return Ok(Handled::Interrupted);
        }
        self.lock_dedup().insert(command.command_id);
        self.config.metrics.record_outcome(outcome.outcome);
        tracing::info!(
            payment_id = %outcome.payment_id,
            command_id = %outcome.command_id,
            outcome = outcome.outcome.symbol(),
            attempts = outcome.attempts,
            detail = %outcome.detail,
            "charge dispatched"
        );
        Ok(Handled::Done)
    }

    fn lock_dedup(&self) -> std::sync::MutexGuard<'_, DedupWindow> {
        // Every change to the window is a single call; a panic elsewhere leaves it usable.
        self.dedup.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls the provider until it accepts or rejects the charge or the attempts run out;
    /// `None` when shutdown arrives during a pause between attempts.
    async fn dispatch<S: Future<Output = ()>>(
        &self,
        command: &ChargeCommand,
        shutdown: &mut Shutdown<S>,
    ) -> Option<Dispatched> {
        let metrics = &self.config.metrics;
        let policy = self.config.http_retry;
        let attempts_max = policy.attempts_max.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = {
                let _permit = tokio::select! {
                    biased;
                    () = shutdown.recv() => return None,
                    // The semaphore is never closed, so acquiring only waits.
                    permit = self.calls.acquire() => permit.ok()?,
                };
                metrics.record_attempt();
                metrics.in_flight().inc();
                let result = self.provider.charge(command).await;
                metrics.in_flight().dec();
                result
            };
            let error = match result {
                Attempt::Accepted { status } => {
                    let detail = format!("provider answered {status}");
                    return Some(Dispatched { outcome: DispatchResult::Accepted, attempts: attempt, detail });
                }
                Attempt::Rejected { status, excerpt } => {
                    metrics.record_error("4xx");
                    let detail = format!("provider answered {status}: {excerpt}");
                    return Some(Dispatched { outcome: DispatchResult::Rejected, attempts: attempt, detail });
                }
                Attempt::Failed(error) => error,
            };
            metrics.record_error(error.label());
            if attempt >= attempts_max {
                let detail = format!("no acceptance after {attempt} attempts; last: {error}");
                return Some(Dispatched {
                    outcome: DispatchResult::RetriesExhausted,
                    attempts: attempt,
                    detail,
                });
            }
            let delay = policy.full_jitter(attempt, &mut rand::rng());
            metrics.record_retry();
            tracing::warn!(
                payment_id = %command.payment_id,
                attempt,
                error_type = error.label(),
                %error,
                delay_ms = delay.as_millis() as u64,
                "charge attempt failed; retrying"
            );
            tokio::select! {
                () = shutdown.recv() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Encodes and produces `outcome` keyed by its paymentId, and waits for the broker's
    /// acknowledgement. The command's `traceparent` header travels on.
    async fn publish<S: Future<Output = ()>>(
        &self,
        outcome: &DispatchOutcome,
        record: &OwnedMessage,
        source: &SourceRecord,
        shutdown: &mut Shutdown<S>,
    ) -> Result<Handled, DispatchError> {
        let codec = &self.codec;
        let encoded = retry::retry(
            self.config.retry,
            shutdown,
            || codec.encode(outcome),
            |_| true,
            |error, delay| self.on_retry("encode", source, error, delay),
        )
        .await;
        let payload = match encoded {
            Ok(payload) => payload,
            Err(RetryError::Exhausted { attempts, last }) => {
                return Err(exhausted("encode", source, attempts, &last))
            }
            Err(RetryError::Permanent(last)) => return Err(exhausted("encode", source, 1, &last)),
            Err(RetryError::Interrupted) => return Ok(Handled::Interrupted),
        };
        let key = outcome.payment_id.to_string();
        let traceparent = record.headers().and_then(|headers| {
            headers.iter().find(|h| h.key == "traceparent").and_then(|h| h.value.map(<[u8]>::to_vec))
        });
        let topic = &self.config.outcomes_topic;
        let sent = retry::retry(
            self.config.retry,
            shutdown,
            || {
                let mut headers =
                    OwnedHeaders::new().insert(Header { key: "eventType", value: Some("DispatchOutcome") });
                if let Some(traceparent) = &traceparent {
                    headers = headers.insert(Header { key: "traceparent", value: Some(traceparent) });
                }
                let record = FutureRecord::to(topic).key(&key).payload(&payload).headers(headers);
                async move {
                    self.producer
                        .send(record, Timeout::After(Duration::from_millis(ENQUEUE_TIMEOUT_MS)))
                        .await
                        .map_err(|(error, _unsent)| error)
                }
            },
            |error: &KafkaError| !is_permanent_delivery_error(error),
            |error, delay| self.on_retry("produce", source, error, delay),
        )
        .await;
        match sent {
            Ok(_delivery) => Ok(Handled::Done),
            Err(RetryError::Permanent(error)) => Err(DispatchError::Produce {
                operation: "produce",
                topic: source.topic.clone(),
                partition: source.partition,
                offset: source.offset,
                source: error,
            }),
            Err(RetryError::Exhausted { attempts, last }) => {
                Err(exhausted("produce", source, attempts, &last))
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
    ) -> Result<Handled, DispatchError> {
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
                    "command dead-lettered"
                );
                Ok(Handled::Done)
            }
            Err(RetryError::Permanent(error)) => Err(DispatchError::Produce {
                operation: "dead-letter",
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
        self.config.metrics.record_kafka_retry(operation);
        tracing::warn!(
            operation,
            topic = %source.topic,
            partition = source.partition,
            offset = source.offset,
            %error,
            delay_ms = delay.as_millis() as u64,
            "transient failure; retrying the same command"
        );
    }

    /// Marks `record` done: its offset + 1 is stored and an asynchronous commit sent.
    /// Either may fail harmlessly (a revoked partition, a lost async commit): the command
    /// is then dispatched again and deduplicated by the provider.
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
                "storing the offset failed (partition revoked?); the command may be dispatched again"
            );
            return;
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Async) {
            tracing::warn!(%error, "asynchronous offset commit failed; the next commit covers it");
        }
    }
}

/// Commits the stored offsets synchronously and leaves the group.
async fn close(shared: Arc<Shared>) -> Result<(), DispatchError> {
    let consumer = shared.consumer.clone();
    drop(shared);
    // The synchronous commit and the consumer's close block on the broker.
    let committed = tokio::task::spawn_blocking(move || {
        let committed = consumer.commit_consumer_state(CommitMode::Sync);
        drop(consumer);
        committed
    })
    .await;
    match committed {
        Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => Ok(()),
        Ok(Err(error)) => Err(DispatchError::Commit(error)),
        // The task only commits and drops the consumer: a panic there is a bug.
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_cancelled) => Err(DispatchError::Commit(KafkaError::Canceled)),
    }
}

/// Delivery errors retrying cannot fix: the topic refuses this record as such.
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
) -> DispatchError {
    DispatchError::RetriesExhausted {
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

    fn config() -> DispatcherConfig {
        let metrics = DispatcherMetrics::register(&prometheus::Registry::new()).unwrap();
        DispatcherConfig::new(&StackSettings::from_env(), DEFAULT_PROVIDER_URL, metrics)
    }

    #[test]
    fn the_consumer_reads_committed_and_never_commits_on_its_own() {
        let config = config();
        assert_eq!(config.commands_topic, "payments.provider-commands");
        assert_eq!(config.outcomes_topic, "payments.dispatch-outcomes");
        let client = consumer_config(&config);
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(client.get("group.id"), Some(DEFAULT_GROUP_ID));
    }

    #[test]
    fn outcomes_are_produced_idempotently_with_java_s_partitioner() {
        let client = producer_config(&config());
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("partitioner"), Some("murmur2_random"));
    }

    #[test]
    fn details_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate(&"ё".repeat(10), 5), "ёё");
    }
}
