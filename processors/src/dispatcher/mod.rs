//! The provider dispatcher: turns each `ChargeCommand` into an HTTP charge and reports
//! what became of it as a `DispatchOutcome`.
//!
//! It reads `payments.provider-commands` (`read_committed`: only commands of committed
//! saga transactions; group `paystream-dispatcher`) through the shared consumer loop
//! ([`crate::consumer`]: decode, retries, DLQ, commits, rebalances). For each command:
//!
//! 1. skip it if its commandId was answered within the in-memory window ([`dedup`]);
//! 2. report it `EXPIRED` instead if its `notAfter` has passed — checked before every
//!    attempt, so no attempt starts after the deadline (the saga's timer comes a request
//!    timeout plus a margin later; `saga::deadline`); `attempts` says how many this run made
//!    before it expired, so the saga knows whether one of them may have reached the provider;
//! 3. call the provider ([`provider`]): `POST /v1/charges` with
//!    `Idempotency-Key: <paymentId>`, connect and request timeouts, at most
//!    [`HttpRetryPolicy::attempts_max`] attempts spaced by full-jitter backoff ([`backoff`]),
//!    at most [`DispatcherConfig::concurrency_max`] calls on the wire at once;
//! 4. produce the outcome to `payments.dispatch-outcomes`, keyed by paymentId, with an
//!    idempotent producer, and wait for the broker's acknowledgement: `ACCEPTED` on a 2xx,
//!    `REJECTED` on a 4xx other than 408, 409 and 429, `RETRIES_EXHAUSTED` after the last
//!    attempt;
//! 5. only then does the loop store and commit the command's offset.
//!
//! A second loop on `payments.provider-requests` (its own group, `<group>.requests`) answers
//! the saga's status queries, voids and refunds ([`verify`]) with the same HTTP policy,
//! semaphore and outcome producer, on the same outcomes topic.
//!
//! A 409 is the provider saying the key is in use: a request with the same
//! idempotency key is being processed (Stripe's answer to a concurrent request). It says
//! nothing against the charge, so it is retried with back-off on the same key, never
//! reported REJECTED (which would fail and refund a payment the other request charges).
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
//! A rebalance never lets two dispatchers work one command at once: the loop stops a
//! revoked partition's worker, lets its call in flight finish and commits, before the
//! partition can move ([`crate::consumer::rebalance`]).
//!
//! # Uncertain outcomes
//!
//! When the attempts run out after an attempt that may have reached the provider (a
//! timeout, a 5xx, a 409), the provider may hold the charge. [`Verdict::Exhausted`]
//! marks that `uncertain`; it is reported `RETRIES_EXHAUSTED` with the uncertainty in
//! the detail, and the saga verifies it: it sends a status query (and, if the provider
//! holds no charge, a void) on `payments.provider-requests`, which [`verify`] answers.
//! The saga treats every RETRIES_EXHAUSTED as uncertain: a crashed earlier run may have
//! sent an attempt this run knows nothing of.
//!
//! # Concurrency and order
//!
//! The loop works each partition's commands in order, so the commands of one payment
//! (one key, one partition) are never reordered; partitions proceed concurrently, and a
//! semaphore bounds the HTTP calls in flight across all of them. A command that is being
//! retried holds up its partition for at most
//! `attempts_max × request timeout + (attempts_max − 1) × backoff_max` (40 s with the
//! defaults); the other partitions carry on. Each partition queues at most
//! [`DispatcherConfig::partition_buffer_max`] commands.
//!
//! On shutdown or revocation no new command is started; a call in progress finishes
//! (bounded by the request timeout) and its outcome is produced and committed; a command
//! waiting for its next attempt is left uncommitted and is dispatched again by the next
//! owner.

pub mod backoff;
pub mod dedup;
pub mod metrics;
pub mod provider;
pub mod verify;

use paystream_topology::dlq::truncate;
use paystream_topology::ShutdownHandle;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paystream_schemas::events::{topics, ChargeCommand, DispatchOutcome, DispatchResult};
use paystream_schemas::{time, EventCodec};
use paystream_stack::StackSettings;
use paystream_stack::{kafka, trace};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use schema_registry_converter::error::SRCError;
use tokio::sync::Semaphore;

use crate::consumer::{self, ConsumerConfig, ConsumerError, Context, Handled, Handler, Stop};
use crate::dlq;
use crate::retry::RetryPolicy;

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
    /// Where the saga's ProviderRequests are read (`payments.provider-requests`).
    pub requests_topic: String,
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
    /// Commands queued per partition worker.
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
            requests_topic: topics::PAYMENTS_PROVIDER_REQUESTS.to_owned(),
            outcomes_topic: topics::PAYMENTS_DISPATCH_OUTCOMES.to_owned(),
            dlq_topic: dlq::DEFAULT_TOPIC.to_owned(),
            group_id: DEFAULT_GROUP_ID.to_owned(),
            provider_url: provider_url.to_owned(),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            http_retry: HttpRetryPolicy::default(),
            concurrency_max: CONCURRENCY_MAX,
            partition_buffer_max: consumer::QUEUE_MAX,
            dedup_window_max: dedup::WINDOW_MAX,
            retry: RetryPolicy::default(),
            metrics,
        }
    }

    /// The shared loop's part of the configuration.
    pub fn consumer(&self) -> ConsumerConfig {
        self.loop_on(&self.commands_topic, &self.group_id)
    }

    /// The requests loop's part: the requests topic, in a group of its own (its offsets are
    /// its own progress; sharing the charges' group would rebalance both on either's change).
    pub fn requests_consumer(&self) -> ConsumerConfig {
        self.loop_on(&self.requests_topic, &format!("{}.requests", self.group_id))
    }

    /// Either loop: `topic` read as `group_id`, with this configuration's retries and buffer.
    fn loop_on(&self, topic: &str, group_id: &str) -> ConsumerConfig {
        ConsumerConfig::builder(PROCESSOR, &self.kafka_bootstrap, &self.schema_registry_url)
            .reads(topic, group_id, &self.dlq_topic)
            .retry(self.retry)
            .queue_max(self.partition_buffer_max)
            .build()
    }
}

/// Why the dispatcher stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The dispatcher was started on a current-thread runtime.
    #[error("the dispatcher needs a multi-thread tokio runtime")]
    Runtime,
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

impl From<ConsumerError<DispatchError>> for DispatchError {
    fn from(error: ConsumerError<DispatchError>) -> Self {
        match error {
            ConsumerError::Runtime => Self::Runtime,
            ConsumerError::Registry(error) => Self::Registry(error),
            ConsumerError::Kafka(error) => Self::Kafka(error),
            ConsumerError::RetriesExhausted { operation, topic, partition, offset, attempts, last_error } => {
                Self::RetriesExhausted { operation, topic, partition, offset, attempts, last_error }
            }
            ConsumerError::DeadLetter { topic, partition, offset, source } => {
                Self::Produce { operation: "dead-letter", topic, partition, offset, source }
            }
            // The handler's errors already name their record.
            ConsumerError::Handler { source, .. } => source,
            ConsumerError::Commit(error) => Self::Commit(error),
        }
    }
}

/// Runs the dispatcher until `shutdown` is requested or an error stops it.
pub async fn run(config: DispatcherConfig, shutdown: ShutdownHandle) -> Result<(), DispatchError> {
    let codec = EventCodec::new(&config.schema_registry_url).map_err(DispatchError::Registry)?;
    let producer: FutureProducer = producer_config(&config).create().map_err(DispatchError::Kafka)?;
    let provider = ProviderClient::new(&config.provider_url, config.connect_timeout, config.request_timeout)
        .map_err(DispatchError::Http)?;
    tracing::info!(
        topic = %config.commands_topic,
        outcomes = %config.outcomes_topic,
        group = %config.group_id,
        provider = %provider.charges_url(),
        attempts_max = config.http_retry.attempts_max,
        concurrency_max = config.concurrency_max,
        "dispatcher starting"
    );
    let requests_client =
        verify::RequestClient::new(&config.provider_url, config.connect_timeout, config.request_timeout)
            .map_err(DispatchError::Http)?;
    let (charges_config, requests_config) = (config.consumer(), config.requests_consumer());
    let charges_metrics = config.metrics.consumer().clone();
    let requests_metrics = config.metrics.requests_consumer().clone();
    let dedup_window_max = config.dedup_window_max;
    let handler = Arc::new(Dispatch {
        calls: Semaphore::new(config.concurrency_max.max(1)),
        dedup: Mutex::new(DedupWindow::new(dedup_window_max)),
        config,
        codec,
        producer,
        provider,
    });
    let verify = Arc::new(verify::Verify {
        dispatch: handler.clone(),
        client: requests_client,
        dedup: Mutex::new(DedupWindow::new(dedup_window_max)),
    });

    // One stop for both loops, requested by the caller's shutdown or by either loop ending
    // (with an error), so that one stopping stops the other; the caller's handle is only watched.
    let loops = ShutdownHandle::new();
    let charges = consumer::run(charges_config, handler, charges_metrics, loops.clone());
    let requests = consumer::run(requests_config, verify, requests_metrics, loops.clone());
    let shutdown = shutdown.requested();
    tokio::pin!(charges, requests, shutdown);
    let (charged, asked) = tokio::select! {
        () = &mut shutdown => {
            loops.request();
            tokio::join!(charges, requests)
        }
        charged = &mut charges => {
            loops.request();
            (charged, requests.await)
        }
        asked = &mut requests => {
            loops.request();
            (charges.await, asked)
        }
    };
    charged.map_err(DispatchError::from)?;
    asked.map_err(DispatchError::from)
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

/// The dispatcher's meaning of a command, shared by the partition workers.
struct Dispatch {
    config: DispatcherConfig,
    /// Encodes outcomes.
    codec: EventCodec,
    /// Writes outcomes.
    producer: FutureProducer,
    /// Calls the provider.
    provider: ProviderClient,
    /// One permit per HTTP call in flight.
    calls: Semaphore,
    /// Command ids answered recently (a short critical section, never across an `.await`).
    dedup: Mutex<DedupWindow>,
}

/// How the calls for one command ended, before it is reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the provider took the charge.
    Accepted { status: u16, attempts: u32 },
    /// A 4xx other than 408, 409, 429: the provider refuses the charge for good.
    Rejected { status: u16, excerpt: String, attempts: u32 },
    /// The attempts ran out. `uncertain` when the last one may have reached the provider
    /// ([`AttemptError::may_have_reached_provider`]): the provider may hold the charge.
    Exhausted { attempts: u32, last: AttemptError, uncertain: bool },
    /// The command's `notAfter` passed before attempt `attempts + 1`: nothing more was sent.
    Expired { attempts: u32, not_after: paystream_schemas::time::Timestamp },
}

impl Verdict {
    /// The outcome to report: its result, attempts and detail.
    ///
    /// An uncertain [`Verdict::Exhausted`] is reported `RETRIES_EXHAUSTED`, the detail saying
    /// the provider may hold the charge; the saga then verifies it (status query, void) through
    /// the requests loop ([`verify`]) before anything is refunded.
    pub fn report(&self) -> (DispatchResult, u32, String) {
        match self {
            Self::Accepted { status, attempts } => {
                (DispatchResult::Accepted, *attempts, format!("provider answered {status}"))
            }
            Self::Rejected { status, excerpt, attempts } => {
                (DispatchResult::Rejected, *attempts, format!("provider answered {status}: {excerpt}"))
            }
            Self::Exhausted { attempts, last, uncertain } => {
                let certainty = if *uncertain {
                    "uncertain: the provider may hold the charge"
                } else {
                    "the provider did not take the charge"
                };
                (
                    DispatchResult::RetriesExhausted,
                    *attempts,
                    format!("no acceptance after {attempts} attempts ({certainty}); last: {last}"),
                )
            }
            Self::Expired { attempts, not_after } => (
                DispatchResult::Expired,
                *attempts,
                format!("its deadline {not_after} passed after {attempts} attempts of this run; nothing more sent"),
            ),
        }
    }
}

impl Handler for Dispatch {
    type Event = ChargeCommand;
    type Error = DispatchError;

    /// Deduplicates, dispatches and reports one command.
    async fn handle(&self, command: &ChargeCommand, context: &mut Context<'_>) -> Handled<DispatchError> {
        if self.lock_dedup().contains(&command.command_id) {
            self.config.metrics.record_duplicate();
            tracing::debug!(command_id = %command.command_id, payment_id = %command.payment_id, "duplicate command skipped");
            return Handled::Done;
        }
        let Some(verdict) = self.dispatch(command, context.stop).await else {
            return Handled::Interrupted;
        };
        let (result, attempts, detail) = verdict.report();
        let outcome = DispatchOutcome {
            command_id: command.command_id,
            payment_id: command.payment_id,
            outcome: result,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            detail: truncate(&detail, DETAIL_BYTES_MAX).to_owned(),
            decided_at: time::now(),
        };
        match self.publish(&outcome, context).await {
            Handled::Done => {}
            unfinished => return unfinished,
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
        Handled::Done
    }
}

impl Dispatch {
    fn lock_dedup(&self) -> std::sync::MutexGuard<'_, DedupWindow> {
        // Every change to the window is a single call; a panic elsewhere leaves it usable.
        self.dedup.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls the provider until it accepts or rejects the charge or the attempts run out;
    /// `None` when the stop signal arrives before an attempt or during a pause.
    async fn dispatch(&self, command: &ChargeCommand, stop: &Stop) -> Option<Verdict> {
        let metrics = &self.config.metrics;
        let policy = self.config.http_retry;
        let attempts_max = policy.attempts_max.max(1);
        let mut attempt = 0;
        loop {
            if let Some(not_after) = command.not_after.filter(|_| command.is_expired_at(time::now())) {
                metrics.record_expired();
                return Some(Verdict::Expired { attempts: attempt, not_after });
            }
            attempt += 1;
            let result = {
                let _permit = tokio::select! {
                    biased;
                    () = stop.requested() => return None,
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
                Attempt::Accepted { status } => return Some(Verdict::Accepted { status, attempts: attempt }),
                Attempt::Rejected { status, excerpt } => {
                    metrics.record_error("4xx");
                    return Some(Verdict::Rejected { status, excerpt, attempts: attempt });
                }
                Attempt::Failed(error) => error,
            };
            metrics.record_error(error.label());
            if attempt >= attempts_max {
                let uncertain = error.may_have_reached_provider();
                return Some(Verdict::Exhausted { attempts: attempt, last: error, uncertain });
            }
            let delay = policy.full_jitter(attempt, &mut rand::rng());
            metrics.record_retry();
            tracing::warn!(
                payment_id = %command.payment_id,
                attempt,
                error_type = error.label(),
                %error,
                delay_ms = delay.as_millis() as u64,
                "charge attempt failed; retrying on the same key"
            );
            tokio::select! {
                () = stop.requested() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Encodes and produces `outcome` keyed by its paymentId, and waits for the broker's
    /// acknowledgement. Its `traceparent` is the dispatch span's (a child of the command's), or the
    /// command's own when traces are not exported. Retried here, not
    /// by the loop, so a Kafka hiccup does not repeat the HTTP call.
    async fn publish(&self, outcome: &DispatchOutcome, context: &mut Context<'_>) -> Handled<DispatchError> {
        let codec = &self.codec;
        let encoded = context.retry("encode", || codec.encode(outcome), |_| true).await;
        let payload = match encoded {
            Ok(payload) => payload,
            Err(error) => {
                return Handled::from_retry("encode", error, |last| Handled::Exhausted {
                    operation: "encode",
                    attempts: 1,
                    last_error: last.to_string(),
                })
            }
        };
        let key = outcome.payment_id.to_string();
        let incoming = context
            .message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == trace::TRACEPARENT).and_then(|h| h.value));
        let traceparent = trace::outgoing(incoming);
        let topic = &self.config.outcomes_topic;
        let sent = context
            .retry(
                "produce",
                || {
                    let mut headers = OwnedHeaders::new()
                        .insert(Header { key: "eventType", value: Some("DispatchOutcome") });
                    if let Some(traceparent) = &traceparent {
                        headers =
                            headers.insert(Header { key: trace::TRACEPARENT, value: Some(traceparent) });
                    }
                    let record = FutureRecord::to(topic).key(&key).payload(&payload).headers(headers);
                    async move {
                        self.producer
                            .send(record, Timeout::After(Duration::from_millis(ENQUEUE_TIMEOUT_MS)))
                            .await
                            .map_err(|(error, _unsent)| error)
                    }
                },
                |error: &KafkaError| !consumer::is_permanent_delivery_error(error),
            )
            .await;
        match sent {
            Ok(_delivery) => Handled::Done,
            Err(error) => Handled::from_retry("produce", error, |error| {
                Handled::Fatal(DispatchError::Produce {
                    operation: "produce",
                    topic: context.source.topic.clone(),
                    partition: context.source.partition,
                    offset: context.source.offset,
                    source: error,
                })
            }),
        }
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
    fn the_deployed_consumer_reads_the_commands_with_the_shared_loop_s_settings() {
        let config = config();
        assert_eq!(config.commands_topic, "payments.provider-commands");
        assert_eq!(config.outcomes_topic, "payments.dispatch-outcomes");
        let consumer = config.consumer();
        assert_eq!(consumer.topic, "payments.provider-commands");
        assert_eq!(consumer.queue_max, config.partition_buffer_max);
        let client = consumer::client_config(&consumer);
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
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
    fn an_exhausted_dispatch_says_whether_the_provider_may_hold_the_charge() {
        let timed_out = Verdict::Exhausted { attempts: 6, last: AttemptError::Timeout, uncertain: true };
        let (result, attempts, detail) = timed_out.report();
        assert_eq!((result, attempts), (DispatchResult::RetriesExhausted, 6));
        assert!(detail.contains("uncertain"), "{detail}");
        let refused = Verdict::Exhausted {
            attempts: 3,
            last: AttemptError::Connect("refused".into()),
            uncertain: false,
        };
        assert!(!refused.report().2.contains("uncertain"));
        let accepted = Verdict::Accepted { status: 202, attempts: 2 };
        assert_eq!(accepted.report().0, DispatchResult::Accepted);
    }

    #[test]
    fn an_expired_command_is_reported_with_the_attempts_this_run_made() {
        let not_after = time::now();
        let (result, attempts, detail) = Verdict::Expired { attempts: 0, not_after }.report();
        assert_eq!((result, attempts), (DispatchResult::Expired, 0));
        assert!(detail.contains("nothing more sent"), "{detail}");
    }

    #[test]
    fn provider_requests_have_a_loop_and_a_group_of_their_own() {
        let config = config();
        let requests = config.requests_consumer();
        assert_eq!(requests.topic, "payments.provider-requests");
        assert_eq!(requests.group_id, format!("{DEFAULT_GROUP_ID}.requests"));
        assert_eq!((requests.processor, requests.dlq_topic), (PROCESSOR, config.dlq_topic.clone()));
    }
}
