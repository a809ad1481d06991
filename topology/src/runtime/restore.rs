//! Restoration: bring a task's stores up to their changelogs before the task processes anything.
//! Kafka Streams' `StoreChangelogReader` driven by its state updater.
//!
//! # In the loop, not in the rebalance callback
//! The [`ChangelogReader`] is stepped by the stream thread's loop, a bounded slice per turn
//! ([`RESTORE_RECORDS_PER_TURN`]), between polls of the main consumer. The input partitions of a
//! restoring task are paused on the main consumer (by the task manager), so the tasks that are
//! ready keep processing while others restore, and the main consumer is polled every turn: a
//! restore of any length never runs into `max.poll.interval.ms`. (Restoring inside the callback,
//! as this runtime once did, held the whole instance for the restore's length.)
//!
//! # Where a restore ends
//! The restore consumer reads `read_committed`, so aborted changelog writes are never restored.
//! Under `read_committed` a consumer reaches only the *last stable offset* (LSO): the first offset
//! of the oldest undecided transaction. That is not good enough as the end. A previous owner's
//! last commit can be decided (its offsets committed and readable with `require_stable`, which
//! librdkafka's `read_committed` consumer uses) while its commit marker on the changelog is still
//! being written: then the LSO stands before that transaction's changelog records, a restore that
//! stopped there would miss them, and the task would go on from offsets that already count them.
//!
//! So the end of a restore is the changelog's **high watermark seen when the task was opened**,
//! after the assignment (every changelog record of an earlier owner's committed work is below
//! it: the producer's records are acknowledged before it commits, and it commits before it gives
//! the partition up). Reading starts only once the LSO has reached that end
//! ([`Phase::Stabilizing`]): then every transaction with records below it is decided, and
//! librdkafka's end-of-partition event, which comes when the fetch position reaches the LSO,
//! means that every committed record below the end has been applied. Waiting is bounded by
//! [`RESTORE_STALL_TIMEOUT`]; an undecided transaction lasts at most `transaction.timeout.ms`.
//!
//! # Where the next restore starts
//! The position a restore reaches is at least that end, past the trailing commit markers, and it
//! is what the checkpoint records. A checkpoint only at the last record + 1 would stand before
//! the marker, so every start would fetch the marker again, and wait a broker's
//! `fetch.wait.max.ms` (500 ms) per changelog partition for an end-of-partition event that
//! librdkafka gives only on the fetch after the marker. A changelog whose checkpoint is at its
//! high watermark is not fetched at all. A clean stop catches each store up the same way (see
//! `TaskManager::close_all`), so a warm restart reads nothing.
//!
//! # When a restore fails
//! [`RestoreError::class`] sorts failures the way Kafka Streams' state updater does. A broker
//! restarting or a leader moving (transport errors, all brokers down, fenced leader epochs,
//! timeouts, a stall) is retriable: the stream thread backs off (the runtime's one policy,
//! `backoff.rs`), [`ChangelogReader::interrupt_reading`] puts every changelog being read back at
//! its restored position, and reading goes on from there: the records of the failed poll were
//! never applied, so they are fetched again, and nothing is applied twice. An offset out of range
//! (the restore consumer has `auto.offset.reset=error`, so librdkafka reports it instead of
//! jumping to the end) means the changelog no longer holds what the store lacks: the task manager
//! wipes the task and restores it from the beginning. Anything else stops the thread.
//!
//! # One changelog per partition number at a time
//! rust-rdkafka's end-of-partition error names the partition number but not the topic. Two
//! changelogs of one task share the number, so at most one changelog partition per number is
//! read at a time; the others wait their turn ([`Phase::Queued`]). Different tasks' changelogs
//! are read together, so their waits overlap. (Since each changelog partition is read from its
//! own queue, below, its end is no longer ambiguous; the rule stays until that is tested.)
//!
//! # Reading in batches
//! Each changelog partition's fetch queue is split off the restore consumer's queue before it is
//! assigned, and read with librdkafka's `rd_kafka_consume_batch_queue` (rust-rdkafka has no
//! batch poll): up to `RESTORE_BATCH_MAX` messages a call instead of one event per `poll`, and
//! the turn's records of a partition go to its store in one RocksDB write batch, without the WAL.
//! Records, the end-of-partition event and consumer errors (offset out of range) come on that
//! queue in order; client-wide errors (transport, all brokers down) still come on the consumer's
//! queue, which each step polls once without waiting. The restore consumer's fetch settings
//! (`clients::restore_consumer`) keep up to 16 MiB per partition fetched ahead and look again
//! 10 ms after a full queue: librdkafka's defaults (100,000 messages, then a 1 s back-off) left the
//! restore waiting for the fetcher most of the time, and were most of the difference from
//! 167k to over 1M records/s on a 1M-key store (`paystream-bench restore`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::clients::{self, QuietContext};
use super::faults::{self, RestoreFault};
use super::StreamsConfig;
use crate::metrics::StreamsMetrics;
use crate::store::SharedBackend;

/// Changelog records applied per loop turn at most (and per RocksDB write batch): a turn of
/// restoration delays the active tasks' processing by about this much work.
pub const RESTORE_RECORDS_PER_TURN: usize = 10_000;
/// Messages taken off a changelog partition's queue per librdkafka batch consume at most: the
/// pointer buffer of one call (8 KiB); a turn makes several calls up to its record budget.
const RESTORE_BATCH_MAX: usize = 1_000;
/// How long restoration may go without a record, the end, or a stable end before it is declared
/// stuck. Longer than `transaction.timeout.ms`, which bounds an undecided transaction.
pub const RESTORE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one watermark lookup.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the last stable offset is looked up again while a transaction below the end is
/// undecided (its marker is usually written within milliseconds).
const STABLE_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// Log progress at most this often per changelog partition.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(2);

/// Why a restoration failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Kafka refused (watermarks, assignment, fetch).
    #[error("restoring {topic}-{partition}: {source}")]
    Kafka {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
    /// No progress for [`RESTORE_STALL_TIMEOUT`].
    #[error("restoring {topic}-{partition}: no progress for {:?} at offset {offset}", RESTORE_STALL_TIMEOUT)]
    Stalled {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Where it stopped.
        offset: i64,
    },
    /// A transaction below the end stayed undecided for [`RESTORE_STALL_TIMEOUT`].
    #[error("restoring {topic}-{partition}: the last stable offset stayed at {stable}, below the end {end}, for {:?}", RESTORE_STALL_TIMEOUT)]
    Unstable {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The last stable offset last seen.
        stable: i64,
        /// The high watermark the restore must reach.
        end: i64,
    },
    /// A changelog record came on the restore consumer's own queue instead of its partition's
    /// (which is split off before the partition is assigned, so this is not expected): it is not
    /// applied out of order; reading starts again from the restored position.
    #[error("restoring {topic}-{partition}: a record at offset {offset} came on the consumer's queue")]
    Misrouted {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
    },
    /// A ListOffsets answer named no offset for the partition.
    #[error("restoring {topic}-{partition}: the broker named no end offset")]
    NoOffset {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// Restoration that had to finish before going on had not when its time was up.
    #[error("{tasks} task(s) still restoring at the deadline")]
    Unfinished {
        /// Tasks not restored.
        tasks: usize,
    },
    /// The store refused a batch.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What a restoration failure calls for. Kafka Streams' state updater retries what a broker
/// restart or a leader move causes, and wipes a task only when its changelog no longer holds
/// what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreClass {
    /// The broker or the network is away for a while (transport, leader changes, fenced leader
    /// epoch, timeouts, all brokers down, a stall): read on from the restored position after a
    /// back-off.
    Retriable,
    /// The changelog was truncated beyond the restore's position (offset out of range): what the
    /// store lacks is gone from it, so the store is wiped and restored from the beginning.
    Corrupted,
    /// Retrying cannot help (authorization, the changelog topic gone after start, a broken
    /// store): the stream thread stops.
    Fatal,
}

impl RestoreError {
    /// What this failure calls for (see [`RestoreClass`]).
    pub fn class(&self) -> RestoreClass {
        match self {
            Self::Kafka { source, .. } => classify(source),
            // No progress, or an undecided transaction, for a whole stall timeout: the broker
            // is slow or away; the next try starts from the restored position again.
            Self::Stalled { .. } | Self::Unstable { .. } | Self::NoOffset { .. } | Self::Misrouted { .. } => {
                RestoreClass::Retriable
            }
            // Already retried up to its deadline; a broken store is not a broker's doing.
            Self::Unfinished { .. } | Self::Store(_) => RestoreClass::Fatal,
        }
    }
}

/// The class of a Kafka error met while restoring.
pub fn classify(error: &KafkaError) -> RestoreClass {
    use RDKafkaErrorCode as Code;
    if let KafkaError::MessageConsumptionFatal(_) = error {
        return RestoreClass::Fatal;
    }
    match error.rdkafka_error_code() {
        Some(Code::OffsetOutOfRange | Code::AutoOffsetReset) => RestoreClass::Corrupted,
        Some(
            Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::Resolve
            | Code::OperationTimedOut
            | Code::TimedOutQueue
            | Code::RequestTimedOut
            | Code::NetworkException
            | Code::BrokerNotAvailable
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::ReplicaNotAvailable
            | Code::PreferredLeaderNotAvailable
            | Code::FencedLeaderEpoch
            | Code::UnknownLeaderEpoch
            | Code::OffsetNotAvailable
            | Code::KafkaStorageError
            | Code::NotEnoughReplicas
            | Code::CoordinatorLoadInProgress
            | Code::CoordinatorNotAvailable
            | Code::NotCoordinator
            | Code::WaitingForCoordinator
            | Code::ThrottlingQuotaExceeded
            | Code::Retry,
        ) => RestoreClass::Retriable,
        // Authorization, an unknown topic or partition (the changelog was deleted after start),
        // a bad argument, and anything not known to pass.
        _ => RestoreClass::Fatal,
    }
}

/// Where restoration of one store starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The checkpointed offset is valid: continue from it.
    Checkpoint(i64),
    /// No usable local state: the caller has wiped the store; start at the beginning.
    Beginning,
}

/// Where to start given a checkpoint and the changelog's watermarks (`high`: the high watermark,
/// not the last stable offset); `Beginning` also when the checkpoint is beyond the changelog's
/// end (the topic was recreated: the local state is foreign), and when it is below the
/// changelog's start (records after the checkpoint were deleted: starting at the low watermark
/// would keep keys the changelog no longer has and miss what the deleted records changed;
/// Kafka Streams' offset out of range, which wipes the task).
pub fn start_from(checkpoint: Option<i64>, low: i64, high: i64) -> StartFrom {
    match checkpoint {
        Some(offset) if (low..=high).contains(&offset) => StartFrom::Checkpoint(offset),
        _ => StartFrom::Beginning,
    }
}

/// One changelog partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangelogPartition {
    /// The changelog topic.
    pub topic: String,
    /// The partition (the task's).
    pub partition: i32,
}

/// Where one changelog partition's restoration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the last stable offset to reach the end: a transaction with records below the
    /// end is undecided.
    Stabilizing,
    /// Stable, waiting for another changelog with the same partition number to finish.
    Queued,
    /// Assigned to the restore consumer.
    Reading,
    /// At or past the end.
    Done,
}

/// The restoration of one store from one changelog partition.
struct Restoration {
    /// The store's name, for metrics and logs.
    store: String,
    /// Where the records go.
    backend: SharedBackend,
    /// Next changelog offset to apply: every committed record below it is in the store.
    position: i64,
    /// The high watermark when restoration was asked for: it ends at or past it.
    end: i64,
    phase: Phase,
    /// Records applied.
    records: u64,
    started: Instant,
    /// Last record, end, or phase change: for the stall check.
    last_progress: Instant,
    /// When the last stable offset may be looked up again.
    next_stable_check: Instant,
    last_log: Instant,
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Changelog records applied.
    pub records: usize,
    /// Changelog partitions that reached their end.
    pub finished: usize,
}

/// Restores changelog partitions into stores, a slice per call of [`ChangelogReader::step`].
pub struct ChangelogReader {
    /// The fetch queues of the changelog partitions read, split off the restore consumer's queue
    /// so that they are read in batches. Declared before `consumer`: dropped before it.
    queues: BTreeMap<ChangelogPartition, native::PartitionQueue>,
    /// `read_committed`, no group: reads the changelogs.
    consumer: BaseConsumer<QuietContext>,
    /// `read_uncommitted`, no group: its end offsets are high watermarks, not last stable
    /// offsets (librdkafka's ListOffsets carries the client's isolation level).
    watermark_client: BaseConsumer<QuietContext>,
    metrics: StreamsMetrics,
    restorations: BTreeMap<ChangelogPartition, Restoration>,
    /// This instance's `transactional.id`: the name its injected restore faults are armed under.
    fault_id: String,
}

impl ChangelogReader {
    /// A reader with nothing to restore yet.
    pub fn new(config: &StreamsConfig, metrics: StreamsMetrics) -> Result<Self, KafkaError> {
        Ok(Self {
            queues: BTreeMap::new(),
            consumer: clients::restore_consumer(config, QuietContext)?,
            watermark_client: clients::watermark_client(config, QuietContext)?,
            metrics,
            restorations: BTreeMap::new(),
            fault_id: config.transactional_id(),
        })
    }

    /// The low and high watermarks (the high one of every record, decided or not) of
    /// `changelogs`, in two requests whatever their number: a task's stores are opened together,
    /// and a lookup per partition cost a round trip each (tens of milliseconds on a busy broker).
    pub fn watermarks(
        &self,
        changelogs: &[ChangelogPartition],
    ) -> Result<BTreeMap<ChangelogPartition, (i64, i64)>, RestoreError> {
        let low = end_offsets(&self.watermark_client, changelogs, Offset::Beginning)?;
        let high = end_offsets(&self.watermark_client, changelogs, Offset::End)?;
        Ok(changelogs.iter().filter_map(|c| Some((c.clone(), (*low.get(c)?, *high.get(c)?)))).collect())
    }

    /// Asks for `changelog` to be restored into `backend` from `from` up to `end`, its high
    /// watermark now (from [`ChangelogReader::watermarks`]). Nothing is fetched if `from` is
    /// already there.
    pub fn register(
        &mut self,
        changelog: ChangelogPartition,
        store: &str,
        backend: SharedBackend,
        from: i64,
        end: i64,
    ) -> Result<(), RestoreError> {
        let now = Instant::now();
        let phase = if from >= end { Phase::Done } else { Phase::Stabilizing };
        self.remaining(store, changelog.partition).set((end - from).max(0));
        if phase == Phase::Done {
            tracing::debug!(topic = %changelog.topic, partition = changelog.partition, from, end, "nothing to restore");
        }
        self.restorations.insert(
            changelog,
            Restoration {
                store: store.to_string(),
                backend,
                position: from,
                end,
                phase,
                records: 0,
                started: now,
                last_progress: now,
                next_stable_check: now,
                last_log: now,
            },
        );
        Ok(())
    }

    /// Where `changelog`'s restoration is, if it is registered.
    pub fn phase(&self, changelog: &ChangelogPartition) -> Option<Phase> {
        self.restorations.get(changelog).map(|r| r.phase)
    }

    /// Whether any registered restoration has not reached its end.
    pub fn has_work(&self) -> bool {
        self.restorations.values().any(|r| r.phase != Phase::Done)
    }

    /// Takes a finished restoration off the reader: its store is made durable, and the returned
    /// position (at or past the end) is the checkpoint to write.
    pub fn complete(&mut self, changelog: &ChangelogPartition) -> Result<Option<i64>, RestoreError> {
        match self.restorations.get(changelog) {
            Some(r) if r.phase == Phase::Done => {}
            _ => return Ok(None),
        }
        let r = self.restorations.remove(changelog).expect("checked above");
        self.queues.remove(changelog);
        r.backend.finish_restore()?;
        self.remaining(&r.store, changelog.partition).set(0);
        self.metrics
            .restore_duration
            .with_label_values(&[&r.store])
            .observe(r.started.elapsed().as_secs_f64());
        tracing::info!(topic = %changelog.topic, partition = changelog.partition, records = r.records,
            next_offset = r.position, elapsed_ms = r.started.elapsed().as_millis() as u64, "restored");
        Ok(Some(r.position))
    }

    /// Gives a restoration up (its task was revoked or closed): what was applied is made durable
    /// and the returned position is a valid checkpoint for it.
    pub fn abandon(&mut self, changelog: &ChangelogPartition) -> Result<Option<i64>, RestoreError> {
        let Some(r) = self.restorations.remove(changelog) else { return Ok(None) };
        if r.phase == Phase::Reading {
            self.unassign(changelog)?;
        }
        self.queues.remove(changelog);
        r.backend.finish_restore()?;
        self.remaining(&r.store, changelog.partition).set(0);
        tracing::info!(topic = %changelog.topic, partition = changelog.partition, records = r.records,
            next_offset = r.position, "restoration given up; resumes from here");
        Ok(Some(r.position))
    }

    /// One slice of work: look up last stable offsets that are due, start reading what is stable,
    /// apply at most [`RESTORE_RECORDS_PER_TURN`] records, and mark what reached its end. The
    /// first poll waits up to `wait` for a record (zero when the loop has other work).
    pub fn step(&mut self, wait: Duration) -> Result<StepOutcome, RestoreError> {
        self.stabilize()?;
        self.start_reading()?;
        let mut outcome = StepOutcome::default();
        if !self.restorations.values().any(|r| r.phase == Phase::Reading) {
            return Ok(outcome);
        }
        // Whether an armed restore fault may strike in this step: only once records were applied.
        let mid_restore = restorations_applied(&self.restorations);
        let Self { consumer, queues, restorations, metrics, fault_id, .. } = self;
        // Client-wide errors (transport, all brokers down) come as events on the consumer's own
        // queue; the changelogs' records, their ends and their consumer errors on their
        // partitions' queues.
        match consumer.poll(Duration::ZERO) {
            None => {}
            Some(Err(error)) => {
                let (changelog, _) =
                    restorations.iter().find(|(_, r)| r.phase == Phase::Reading).expect("one is reading");
                return Err(kafka(changelog, error));
            }
            Some(Ok(message)) => {
                return Err(RestoreError::Misrouted {
                    topic: message.topic().to_string(),
                    partition: message.partition(),
                    offset: message.offset(),
                })
            }
        }
        let mut budget = RESTORE_RECORDS_PER_TURN;
        // Only the first consume of the turn may wait: the others take what has been fetched.
        let mut timeout = wait;
        // The batch holds librdkafka's messages themselves (no copy of keys and values): RocksDB's
        // write batch copies them once, straight from the fetch buffers.
        let mut batch: Vec<native::Fetched> = Vec::new();
        let now = Instant::now();
        for (changelog, r) in restorations.iter_mut().filter(|(_, r)| r.phase == Phase::Reading) {
            let queue = queues.get(changelog).expect("split when reading began");
            batch.clear();
            let mut ended = false;
            // Take what has been fetched, a consume at a time, until the budget is spent, the
            // queue is empty or the end-of-partition event comes.
            'consume: while budget > 0 {
                let from = batch.len();
                queue.consume(timeout, budget.min(RESTORE_BATCH_MAX), &mut batch);
                timeout = Duration::ZERO;
                if batch.len() == from {
                    break;
                }
                if let Some(error) = mid_restore.then(|| injected(fault_id)).flatten() {
                    // As after a real cut: this consume's records are lost with the error.
                    return Err(kafka(changelog, error));
                }
                for (i, message) in batch.iter().enumerate().skip(from) {
                    match message.error() {
                        None => {}
                        Some(KafkaError::PartitionEOF(_)) => {
                            // The end: what follows it is past the restore's end, not needed.
                            batch.truncate(i);
                            ended = true;
                            break 'consume;
                        }
                        Some(error) => return Err(kafka(changelog, error)),
                    }
                }
                budget = budget.saturating_sub(batch.len() - from);
            }
            outcome.records += batch.len();
            let mut applied = 0u64;
            r.backend.restore_batch(&mut batch.iter().filter_map(|m| {
                let key = m.key()?;
                applied += 1;
                Some((key, m.payload()))
            }))?;
            if let Some(last) = batch.last() {
                r.position = r.position.max(last.offset() + 1);
                r.records += applied;
                r.last_progress = now;
                metrics.restore_records.with_label_values(&[&r.store]).inc_by(applied);
            }
            // The end-of-partition event comes when the fetch position reaches the last stable
            // offset, which was at or past `end` before reading began: every committed record
            // below `end` has been applied (the event is queued behind them).
            if ended {
                r.position = r.position.max(r.end);
            }
            if r.position >= r.end {
                r.phase = Phase::Done;
                r.last_progress = now;
                outcome.finished += 1;
            }
            metrics
                .restore_remaining
                .with_label_values(&[&r.store, &changelog.partition.to_string()])
                .set((r.end - r.position).max(0));
            if r.phase == Phase::Reading {
                if r.last_progress.elapsed() > RESTORE_STALL_TIMEOUT {
                    return Err(RestoreError::Stalled {
                        topic: changelog.topic.clone(),
                        partition: changelog.partition,
                        offset: r.position,
                    });
                }
                if r.last_log.elapsed() > PROGRESS_LOG_INTERVAL {
                    tracing::info!(topic = %changelog.topic, partition = changelog.partition,
                        restored = r.records, at = r.position, end = r.end, "restoring");
                    r.last_log = now;
                }
            }
        }
        drop(batch);
        let done: Vec<ChangelogPartition> = self
            .restorations
            .iter()
            .filter(|(c, r)| r.phase == Phase::Done && self.is_assigned(c))
            .map(|(c, _)| c.clone())
            .collect();
        for changelog in &done {
            self.unassign(changelog)?;
        }
        Ok(outcome)
    }

    /// Steps until every registered restoration is done or `deadline` passes; whether all are
    /// done. For a clean stop, which has nothing else to do meanwhile.
    pub fn run_until_done(&mut self, deadline: Instant, wait: Duration) -> Result<bool, RestoreError> {
        while self.has_work() {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.step(wait)?;
        }
        Ok(true)
    }

    /// Moves stabilizing restorations whose last stable offset has reached their end on.
    fn stabilize(&mut self) -> Result<(), RestoreError> {
        let now = Instant::now();
        let due: Vec<ChangelogPartition> = self
            .restorations
            .iter()
            .filter(|(_, r)| r.phase == Phase::Stabilizing && r.next_stable_check <= now)
            .map(|(c, _)| c.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        // A read_committed client's end offset is the last stable offset.
        let stable_offsets = end_offsets(&self.consumer, &due, Offset::End)?;
        for changelog in &due {
            let r = self.restorations.get_mut(changelog).expect("listed just above");
            let stable = stable_offsets.get(changelog).copied().unwrap_or(-1);
            if stable >= r.end {
                r.phase = Phase::Queued;
                r.last_progress = Instant::now();
            } else if r.last_progress.elapsed() > RESTORE_STALL_TIMEOUT {
                return Err(RestoreError::Unstable {
                    topic: changelog.topic.clone(),
                    partition: changelog.partition,
                    stable,
                    end: r.end,
                });
            } else {
                tracing::debug!(topic = %changelog.topic, partition = changelog.partition, stable, end = r.end,
                    "a transaction below the restore end is undecided; waiting for it");
                r.next_stable_check = now + STABLE_CHECK_INTERVAL;
            }
        }
        Ok(())
    }

    /// Assigns queued restorations to the restore consumer, one per partition number.
    fn start_reading(&mut self) -> Result<(), RestoreError> {
        let mut busy: Vec<i32> = self
            .restorations
            .iter()
            .filter(|(_, r)| r.phase == Phase::Reading)
            .map(|(c, _)| c.partition)
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut first = None;
        for (changelog, r) in self.restorations.iter_mut() {
            if r.phase != Phase::Queued || busy.contains(&changelog.partition) {
                continue;
            }
            busy.push(changelog.partition);
            if !self.queues.contains_key(changelog) {
                // Before the assignment, so that none of its records reaches the consumer's queue.
                let queue =
                    native::PartitionQueue::split(&self.consumer, &changelog.topic, changelog.partition)
                        .ok_or_else(|| {
                            kafka(
                                changelog,
                                KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownPartition),
                            )
                        })?;
                self.queues.insert(changelog.clone(), queue);
            }
            tpl.add_partition_offset(&changelog.topic, changelog.partition, Offset::Offset(r.position))
                .map_err(|source| kafka(changelog, source))?;
            r.phase = Phase::Reading;
            r.last_progress = Instant::now();
            self.metrics.restore_partitions.with_label_values(&[&r.store]).inc();
            tracing::info!(topic = %changelog.topic, partition = changelog.partition, from = r.position, end = r.end, "restoring");
            first.get_or_insert_with(|| changelog.clone());
        }
        if let Some(changelog) = first {
            self.consumer.incremental_assign(&tpl).map_err(|source| kafka(&changelog, source))?;
        }
        Ok(())
    }

    /// A retriable error broke off reading: every changelog partition being read is taken off
    /// the restore consumer and queued again at its restored position, the next offset after
    /// the last record applied. Records fetched past it and not applied (the failed poll's) are
    /// fetched again; none is applied twice, none skipped. The stall clocks of every unfinished
    /// restoration start over (a stall is one of the retriable errors).
    pub fn interrupt_reading(&mut self) {
        let reading: Vec<ChangelogPartition> = self
            .restorations
            .iter()
            .filter(|(_, r)| r.phase == Phase::Reading)
            .map(|(c, _)| c.clone())
            .collect();
        for changelog in &reading {
            if self.is_assigned(changelog) {
                if let Err(error) = self.unassign(changelog) {
                    tracing::debug!(%error, topic = %changelog.topic, partition = changelog.partition,
                        "unassigning an interrupted restore");
                }
            }
            let r = self.restorations.get_mut(changelog).expect("listed just above");
            r.phase = Phase::Queued;
            r.last_progress = Instant::now();
            tracing::info!(topic = %changelog.topic, partition = changelog.partition, at = r.position,
                end = r.end, "restore interrupted; resumes from here");
        }
        for r in self.restorations.values_mut().filter(|r| r.phase == Phase::Stabilizing) {
            r.last_progress = Instant::now();
        }
    }

    /// The partitions (task numbers) of the changelogs being read.
    pub fn reading_partitions(&self) -> Vec<i32> {
        self.restorations
            .iter()
            .filter(|(_, r)| r.phase == Phase::Reading)
            .map(|(c, _)| c.partition)
            .collect()
    }

    fn is_assigned(&self, changelog: &ChangelogPartition) -> bool {
        self.consumer
            .assignment()
            .map(|a| a.find_partition(&changelog.topic, changelog.partition).is_some())
            .unwrap_or(false)
    }

    fn unassign(&self, changelog: &ChangelogPartition) -> Result<(), RestoreError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&changelog.topic, changelog.partition);
        self.consumer.incremental_unassign(&tpl).map_err(|source| kafka(changelog, source))
    }

    fn remaining(&self, store: &str, partition: i32) -> prometheus::IntGauge {
        self.metrics.restore_remaining.with_label_values(&[store, &partition.to_string()])
    }
}

/// The offsets `which` (`Offset::End`: the end, which is the last stable offset for a
/// `read_committed` client and the high watermark for a `read_uncommitted` one; or
/// `Offset::Beginning`) of `changelogs`, in one ListOffsets request.
fn end_offsets<C: rdkafka::consumer::ConsumerContext>(
    client: &BaseConsumer<C>,
    changelogs: &[ChangelogPartition],
    which: Offset,
) -> Result<BTreeMap<ChangelogPartition, i64>, RestoreError> {
    let Some(first) = changelogs.first() else { return Ok(BTreeMap::new()) };
    let mut tpl = TopicPartitionList::new();
    for changelog in changelogs {
        tpl.add_partition_offset(&changelog.topic, changelog.partition, which)
            .map_err(|source| kafka(changelog, source))?;
    }
    let answered = client.offsets_for_times(tpl, WATERMARK_TIMEOUT).map_err(|source| kafka(first, source))?;
    let mut offsets = BTreeMap::new();
    for element in answered.elements() {
        let changelog =
            ChangelogPartition { topic: element.topic().to_string(), partition: element.partition() };
        element.error().map_err(|source| kafka(&changelog, source))?;
        match element.offset() {
            Offset::Offset(offset) => offsets.insert(changelog, offset),
            _ => {
                return Err(RestoreError::NoOffset { topic: changelog.topic, partition: changelog.partition })
            }
        };
    }
    Ok(offsets)
}

/// Whether some changelog partition being read has had records applied.
fn restorations_applied(restorations: &BTreeMap<ChangelogPartition, Restoration>) -> bool {
    restorations.values().any(|r| r.phase == Phase::Reading && r.records > 0)
}

/// The error of an armed restore fault (see [`faults::arm_restore_fault`]), if one is due.
fn injected(fault_id: &str) -> Option<KafkaError> {
    let code = match faults::take_restore_fault(fault_id)? {
        RestoreFault::Transport => RDKafkaErrorCode::BrokerTransportFailure,
        RestoreFault::AllBrokersDown => RDKafkaErrorCode::AllBrokersDown,
        RestoreFault::FencedLeaderEpoch => RDKafkaErrorCode::FencedLeaderEpoch,
        RestoreFault::OffsetOutOfRange => RDKafkaErrorCode::OffsetOutOfRange,
    };
    tracing::warn!(?code, "injected restore fault");
    Some(KafkaError::MessageConsumption(code))
}

fn kafka(changelog: &ChangelogPartition, source: KafkaError) -> RestoreError {
    RestoreError::Kafka { topic: changelog.topic.clone(), partition: changelog.partition, source }
}

/// librdkafka's batch consume, which rust-rdkafka does not wrap: a changelog partition's records
/// are read from its own queue, many per call, instead of one event per `poll`.
mod native {
    use std::ffi::CString;
    use std::ptr::NonNull;
    use std::time::Duration;

    use rdkafka::bindings as rdsys;
    use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    /// The fetch queue of one partition, taken off the consumer's queue: its records, its
    /// end-of-partition event and its consumer errors (offset out of range) arrive here, while
    /// client-wide errors (transport, all brokers down) still arrive on the consumer's queue.
    pub(super) struct PartitionQueue {
        queue: NonNull<rdsys::rd_kafka_queue_t>,
    }

    // SAFETY: librdkafka's queues are thread-safe (every operation takes the queue's lock); the
    // handle is only a reference count on it, released once in `Drop`.
    unsafe impl Send for PartitionQueue {}

    impl PartitionQueue {
        /// Splits `topic`-`partition`'s queue off `consumer`'s. Must be done before the
        /// partition is assigned, so that no record of it goes to the consumer's queue (the
        /// split survives later assignments: librdkafka keeps an application's forwarding).
        /// The queue must be dropped before `consumer`.
        pub(super) fn split<C: ConsumerContext>(
            consumer: &BaseConsumer<C>,
            topic: &str,
            partition: i32,
        ) -> Option<Self> {
            let topic = CString::new(topic).ok()?;
            let client = consumer.client();
            // SAFETY: the client pointer is valid while `consumer` lives, and `topic` is a
            // NUL-terminated string that outlives the call; the returned handle (or null) is
            // ours to destroy.
            let queue = NonNull::new(unsafe {
                rdsys::rd_kafka_queue_get_partition(client.native_ptr(), topic.as_ptr(), partition)
            })?;
            // SAFETY: `queue` is the valid handle just returned; a null destination stops the
            // forwarding to the consumer's queue.
            unsafe { rdsys::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut()) };
            Some(Self { queue })
        }

        /// Takes up to `max` messages off the queue, waiting up to `timeout` for the first one
        /// only if there is none. Records and errors (end of partition, offset out of range)
        /// come in their order.
        pub(super) fn consume(&self, timeout: Duration, max: usize, into: &mut Vec<Fetched>) {
            let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            let mut pointers: Vec<*mut rdsys::rd_kafka_message_t> = vec![std::ptr::null_mut(); max];
            // SAFETY: `pointers` has room for `max` message pointers; librdkafka writes `n <= max`
            // of them and returns `n` (or -1 on a bad argument), each message ours to destroy.
            let n = unsafe {
                rdsys::rd_kafka_consume_batch_queue(
                    self.queue.as_ptr(),
                    timeout_ms,
                    pointers.as_mut_ptr(),
                    max,
                )
            };
            let n = usize::try_from(n).unwrap_or(0).min(max);
            // Each pointer goes into one `Fetched` at once, so each message is destroyed once.
            into.extend(pointers[..n].iter().filter_map(|&p| NonNull::new(p)).map(Fetched));
        }
    }

    impl Drop for PartitionQueue {
        fn drop(&mut self) {
            // SAFETY: the handle came from `rd_kafka_queue_get_partition` and is released once,
            // here, before its consumer (see `split`).
            unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) }
        }
    }

    /// One message from a batch consume, destroyed once when dropped. Its key and payload point
    /// into librdkafka's fetch buffer: no copy until RocksDB's write batch.
    pub(super) struct Fetched(NonNull<rdsys::rd_kafka_message_t>);

    // SAFETY: a consumed message is owned by the application until destroyed; librdkafka lets
    // any thread read and destroy it.
    unsafe impl Send for Fetched {}

    impl Fetched {
        fn message(&self) -> &rdsys::rd_kafka_message_t {
            // SAFETY: the pointer is valid until `Drop` destroys it, and nothing writes to it.
            unsafe { self.0.as_ref() }
        }

        /// The consumer error this message carries instead of a record (end of partition:
        /// `PartitionEOF`), if any; as rust-rdkafka's `poll` reports them.
        pub(super) fn error(&self) -> Option<KafkaError> {
            let message = self.message();
            match message.err {
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => None,
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                    Some(KafkaError::PartitionEOF(message.partition))
                }
                code => Some(KafkaError::MessageConsumption(RDKafkaErrorCode::from(code))),
            }
        }

        pub(super) fn offset(&self) -> i64 {
            self.message().offset
        }

        pub(super) fn key(&self) -> Option<&[u8]> {
            let message = self.message();
            // SAFETY: librdkafka's key pointer and length describe one buffer that lives as long
            // as the message (borrowed from `self`); null means no key.
            (!message.key.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(message.key as *const u8, message.key_len) })
        }

        /// The value; `None` for a tombstone.
        pub(super) fn payload(&self) -> Option<&[u8]> {
            let message = self.message();
            // SAFETY: as for the key; null is a tombstone.
            (!message.payload.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(message.payload as *const u8, message.len) })
        }
    }

    impl Drop for Fetched {
        fn drop(&mut self) {
            // SAFETY: the message came from `rd_kafka_consume_batch_queue`, which hands it to the
            // application, and this is the one place it is destroyed.
            unsafe { rdsys::rd_kafka_message_destroy(self.0.as_ptr()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_offsets() {
        assert_eq!(start_from(None, 0, 10), StartFrom::Beginning);
        assert_eq!(start_from(Some(4), 0, 10), StartFrom::Checkpoint(4));
        assert_eq!(start_from(Some(10), 0, 10), StartFrom::Checkpoint(10));
        assert_eq!(
            start_from(Some(2), 5, 10),
            StartFrom::Beginning,
            "records after the checkpoint were deleted: rebuild"
        );
        assert_eq!(start_from(Some(5), 5, 10), StartFrom::Checkpoint(5));
        assert_eq!(start_from(Some(11), 0, 10), StartFrom::Beginning, "a checkpoint past the end is foreign");
    }

    fn changelog_error(source: KafkaError) -> RestoreError {
        RestoreError::Kafka { topic: "app-counts-changelog".into(), partition: 0, source }
    }

    #[test]
    fn restore_errors_are_classified_as_kafka_streams_state_updater_does() {
        use RDKafkaErrorCode as Code;
        let retriable = [
            KafkaError::MessageConsumption(Code::BrokerTransportFailure),
            KafkaError::MessageConsumption(Code::AllBrokersDown),
            KafkaError::MessageConsumption(Code::FencedLeaderEpoch),
            KafkaError::MessageConsumption(Code::NotLeaderForPartition),
            KafkaError::MessageConsumption(Code::LeaderNotAvailable),
            KafkaError::OffsetFetch(Code::OperationTimedOut),
            KafkaError::OffsetFetch(Code::RequestTimedOut),
            KafkaError::MetadataFetch(Code::BrokerTransportFailure),
        ];
        for error in retriable {
            assert_eq!(changelog_error(error).class(), RestoreClass::Retriable);
        }
        for error in [
            KafkaError::MessageConsumption(Code::OffsetOutOfRange),
            KafkaError::MessageConsumption(Code::AutoOffsetReset),
        ] {
            assert_eq!(changelog_error(error).class(), RestoreClass::Corrupted, "truncated: wipe");
        }
        let fatal = [
            KafkaError::MessageConsumption(Code::TopicAuthorizationFailed),
            KafkaError::MessageConsumption(Code::UnknownTopicOrPartition),
            KafkaError::OffsetFetch(Code::UnknownTopicOrPartition),
            KafkaError::MessageConsumptionFatal(Code::BrokerTransportFailure),
            KafkaError::Subscription("assign failed".into()),
        ];
        for error in fatal {
            assert_eq!(changelog_error(error).class(), RestoreClass::Fatal);
        }
        let stalled = RestoreError::Stalled { topic: "t".into(), partition: 0, offset: 4 };
        assert_eq!(stalled.class(), RestoreClass::Retriable, "a stall is a timeout");
        assert_eq!(RestoreError::Unfinished { tasks: 1 }.class(), RestoreClass::Fatal);
    }
}
