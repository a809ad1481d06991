//! The stream thread: poll, process, punctuate, commit — and the rebalance callbacks that run
//! inside poll. Kafka Streams' `StreamThread`.
//!
//! This module is the loop and nothing else: the tasks' life cycle is the task manager's
//! (`task_manager.rs`), local state the state directory's (`state_directory.rs`), the producer
//! and its failure classes `producer.rs`, and commit and recovery `commit.rs`. The loop decides
//! only *when* each of them runs, which is where the ordering rules live.
//!
//! A retriable error of a task (a dependency away: `TaskError::Retriable`) takes the same road as
//! an abortable commit failure, never the dead-letter one: the transaction is aborted, every task
//! drops its uncommitted work, the consumer seeks back to the committed offsets, and after a
//! capped exponential back-off (`backoff.rs`: 100 ms doubling to 5 s) the same record is read
//! again. The back-off starts over once processing gets past the record (or punctuation) that
//! failed.
//!
//! A retriable error of restoration (a broker restarting, a leader moving: see
//! `RestoreError::class`) uses the same policy with its own [`Backoff`], without sleeping: the
//! restoring changelogs are put back to their restored positions, restoration sits out its
//! pause while the active tasks go on, and then reads on from there. A changelog truncated
//! beyond a restore's position (offset out of range) wipes the task's stores and restores them
//! from the beginning. Only a fatal one (authorization, a topic gone) stops the thread.
//!
//! Polled records are not processed as they come: each goes to its task's buffer for its input
//! partition, and each turn every active task processes its next record by the lowest timestamp
//! across its partitions, waiting (bounded) for a partition that has none yet (see
//! `partition_group.rs` and the README's "Input order"). A rewind drops the buffers with the
//! transaction; a commit carries only processed records' offsets.
//!
//! The state the loop and the callbacks share lives in `StreamThread` behind a mutex. The loop
//! never holds it across `poll`, which is where librdkafka runs the callbacks, on this same
//! thread.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::producer::Producer as _;
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;

use super::backoff::Backoff;
use super::clients;
use super::commit::rewind;
use super::producer::{TransactionFailure, TransactionalProducer};
use super::restore::{ChangelogReader, RestoreClass};
use super::shutdown::{ShutdownHandle, StoppedOnDrop};
use super::task_manager::TaskManager;
use super::{StreamsConfig, StreamsError, StreamsState};
use crate::metrics::StreamsMetrics;
use crate::processor::PunctuationType;
use crate::query::QueryRegistry;
use crate::record::{OutputRecord, RawRecord};
use crate::task::TaskError;
use crate::topology::Topology;

/// Longest back-off between two group sessions after a fencing.
const MAX_REJOIN_BACKOFF: Duration = Duration::from_secs(30);
/// Records sent between two polls of the producer's delivery reports.
const SENDS_PER_POLL: usize = 256;
/// How often store sizes are sampled for the gauge.
const STORE_SIZE_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait of the main consumer's poll while tasks restore and the last turn found no
/// changelog records: short, because the turn's real waiting is for the restore consumer.
const RESTORE_IDLE_POLL: Duration = Duration::from_millis(5);
/// While active tasks have input and others restore, the least time between two restoration
/// turns. A turn applies up to `RESTORE_RECORDS_PER_TURN` records (about 10-20 ms of work), the
/// loop processes one record per turn: spacing the restore turns keeps the active tasks going at
/// most of their pace, and restoration at full pace whenever they are idle.
const RESTORE_TURN_SPACING: Duration = Duration::from_millis(20);

/// What the stream thread is given.
pub(super) struct Env<K, V> {
    pub topology: Topology<K, V>,
    pub config: StreamsConfig,
    pub metrics: StreamsMetrics,
    pub registry: QueryRegistry,
    /// Asks the thread to stop, and learns of its end.
    pub shutdown: ShutdownHandle,
    pub state: Arc<Mutex<StreamsState>>,
    /// Each changelog's `delete.retention.ms`, as checked at start.
    pub changelog_retention: super::admin::ChangelogRetention,
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
    // However the thread ends (a panic included), the handle learns of it.
    let _stopped = StoppedOnDrop(env.shutdown.clone());
    env.shutdown.bind_current_thread();
    let mut backoff = Duration::from_secs(1);
    let result = loop {
        match session(&env) {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Ok(SessionEnd::Rejoin(reason)) => {
                tracing::warn!(%reason, backoff_ms = backoff.as_millis() as u64, "leaving the group; joining again");
                set_state(&env.state, StreamsState::Rebalancing);
                if env.shutdown.sleep(backoff) {
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

pub(super) fn set_state(state: &Mutex<StreamsState>, to: StreamsState) {
    *state.lock().unwrap_or_else(|p| p.into_inner()) = to;
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One membership of the consumer group: clients are made, used and dropped here.
fn session<K, V>(env: &Env<K, V>) -> Result<SessionEnd, StreamsError>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    set_state(&env.state, StreamsState::Rebalancing);
    let reader = ChangelogReader::new(&env.config, env.metrics.clone())
        .map_err(StreamsError::kafka("creating the restore consumer"))?;
    let producer = TransactionalProducer::new(&env.config)?;
    let tasks = TaskManager::new(
        env.topology.clone(),
        env.config.clone(),
        env.metrics.clone(),
        env.registry.clone(),
        reader,
        env.changelog_retention.clone(),
    );
    let shared = Arc::new(Mutex::new(StreamThread {
        config: env.config.clone(),
        metrics: env.metrics.clone(),
        state: env.state.clone(),
        producer,
        tasks,
        in_transaction: false,
        interval_started: Instant::now(),
        last_checkpoint: Instant::now(),
        last_store_sizes: Instant::now(),
        fatal: None,
        rejoin: None,
        retry: None,
        retry_point: None,
        retry_backoff: Backoff::default(),
        restore_backoff: Backoff::default(),
        restore_paused_until: None,
        sends_since_poll: 0,
        fence: super::commit::FenceOffset::default(),
        progressed: false,
        restore_busy: None,
        last_restore_turn: Instant::now(),
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
                lock(&shared).tasks.close_all(false);
                return Err(error);
            }
        }
    };
    // Leave the group: dropping the consumer runs the revoke callback (nothing left to commit),
    // then every task is closed with a checkpoint.
    drop(consumer);
    lock(&shared).tasks.close_all(matches!(end, SessionEnd::Shutdown));
    Ok(end)
}

/// One turn of the loop: poll, process, punctuate, maybe commit. `Some` ends the session.
fn step<K, V>(
    env: &Env<K, V>,
    shared: &Mutex<StreamThread<K, V>>,
    consumer: &BaseConsumer<StreamContext<K, V>>,
) -> Result<Option<SessionEnd>, StreamsError>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    if env.shutdown.is_requested() {
        set_state(&env.state, StreamsState::PendingShutdown);
        lock(shared).commit_or_recover(consumer)?;
        return Ok(Some(SessionEnd::Shutdown));
    }
    // While tasks restore, the poll only looks in (the turn's time goes to restoring), and does
    // not wait at all while changelog records flow.
    // Nor while buffered records are being processed: the next may be ready at once.
    let timeout = {
        let s = lock(shared);
        match s.restore_busy {
            _ if s.progressed => Duration::ZERO,
            Some(true) => Duration::ZERO,
            Some(false) => RESTORE_IDLE_POLL.min(env.config.poll_timeout),
            None => env.config.poll_timeout,
        }
    };
    // The lock is not held here: rebalance callbacks run inside poll and take it.
    let polled = consumer.poll(timeout).map(|m| m.map(|m| raw(&m)));
    let mut s = lock(shared);
    if let Some(error) = s.fatal.take() {
        return Err(error);
    }
    if let Some(reason) = s.rejoin.take() {
        return Ok(Some(SessionEnd::Rejoin(reason)));
    }
    let polled_nothing = polled.is_none();
    match polled {
        Some(Ok(record)) if s.tasks.is_restoring(record.partition) => s.tasks.hold_back(consumer, &record)?,
        Some(Ok(record)) => s.tasks.buffer(consumer, record),
        Some(Err(error)) => tracing::warn!(%error, "consumer error"),
        None => {}
    }
    s.process_buffered(consumer)?;
    s.tasks.release_paused(consumer);
    let polled_nothing = polled_nothing && !s.progressed;
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
    s.restore(consumer, polled_nothing)?;
    s.sample_store_sizes();
    Ok(None)
}

pub(super) fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
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

/// The stream thread's state, shared by the loop and the rebalance callbacks.
pub(super) struct StreamThread<K, V> {
    pub config: StreamsConfig,
    pub metrics: StreamsMetrics,
    state: Arc<Mutex<StreamsState>>,
    /// The producer of this group session (replaced when its state is unknown).
    pub producer: TransactionalProducer,
    /// The tasks this instance owns.
    pub tasks: TaskManager<K, V>,
    /// A transaction is open (EOS) / work is pending (ALOS).
    pub in_transaction: bool,
    /// When the current commit interval began.
    pub interval_started: Instant,
    /// When checkpoints were last written.
    pub last_checkpoint: Instant,
    /// When store sizes were last sampled.
    last_store_sizes: Instant,
    /// An error raised inside a callback, for the loop to return.
    pub fatal: Option<StreamsError>,
    /// A reason raised inside a callback to leave and rejoin the group.
    rejoin: Option<String>,
    /// A retriable error met in this turn, and where, for the loop to abort, rewind and retry.
    retry: Option<(TaskError, RetryPoint)>,
    /// Where the last retriable error struck, until processing gets past it.
    retry_point: Option<RetryPoint>,
    /// The pause before the next retry, started over once past `retry_point`.
    retry_backoff: Backoff,
    /// The pause before restoration is tried again after a retriable error, started over once a
    /// restoration turn gets through.
    restore_backoff: Backoff,
    /// Restoration sits out a back-off until then (the loop goes on processing meanwhile).
    restore_paused_until: Option<Instant>,
    /// Records sent since the producer was last polled.
    sends_since_poll: usize,
    /// An input offset known to be committed, which fences a punctuation-only transaction.
    pub fence: super::commit::FenceOffset,
    /// The last turn processed a buffered record: the next poll does not wait.
    progressed: bool,
    /// Whether tasks are restoring (`Some`), and whether the last turn applied changelog
    /// records: it sets how long the next poll of the main consumer may wait.
    restore_busy: Option<bool>,
    /// When restoration last had a turn.
    last_restore_turn: Instant,
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

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> StreamThread<K, V> {
    /// Begins a transaction if none is open.
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

    /// One record for every active task that has one ready by the lowest-timestamp rule; stops
    /// at a retriable error or a failed send (the loop then aborts and rewinds, or stops).
    fn process_buffered<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), StreamsError> {
        self.progressed = false;
        if !self.tasks.any_buffered() {
            return Ok(());
        }
        let now = Instant::now();
        for partition in self.tasks.active_partitions() {
            if self.retry.is_some() || self.fatal.is_some() {
                break;
            }
            if let Some(record) = self.tasks.next_record(consumer, partition, now) {
                self.progressed = true;
                self.process(record)?;
            }
        }
        Ok(())
    }

    fn process(&mut self, record: RawRecord) -> Result<(), StreamsError> {
        if !self.tasks.active.contains_key(&record.partition) {
            // A record of a partition revoked while it was in flight: its new owner reads it again.
            return Ok(());
        }
        self.begin()?;
        let owned = self.tasks.active.get_mut(&record.partition).expect("checked above");
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
        self.retry_backoff.reset();
    }

    /// A retriable error: abort the transaction, drop every task's uncommitted work, rewind to
    /// the committed offsets and pause, so that the same record is read again afterwards. Never a
    /// dead letter: the record is not at fault.
    fn retry_later<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        error: TaskError,
        point: RetryPoint,
        shutdown: &ShutdownHandle,
    ) -> Result<(), StreamsError> {
        let delay = self.retry_backoff.next_delay();
        self.retry_point = Some(point);
        tracing::warn!(%error, backoff_ms = delay.as_millis() as u64,
            "retriable error: aborting the transaction, rewinding and retrying the same record");
        self.abort_and_replace()?;
        rewind(consumer, self.tasks.active_partitions())?;
        // A stop asked for meanwhile ends the pause at once; the loop then sees it.
        shutdown.sleep(delay);
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
        let partitions = self.tasks.active_partitions();
        for partition in partitions {
            if !self.tasks.active[&partition].task.wall_clock_due(now) {
                continue;
            }
            self.begin()?;
            let owned = self.tasks.active.get_mut(&partition).expect("listed just above");
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

    fn sample_store_sizes(&mut self) {
        if self.last_store_sizes.elapsed() < STORE_SIZE_INTERVAL {
            return;
        }
        self.last_store_sizes = Instant::now();
        for (partition, owned) in &self.tasks.active {
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

    /// Partitions are about to be revoked: commit what is pending, then suspend every task. If
    /// the commit fails, or the group has already moved on without this member (its
    /// assignment is lost: a session that expired, a paused process), the tasks are closed
    /// instead, so that those that come back are restored from their changelogs rather than
    /// resumed with stores that may differ from them.
    fn on_revoke<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.metrics.rebalances.with_label_values(&["revoked"]).inc();
        set_state(&self.state, StreamsState::Rebalancing);
        if let Some(error) = self.fatal.take() {
            self.abort_quietly();
            self.fatal = Some(error);
        } else if consumer.assignment_lost() {
            // Another member may own these partitions already: nothing of this transaction may
            // commit (its offsets would be refused by generation anyway).
            tracing::warn!("assignment lost: aborting the transaction and closing every task");
            if let Err(error) = self.abort_and_replace() {
                self.fatal = Some(error);
            }
            self.tasks.close_active();
            return;
        } else if self.in_transaction {
            let result = self.commit(consumer, &mut super::commit::Carried::new());
            match result {
                Ok(()) => {
                    if let Err(error) = self.after_commit() {
                        self.fatal = Some(error);
                    }
                }
                Err(failure) => {
                    // Not rewinding: the partitions are going away; their next owner starts from
                    // the committed offsets.
                    let fenced =
                        matches!(failure, TransactionFailure::Fenced(_) | TransactionFailure::Fatal(_));
                    let reason = failure.reason().to_string();
                    tracing::warn!(%reason, "commit on revoke failed; closing the tasks, the work is redone from the committed state");
                    self.abort_quietly();
                    if fenced {
                        self.rejoin = Some(reason);
                    } else if let Err(error) =
                        TransactionalProducer::new(&self.config).map(|p| self.producer = p)
                    {
                        self.fatal = Some(error);
                    }
                    self.tasks.close_active();
                    return;
                }
            }
        }
        self.tasks.suspend_all();
    }

    /// Partitions were assigned: resume suspended tasks we keep, restore new ones, close the rest.
    fn on_assign(&mut self, assignment: &TopicPartitionList) {
        self.metrics.rebalances.with_label_values(&["assigned"]).inc();
        let result = self.tasks.assign(assignment);
        if let Err(error) = result {
            self.fatal = Some(error);
            return;
        }
        self.restore_busy = self.tasks.any_restoring().then_some(false);
        if !self.tasks.any_restoring() {
            set_state(&self.state, StreamsState::Running);
        }
    }

    /// One turn of restoration (see `task_manager.rs`); the instance is running once no task
    /// restores. While the active tasks have input (`idle` false), restoration gets a turn only
    /// every [`RESTORE_TURN_SPACING`], so that they keep most of the thread.
    fn restore<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        idle: bool,
    ) -> Result<(), StreamsError> {
        if !self.tasks.any_restoring() || (!idle && self.last_restore_turn.elapsed() < RESTORE_TURN_SPACING) {
            return Ok(());
        }
        if self.restore_paused_until.is_some_and(|until| Instant::now() < until) {
            return Ok(());
        }
        self.restore_paused_until = None;
        self.last_restore_turn = Instant::now();
        let turn = match self.tasks.restore_turn(consumer) {
            Ok(turn) => turn,
            Err(StreamsError::Restore(error)) => return self.restore_failed(error),
            Err(error) => return Err(error),
        };
        if turn.records > 0 || turn.activated > 0 {
            self.restore_backoff.reset();
        }
        if self.tasks.any_restoring() {
            self.restore_busy = Some(turn.records > 0);
        } else {
            self.restore_busy = None;
            set_state(&self.state, StreamsState::Running);
        }
        Ok(())
    }
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> StreamThread<K, V> {
    /// A restoration turn failed. Retriable (see [`RestoreClass`]): the restoring changelogs go
    /// back to their restored positions, to be read on from there (nothing applied twice,
    /// nothing skipped) after a back-off, during which the active tasks go on. Corrupted (a
    /// changelog truncated beyond the position): the tasks reading are wiped and restored from
    /// the beginning. Fatal: the thread stops.
    fn restore_failed(&mut self, error: super::restore::RestoreError) -> Result<(), StreamsError> {
        match error.class() {
            RestoreClass::Retriable => {
                let delay = self.restore_backoff.next_delay();
                self.metrics.retriable_errors.with_label_values(&["restore"]).inc();
                tracing::warn!(%error, backoff_ms = delay.as_millis() as u64,
                    "retriable restore error: resuming from the restored positions after a back-off");
                self.tasks.restore_interrupted();
                self.restore_paused_until = Some(Instant::now() + delay);
                self.restore_busy = Some(false);
                Ok(())
            }
            RestoreClass::Corrupted => {
                self.metrics.retriable_errors.with_label_values(&["restore"]).inc();
                tracing::warn!(%error, "changelog truncated beyond the restore position: wiping and restoring from the beginning");
                self.tasks.restore_corrupted()?;
                self.restore_busy = Some(false);
                Ok(())
            }
            RestoreClass::Fatal => Err(error.into()),
        }
    }
}

/// The consumer's context: rebalance callbacks and statistics.
pub(super) struct StreamContext<K, V> {
    shared: Arc<Mutex<StreamThread<K, V>>>,
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

    /// After librdkafka's assign: the partitions of tasks that must restore first are paused
    /// before any of them is fetched.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            lock(&self.shared).tasks.pause_pending(consumer);
        }
    }
}
