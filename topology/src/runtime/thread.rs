//! The stream thread: poll, process, commit — and the rebalance callbacks that run inside poll.
//!
//! Order of a commit under exactly-once v2 (see `Shared::commit`):
//! 1. send each dirty store's changelog records (last value per key) to the task's partition;
//! 2. `send_offsets_to_transaction` with the consumer's group metadata (fences zombies by
//!    generation);
//! 3. `commit_transaction`;
//! 4. only now write the buffered store changes to RocksDB, and at most every
//!    `checkpoint_interval` sync the WAL and write the checkpoint.
//!
//! On failure: an abortable error aborts; an ambiguous one (a timed-out commit or abort) or a
//! fatal one drops the producer and makes a new one with the same `transactional.id`, because
//! librdkafka has no KIP-890 and a late EndTxn could otherwise land on the next transaction. In
//! every case the tasks drop their uncommitted work and the consumer seeks back to the committed
//! offsets (a Kafka consumer does not rewind by itself: KAFKA-17582). A fenced producer ends the
//! session: the thread leaves the group and joins again after a back-off.
//!
//! A retriable error of a task (a dependency away: `TaskError::Retriable`) takes the same road as
//! an abortable commit failure, never the dead-letter one: the transaction is aborted, every task
//! drops its uncommitted work, the consumer seeks back to the committed offsets, and after a
//! capped exponential back-off (`RETRY_BACKOFF_INITIAL` doubling to `RETRY_BACKOFF_MAX`) the same
//! record is read again. The back-off starts over once processing gets past the record (or
//! punctuation) that failed.
//!
//! The state the loop and the callbacks share lives in `Shared` behind a mutex. The loop never
//! holds it across `poll`, which is where librdkafka runs the callbacks, on this same thread.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::clients::{self, QuietContext, TRANSACTION_CALL_TIMEOUT};
use super::restore::{self, StartFrom};
use super::{checkpoint, ProcessingGuarantee, StreamsConfig, StreamsError, StreamsState};
use crate::metrics::StreamsMetrics;
use crate::processor::PunctuationType;
use crate::query::QueryRegistry;
use crate::record::{OutputRecord, RawRecord};
use crate::store::memory::MemoryBackend;
use crate::store::rocks::RocksBackend;
use crate::store::SharedBackend;
use crate::task::{Task, TaskContext, TaskError};
use crate::topology::{StoreKind, Topology};

/// Longest back-off between two group sessions after a fencing.
const MAX_REJOIN_BACKOFF: Duration = Duration::from_secs(30);
/// Timeout of committed-offset lookups and seeks when rewinding.
const REWIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Records sent between two polls of the producer's delivery reports.
const SENDS_PER_POLL: usize = 256;
/// How often store sizes are sampled for the gauge.
const STORE_SIZE_INTERVAL: Duration = Duration::from_secs(10);
/// First pause after a retriable error before the same record is read again: a registry blip
/// is usually over in a moment.
const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between two retries; the doubling stops here. The consumer is not polled while
/// it lasts, so it stays far below `max.poll.interval.ms` (5 minutes); heartbeats go on in
/// librdkafka's background thread, so the group keeps this member.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Slice of a retry back-off between two looks at the shutdown flag, so a stop is not delayed
/// by a back-off.
const RETRY_SHUTDOWN_CHECK: Duration = Duration::from_millis(50);

/// What the stream thread is given.
pub(super) struct Env<K, V> {
    pub topology: Topology<K, V>,
    pub config: StreamsConfig,
    pub metrics: StreamsMetrics,
    pub registry: QueryRegistry,
    pub shutdown: Arc<AtomicBool>,
    pub state: Arc<Mutex<StreamsState>>,
}

/// How a group session ended.
enum SessionEnd {
    /// Shutdown was requested and done.
    Shutdown,
    /// Fenced or otherwise unable to go on in this membership: join again.
    Rejoin(String),
}

/// The stream thread's body.
pub(super) fn run<K, V>(env: Env<K, V>) -> Result<(), StreamsError>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let mut backoff = Duration::from_secs(1);
    let result = loop {
        match session(&env) {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Ok(SessionEnd::Rejoin(reason)) => {
                tracing::warn!(%reason, backoff_ms = backoff.as_millis() as u64, "leaving the group; joining again");
                set_state(&env.state, StreamsState::Rebalancing);
                let until = Instant::now() + backoff;
                while Instant::now() < until && !env.shutdown.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if env.shutdown.load(Ordering::SeqCst) {
                    break Ok(());
                }
                backoff = (backoff * 2).min(MAX_REJOIN_BACKOFF);
            }
            Err(error) => break Err(error),
        }
    };
    match &result {
        Ok(()) => set_state(&env.state, StreamsState::NotRunning),
        Err(error) => {
            tracing::error!(%error, "stream thread stopped");
            set_state(&env.state, StreamsState::Error)
        }
    }
    result
}

fn set_state(state: &Mutex<StreamsState>, to: StreamsState) {
    *state.lock().unwrap_or_else(|p| p.into_inner()) = to;
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One membership of the consumer group: clients are made, used and dropped here.
fn session<K, V>(env: &Env<K, V>) -> Result<SessionEnd, StreamsError>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    set_state(&env.state, StreamsState::Rebalancing);
    let restore_consumer = clients::restore_consumer(&env.config, QuietContext)
        .map_err(StreamsError::kafka("creating the restore consumer"))?;
    let producer = Producer_::new(&env.config)?;
    let shared = Arc::new(Mutex::new(Shared {
        topology: env.topology.clone(),
        config: env.config.clone(),
        task_ctx: TaskContext {
            application_id: env.config.application_id.clone(),
            policy: env.config.error_policy.clone(),
            metrics: env.metrics.clone(),
        },
        metrics: env.metrics.clone(),
        registry: env.registry.clone(),
        state: env.state.clone(),
        producer,
        restore_consumer,
        tasks: BTreeMap::new(),
        suspended: BTreeMap::new(),
        in_transaction: false,
        interval_started: Instant::now(),
        last_checkpoint: Instant::now(),
        last_store_sizes: Instant::now(),
        fatal: None,
        rejoin: None,
        retry: None,
        retry_point: None,
        retry_backoff: RETRY_BACKOFF_INITIAL,
        sends_since_poll: 0,
    }));
    let context = StreamContext { shared: shared.clone(), metrics: env.metrics.clone() };
    let consumer =
        clients::consumer(&env.config, context).map_err(StreamsError::kafka("creating the consumer"))?;
    let topics = env.topology.source_topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs).map_err(StreamsError::kafka("subscribing"))?;

    let end = loop {
        match step(env, &shared, &consumer) {
            Ok(None) => {}
            Ok(Some(end)) => break end,
            Err(error) => {
                // Abort rather than leave the transaction to time out (it would hold back
                // read_committed readers of every partition it touched).
                lock(&shared).abort_quietly();
                drop(consumer);
                lock(&shared).close_all();
                return Err(error);
            }
        }
    };
    // Leave the group: dropping the consumer runs the revoke callback (nothing left to commit),
    // then every task is closed with a checkpoint.
    drop(consumer);
    lock(&shared).close_all();
    Ok(end)
}

/// One turn of the loop: poll, process, punctuate, maybe commit. `Some` ends the session.
fn step<K, V>(
    env: &Env<K, V>,
    shared: &Mutex<Shared<K, V>>,
    consumer: &BaseConsumer<StreamContext<K, V>>,
) -> Result<Option<SessionEnd>, StreamsError>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    if env.shutdown.load(Ordering::SeqCst) {
        set_state(&env.state, StreamsState::PendingShutdown);
        lock(shared).commit_or_recover(consumer)?;
        return Ok(Some(SessionEnd::Shutdown));
    }
    // The lock is not held here: rebalance callbacks run inside poll and take it.
    let polled = consumer.poll(env.config.poll_timeout).map(|m| m.map(|m| raw(&m)));
    let mut s = lock(shared);
    if let Some(error) = s.fatal.take() {
        return Err(error);
    }
    if let Some(reason) = s.rejoin.take() {
        return Ok(Some(SessionEnd::Rejoin(reason)));
    }
    match polled {
        Some(Ok(record)) => s.process(record)?,
        Some(Err(error)) => tracing::warn!(%error, "consumer error"),
        None => {}
    }
    if s.retry.is_none() {
        s.punctuate_wall_clock()?;
    }
    if let Some((error, point)) = s.retry.take() {
        s.retry_later(consumer, error, point, &env.shutdown)?;
        return Ok(None);
    }
    if s.commit_due() {
        if let Some(reason) = s.commit_or_recover(consumer)? {
            return Ok(Some(SessionEnd::Rejoin(reason)));
        }
    }
    s.sample_store_sizes();
    Ok(None)
}

fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock ends the thread anyway; the data is not used after that.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies a message off the consumer.
fn raw(message: &BorrowedMessage<'_>) -> RawRecord {
    let headers = message
        .headers()
        .map(|hs| {
            hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect()
        })
        .unwrap_or_default();
    RawRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        timestamp_ms: message.timestamp().to_millis().unwrap_or_else(now_ms),
        headers,
    }
}

/// Tracks delivered offsets of changelog records (for checkpoints) and delivery failures.
#[derive(Default, Clone)]
struct DeliveryTracker {
    /// (topic, partition) → highest delivered offset, changelogs only.
    changelog_offsets: Arc<Mutex<HashMap<(String, i32), i64>>>,
    /// First delivery error since the last reset.
    failure: Arc<Mutex<Option<String>>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if message.topic().ends_with("-changelog") => {
                let mut offsets = lock(&self.changelog_offsets);
                let entry = offsets.entry((message.topic().to_string(), message.partition())).or_insert(-1);
                *entry = (*entry).max(message.offset());
            }
            Ok(_) => {}
            Err((error, message)) => {
                let mut failure = lock(&self.failure);
                if failure.is_none() {
                    *failure = Some(format!("{}-{}: {error}", message.topic(), message.partition()));
                }
            }
        }
    }
}

/// The producer and the way it is (re)made.
struct Producer_ {
    producer: BaseProducer<DeliveryTracker>,
    tracker: DeliveryTracker,
    transactional: bool,
}

impl Producer_ {
    /// A new producer; under EOS `init_transactions` fences any earlier producer with this
    /// `transactional.id` and aborts its open transaction.
    fn new(config: &StreamsConfig) -> Result<Self, StreamsError> {
        let tracker = DeliveryTracker::default();
        let producer = clients::producer(config, tracker.clone())
            .map_err(StreamsError::kafka("creating the producer"))?;
        let transactional = config.guarantee == ProcessingGuarantee::ExactlyOnceV2;
        if transactional {
            producer
                .init_transactions(TRANSACTION_CALL_TIMEOUT)
                .map_err(StreamsError::kafka("initializing transactions"))?;
        }
        Ok(Self { producer, tracker, transactional })
    }

    /// Aborts the open transaction. librdkafka's abort waits until every outstanding message is
    /// purged or delivered *and its delivery report served*, which a `BaseProducer` does only when
    /// polled: without the flush first (which polls, as rdkafka's `commit_transaction` does), an
    /// abort with records in flight times out and the producer has to be replaced.
    fn abort(&self) -> Result<(), KafkaError> {
        if let Err(error) = self.producer.flush(TRANSACTION_CALL_TIMEOUT) {
            // The abort below still decides; a failed delivery only makes it more necessary.
            tracing::debug!(%error, "flush before abort failed");
        }
        self.producer.abort_transaction(TRANSACTION_CALL_TIMEOUT)
    }

    /// Sends one record, waiting while librdkafka's queue is full.
    fn send(&self, record: &OutputRecord) -> Result<(), KafkaError> {
        let mut base: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&record.topic).timestamp(record.timestamp_ms);
        // Native headers cost an allocation in librdkafka even when empty: only when there are some.
        if !record.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            base = base.headers(headers);
        }
        if let Some(key) = &record.key {
            base = base.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            base = base.payload(value.as_slice());
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

/// Why a commit failed, and so how to recover.
enum CommitFailure {
    /// The transaction can be aborted on this producer.
    Abortable(String),
    /// The outcome is unknown (a timeout) or the producer is in a fatal state: replace it.
    Replace(String),
    /// Fenced: another producer owns our `transactional.id`, or the group moved on. Rejoin.
    Fenced(String),
}

fn classify(context: &str, error: &KafkaError) -> CommitFailure {
    let text = format!("{context}: {error}");
    let code = error.rdkafka_error_code();
    if matches!(code, Some(RDKafkaErrorCode::ProducerFenced) | Some(RDKafkaErrorCode::InvalidProducerEpoch)) {
        return CommitFailure::Fenced(text);
    }
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => CommitFailure::Fenced(text),
        KafkaError::Transaction(e) if e.txn_requires_abort() => CommitFailure::Abortable(text),
        KafkaError::Transaction(e) if e.is_retriable() => CommitFailure::Replace(text),
        _ => CommitFailure::Replace(text),
    }
}

/// A task with its directory and changelog positions.
struct OwnedTask<K, V> {
    task: Task<K, V>,
    /// `<state_dir>/<application_id>/0_<partition>`.
    dir: PathBuf,
    /// Logged persistent stores: name → next changelog offset applied to RocksDB.
    applied: checkpoint::Offsets,
}

/// State shared by the loop and the rebalance callbacks.
struct Shared<K, V> {
    topology: Topology<K, V>,
    config: StreamsConfig,
    task_ctx: TaskContext,
    metrics: StreamsMetrics,
    registry: QueryRegistry,
    state: Arc<Mutex<StreamsState>>,
    producer: Producer_,
    restore_consumer: BaseConsumer<QuietContext>,
    /// Tasks being processed, by partition.
    tasks: BTreeMap<i32, OwnedTask<K, V>>,
    /// Tasks revoked in this rebalance, kept open in case they come back (eager protocol).
    suspended: BTreeMap<i32, OwnedTask<K, V>>,
    /// A transaction is open (EOS) / work is pending (ALOS).
    in_transaction: bool,
    /// When the current commit interval began.
    interval_started: Instant,
    /// When checkpoints were last written.
    last_checkpoint: Instant,
    /// When store sizes were last sampled.
    last_store_sizes: Instant,
    /// An error raised inside a callback, for the loop to return.
    fatal: Option<StreamsError>,
    /// A reason raised inside a callback to leave and rejoin the group.
    rejoin: Option<String>,
    /// A retriable error met in this turn, and where, for the loop to abort, rewind and retry.
    retry: Option<(TaskError, RetryPoint)>,
    /// Where the last retriable error struck, until processing gets past it.
    retry_point: Option<RetryPoint>,
    /// The pause before the next retry: doubles with each retriable error up to
    /// `RETRY_BACKOFF_MAX`, back to `RETRY_BACKOFF_INITIAL` once past `retry_point`.
    retry_backoff: Duration,
    /// Records sent since the producer was last polled.
    sends_since_poll: usize,
}

/// Where a retriable error struck, so the back-off starts over only once that is behind us.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RetryPoint {
    /// An input record (its stream-time punctuations included).
    Record {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
    },
    /// A wall-clock punctuation of the task of this partition.
    Punctuation {
        /// The task's partition.
        partition: i32,
    },
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> Shared<K, V> {
    fn begin(&mut self) -> Result<(), StreamsError> {
        if !self.in_transaction {
            if self.producer.transactional {
                self.producer
                    .producer
                    .begin_transaction()
                    .map_err(StreamsError::kafka("beginning a transaction"))?;
            }
            self.in_transaction = true;
            self.interval_started = Instant::now();
        }
        Ok(())
    }

    fn process(&mut self, record: RawRecord) -> Result<(), StreamsError> {
        if !self.tasks.contains_key(&record.partition) {
            // A record of a partition revoked while it was in flight: its new owner reads it again.
            return Ok(());
        }
        self.begin()?;
        let owned = self.tasks.get_mut(&record.partition).expect("checked above");
        match owned.task.process(&record, now_ms()) {
            Ok(_) => {}
            Err(error @ TaskError::Retriable { .. }) => {
                let point = RetryPoint::Record {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                };
                self.retry = Some((error, point));
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        }
        let outputs = owned.task.take_outputs();
        if matches!(&self.retry_point, Some(RetryPoint::Record { topic, partition, offset })
            if *topic == record.topic && *partition == record.partition && record.offset >= *offset)
        {
            self.retried_past();
        }
        self.send_all(&outputs)
    }

    /// Processing got past the point of the last retriable error: the next one starts the
    /// back-off over.
    fn retried_past(&mut self) {
        tracing::info!(point = ?self.retry_point, "past the retriable error; going on");
        self.retry_point = None;
        self.retry_backoff = RETRY_BACKOFF_INITIAL;
    }

    /// A retriable error: abort the transaction, drop every task's uncommitted work, rewind to
    /// the committed offsets and pause, so that the same record is read again afterwards. Never a
    /// dead letter: the record is not at fault.
    fn retry_later<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        error: TaskError,
        point: RetryPoint,
        shutdown: &AtomicBool,
    ) -> Result<(), StreamsError> {
        let delay = self.retry_backoff;
        self.retry_backoff = (delay * 2).min(RETRY_BACKOFF_MAX);
        self.retry_point = Some(point);
        tracing::warn!(%error, backoff_ms = delay.as_millis() as u64,
            "retriable error: aborting the transaction, rewinding and retrying the same record");
        if self.in_transaction && self.producer.transactional {
            if let Err(error) = self.producer.abort() {
                // The producer's state is unknown: a new one with the same transactional.id
                // fences the old epoch and aborts whatever it left open.
                tracing::warn!(%error, "abort failed; replacing the producer");
                self.producer = Producer_::new(&self.config)?;
            }
        }
        self.drop_uncommitted()?;
        rewind(consumer, self.tasks.keys().copied().collect())?;
        let until = Instant::now() + delay;
        while Instant::now() < until && !shutdown.load(Ordering::SeqCst) {
            std::thread::sleep(RETRY_SHUTDOWN_CHECK.min(until.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    /// The transaction is gone (aborted, or its producer replaced): every task drops what it had
    /// not committed and is revived as it was after its last commit.
    fn drop_uncommitted(&mut self) -> Result<(), StreamsError> {
        self.in_transaction = false;
        lock(&self.producer.tracker.changelog_offsets).clear();
        lock(&self.producer.tracker.failure).take();
        let now = now_ms();
        for owned in self.tasks.values_mut() {
            owned.task.aborted(now)?;
        }
        Ok(())
    }

    fn send_all(&mut self, outputs: &[OutputRecord]) -> Result<(), StreamsError> {
        for output in outputs {
            if let Err(error) = self.producer.send(output) {
                // The record could not even be queued (too large, unknown topic): the whole
                // transaction must go, or the output would be lost.
                self.fatal = Some(StreamsError::Kafka { context: "sending an output record", source: error });
                return Ok(());
            }
        }
        // Delivery reports are served by commit (flush) anyway; polling now and then keeps
        // librdkafka's queue of them short without a call per record.
        self.sends_since_poll += outputs.len();
        if self.sends_since_poll >= SENDS_PER_POLL {
            self.producer.producer.poll(Duration::ZERO);
            self.sends_since_poll = 0;
        }
        Ok(())
    }

    fn punctuate_wall_clock(&mut self) -> Result<(), StreamsError> {
        let now = now_ms();
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for partition in partitions {
            if !self.tasks[&partition].task.wall_clock_due(now) {
                continue;
            }
            self.begin()?;
            let owned = self.tasks.get_mut(&partition).expect("listed just above");
            match owned.task.punctuate(PunctuationType::WallClock, now) {
                Ok(_) => {}
                Err(error @ TaskError::Retriable { .. }) => {
                    self.retry = Some((error, RetryPoint::Punctuation { partition }));
                    return Ok(());
                }
                Err(error) => return Err(error.into()),
            }
            let outputs = owned.task.take_outputs();
            if self.retry_point == Some(RetryPoint::Punctuation { partition }) {
                self.retried_past();
            }
            self.send_all(&outputs)?;
        }
        Ok(())
    }

    fn commit_due(&mut self) -> bool {
        // Every task's request is read (and cleared), not just the first one's.
        let mut requested = false;
        for owned in self.tasks.values_mut() {
            requested |= owned.task.take_commit_request();
        }
        self.in_transaction && (requested || self.interval_started.elapsed() >= self.config.commit_interval)
    }

    /// Commits, and on failure recovers; returns a rejoin reason if the producer was fenced.
    fn commit_or_recover<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<Option<String>, StreamsError> {
        if let Some(error) = self.fatal.take() {
            self.abort_quietly();
            return Err(error);
        }
        if !self.in_transaction {
            return Ok(None);
        }
        let started = Instant::now();
        match self.commit(consumer) {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["committed"]).inc();
                self.metrics.commit_latency.observe(started.elapsed().as_secs_f64());
                self.after_commit()?;
                Ok(None)
            }
            Err(failure) => self.recover(consumer, failure),
        }
    }

    fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), CommitFailure> {
        let now = now_ms();
        let mut offsets = TopicPartitionList::new();
        let mut changelog = Vec::new();
        for (partition, owned) in &self.tasks {
            changelog.extend(owned.task.changelog_records(now));
            for (topic, next) in owned.task.consumed() {
                offsets
                    .add_partition_offset(topic, *partition, Offset::Offset(*next))
                    .map_err(|e| CommitFailure::Abortable(format!("offsets: {e}")))?;
            }
        }
        for record in &changelog {
            self.producer.send(record).map_err(|e| classify("sending changelog", &e))?;
        }
        if self.producer.transactional {
            if offsets.count() > 0 {
                let metadata = consumer
                    .group_metadata()
                    .ok_or_else(|| CommitFailure::Abortable("no group metadata (not in a group)".into()))?;
                self.producer
                    .producer
                    .send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_CALL_TIMEOUT)
                    .map_err(|e| classify("send_offsets_to_transaction", &e))?;
            }
            self.producer
                .producer
                .commit_transaction(TRANSACTION_CALL_TIMEOUT)
                .map_err(|e| classify("commit_transaction", &e))?;
        } else {
            self.producer.producer.flush(TRANSACTION_CALL_TIMEOUT).map_err(|e| classify("flush", &e))?;
            if let Some(failure) = lock(&self.producer.tracker.failure).take() {
                return Err(CommitFailure::Replace(format!("delivery failed: {failure}")));
            }
            if offsets.count() > 0 {
                consumer
                    .commit(&offsets, CommitMode::Sync)
                    .map_err(|e| CommitFailure::Abortable(format!("commit offsets: {e}")))?;
            }
        }
        self.in_transaction = false;
        Ok(())
    }

    /// After a commit: stores catch up with what is now durable in Kafka, then maybe checkpoint.
    fn after_commit(&mut self) -> Result<(), StreamsError> {
        let delivered = std::mem::take(&mut *lock(&self.producer.tracker.changelog_offsets));
        for (partition, owned) in &mut self.tasks {
            owned.task.committed()?;
            for store in owned.applied.keys().cloned().collect::<Vec<_>>() {
                let topic = crate::topology::changelog_topic(&self.config.application_id, &store);
                if let Some(offset) = delivered.get(&(topic, *partition)) {
                    owned.applied.insert(store, offset + 1);
                }
            }
        }
        if self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
            self.checkpoint_all()?;
        }
        Ok(())
    }

    fn checkpoint_all(&mut self) -> Result<(), StreamsError> {
        for owned in self.tasks.values() {
            checkpoint_task(owned)?;
        }
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn recover<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        failure: CommitFailure,
    ) -> Result<Option<String>, StreamsError> {
        let (outcome, reason, replace, rejoin) = match failure {
            CommitFailure::Abortable(reason) => {
                let aborted = self.producer.abort();
                let replace = aborted.is_err();
                ("aborted", reason, replace, false)
            }
            CommitFailure::Replace(reason) => ("ambiguous", reason, true, false),
            CommitFailure::Fenced(reason) => ("fenced", reason, true, true),
        };
        tracing::warn!(%reason, outcome, "commit failed; dropping uncommitted work and rewinding");
        self.metrics.commits.with_label_values(&[outcome]).inc();
        self.drop_uncommitted()?;
        if replace && !rejoin {
            // Same transactional.id: init_transactions fences the old epoch and aborts whatever
            // it left open.
            self.producer = Producer_::new(&self.config)?;
        }
        if rejoin {
            return Ok(Some(reason));
        }
        rewind(consumer, self.tasks.keys().copied().collect())?;
        Ok(None)
    }

    fn abort_quietly(&mut self) {
        if self.in_transaction && self.producer.transactional {
            if let Err(error) = self.producer.abort() {
                tracing::warn!(%error, "abort failed while stopping; the broker aborts on transaction timeout");
            }
        }
        self.in_transaction = false;
        let now = now_ms();
        for owned in self.tasks.values_mut() {
            let _ = owned.task.aborted(now);
        }
    }

    fn sample_store_sizes(&mut self) {
        if self.last_store_sizes.elapsed() < STORE_SIZE_INTERVAL {
            return;
        }
        self.last_store_sizes = Instant::now();
        for (partition, owned) in &self.tasks {
            for (name, backend) in owned.task.backends() {
                if let Ok(len) = backend.approximate_len() {
                    self.metrics
                        .store_keys
                        .with_label_values(&[name, &partition.to_string()])
                        .set(len as i64);
                }
            }
        }
    }

    // ----- rebalances -----

    /// Partitions are about to be revoked: commit what is pending, then suspend every task.
    fn on_revoke<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.metrics.rebalances.with_label_values(&["revoked"]).inc();
        set_state(&self.state, StreamsState::Rebalancing);
        if let Some(error) = self.fatal.take() {
            self.abort_quietly();
            self.fatal = Some(error);
        } else if self.in_transaction {
            let result = self.commit(consumer);
            match result {
                Ok(()) => {
                    if let Err(error) = self.after_commit() {
                        self.fatal = Some(error);
                    }
                }
                Err(failure) => {
                    // Not rewinding: the partitions are going away; their next owner starts from
                    // the committed offsets.
                    let (reason, fenced) = match failure {
                        CommitFailure::Abortable(r) | CommitFailure::Replace(r) => (r, false),
                        CommitFailure::Fenced(r) => (r, true),
                    };
                    tracing::warn!(%reason, "commit on revoke failed; the work is redone by the next owner");
                    self.abort_quietly();
                    if fenced {
                        self.rejoin = Some(reason);
                    } else if let Err(error) = Producer_::new(&self.config).map(|p| self.producer = p) {
                        self.fatal = Some(error);
                    }
                }
            }
        }
        let tasks = std::mem::take(&mut self.tasks);
        self.suspended.extend(tasks);
        self.metrics.tasks.with_label_values(&["active"]).set(0);
    }

    /// Partitions were assigned: resume suspended tasks we keep, restore new ones, close the rest.
    fn on_assign(&mut self, assignment: &TopicPartitionList) {
        self.metrics.rebalances.with_label_values(&["assigned"]).inc();
        let result = self.assign(assignment);
        if let Err(error) = result {
            self.fatal = Some(error);
            return;
        }
        set_state(&self.state, StreamsState::Running);
    }

    fn assign(&mut self, assignment: &TopicPartitionList) -> Result<(), StreamsError> {
        let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for element in assignment.elements() {
            by_partition.entry(element.partition()).or_default().push(element.topic().to_string());
        }
        let sources = self.topology.source_topics();
        for (partition, topics) in &mut by_partition {
            topics.sort();
            if *topics != sources {
                return Err(StreamsError::Assignment(format!(
                    "partition {partition} assigned for {topics:?}, expected every source topic {sources:?}"
                )));
            }
        }
        for partition in by_partition.keys() {
            let owned = match self.suspended.remove(partition) {
                Some(owned) => owned,
                None => self.open_task(*partition)?,
            };
            self.tasks.insert(*partition, owned);
        }
        for (_, owned) in std::mem::take(&mut self.suspended) {
            self.close_task(owned);
        }
        self.metrics.tasks.with_label_values(&["active"]).set(self.tasks.len() as i64);
        tracing::info!(partitions = ?self.tasks.keys().collect::<Vec<_>>(), "tasks assigned");
        Ok(())
    }

    /// Opens a task's stores, restores them from their changelogs, and registers them for queries.
    fn open_task(&mut self, partition: i32) -> Result<OwnedTask<K, V>, StreamsError> {
        let dir = self.config.app_dir().join(format!("0_{partition}"));
        let checkpoints = checkpoint::read(&dir).unwrap_or_default();
        // From here the local state is ahead of (or equal to) the checkpoint only by committed
        // writes; a crash leaves a checkpoint that is safe to restore from.
        let mut backends: Vec<SharedBackend> = Vec::new();
        let mut applied = checkpoint::Offsets::new();
        for spec in self.topology.stores() {
            let path = dir.join(&spec.name);
            let changelog = spec.changelog_topic(&self.config.application_id);
            let watermarks = match spec.logged {
                true => Some(restore::watermarks(&self.restore_consumer, &changelog, partition)?),
                false => None,
            };
            let backend: SharedBackend = match spec.kind {
                StoreKind::InMemory => Arc::new(MemoryBackend::new()),
                StoreKind::Persistent => Arc::new(RocksBackend::open(&spec.name, &path)?),
            };
            if let Some((low, high)) = watermarks {
                let from =
                    match (spec.kind, restore::start_from(checkpoints.get(&spec.name).copied(), low, high)) {
                        (StoreKind::Persistent, StartFrom::Checkpoint(offset)) => offset,
                        (StoreKind::Persistent, StartFrom::Beginning) => {
                            // No usable checkpoint: the local files may hold anything. Rebuild.
                            drop(backend);
                            RocksBackend::destroy(&spec.name, &path)?;
                            let fresh: SharedBackend = Arc::new(RocksBackend::open(&spec.name, &path)?);
                            let restored =
                                self.restore(&changelog, partition, low, high, &spec.name, fresh.as_ref())?;
                            applied.insert(spec.name.clone(), restored);
                            self.register(&spec.name, partition, &fresh);
                            backends.push(fresh);
                            continue;
                        }
                        (StoreKind::InMemory, _) => low,
                    };
                let restored =
                    self.restore(&changelog, partition, from, high, &spec.name, backend.as_ref())?;
                if spec.kind == StoreKind::Persistent {
                    applied.insert(spec.name.clone(), restored);
                }
            }
            self.register(&spec.name, partition, &backend);
            backends.push(backend);
        }
        let task =
            Task::new(partition, self.topology.inner.clone(), backends, self.task_ctx.clone(), now_ms())?;
        let owned = OwnedTask { task, dir, applied };
        checkpoint_task(&owned)?;
        Ok(owned)
    }

    #[allow(clippy::too_many_arguments)]
    fn restore(
        &self,
        changelog: &str,
        partition: i32,
        from: i64,
        high: i64,
        store: &str,
        backend: &dyn crate::store::StoreBackend,
    ) -> Result<i64, StreamsError> {
        let restored = restore::restore(
            &self.restore_consumer,
            changelog,
            partition,
            from,
            high,
            store,
            backend,
            &self.metrics,
        )?;
        Ok(restored.next_offset)
    }

    fn register(&self, store: &str, partition: i32, backend: &SharedBackend) {
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        registry.entry(store.to_string()).or_default().insert(partition, backend.clone());
    }

    fn close_task(&mut self, mut owned: OwnedTask<K, V>) {
        owned.task.close();
        if let Err(error) = checkpoint_task(&owned) {
            tracing::warn!(%error, partition = owned.task.partition, "checkpoint on close failed; the next owner restores more");
        }
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        for stores in registry.values_mut() {
            stores.remove(&owned.task.partition);
        }
        tracing::info!(partition = owned.task.partition, "task closed");
    }

    fn close_all(&mut self) {
        let tasks: Vec<_> = std::mem::take(&mut self.tasks)
            .into_values()
            .chain(std::mem::take(&mut self.suspended).into_values())
            .collect();
        for owned in tasks {
            self.close_task(owned);
        }
        self.metrics.tasks.with_label_values(&["active"]).set(0);
    }
}

/// Syncs the task's persistent stores and writes its checkpoint.
fn checkpoint_task<K: Clone + 'static, V: Clone + 'static>(
    owned: &OwnedTask<K, V>,
) -> Result<(), StreamsError> {
    if owned.applied.is_empty() {
        return Ok(());
    }
    for (name, backend) in owned.task.backends() {
        if owned.applied.contains_key(name) {
            backend.sync()?;
        }
    }
    checkpoint::write(&owned.dir, &owned.applied)
        .map_err(|source| StreamsError::StateDir { path: owned.dir.clone(), source })
}

/// Seeks every assigned partition of `partitions` back to its committed offset.
fn rewind<C: ConsumerContext>(consumer: &BaseConsumer<C>, partitions: Vec<i32>) -> Result<(), StreamsError> {
    let assignment = consumer.assignment().map_err(StreamsError::kafka("reading the assignment"))?;
    let mut wanted = TopicPartitionList::new();
    for element in assignment.elements() {
        if partitions.contains(&element.partition()) {
            wanted.add_partition(element.topic(), element.partition());
        }
    }
    if wanted.count() == 0 {
        return Ok(());
    }
    let committed = consumer
        .committed_offsets(wanted, REWIND_TIMEOUT)
        .map_err(StreamsError::kafka("reading committed offsets"))?;
    let mut seek = TopicPartitionList::new();
    for element in committed.elements() {
        let offset = match element.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        seek.add_partition_offset(element.topic(), element.partition(), offset)
            .map_err(StreamsError::kafka("building the seek list"))?;
    }
    let result = consumer
        .seek_partitions(seek, REWIND_TIMEOUT)
        .map_err(StreamsError::kafka("seeking back to committed offsets"))?;
    for element in result.elements() {
        if let Err(error) = element.error() {
            return Err(StreamsError::Kafka { context: "seeking back to committed offsets", source: error });
        }
    }
    Ok(())
}

/// The consumer's context: rebalance callbacks and statistics.
struct StreamContext<K, V> {
    shared: Arc<Mutex<Shared<K, V>>>,
    metrics: StreamsMetrics,
}

impl<K: Send + 'static, V: Send + 'static> ClientContext for StreamContext<K, V> {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic, &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> ConsumerContext for StreamContext<K, V> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut shared = lock(&self.shared);
        match rebalance {
            Rebalance::Revoke(_) => shared.on_revoke(consumer),
            Rebalance::Assign(assignment) => shared.on_assign(assignment),
            Rebalance::Error(error) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(%error, "rebalance error");
            }
        }
    }
}
