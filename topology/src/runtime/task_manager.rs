//! The task manager: which tasks this instance owns, and their life cycle — assign, revoke
//! (suspend), open (stores, registration for restoration), restore, activate (query
//! registration, processing), close (checkpoint, unregister). Kafka Streams' `TaskManager`.
//!
//! It knows nothing of transactions: the stream thread commits the active tasks' work through the
//! producer and then tells the tasks (and this manager's changelog positions) that it is durable.
//! Keeping the two apart is what lets a rebalance callback suspend and close tasks without
//! reaching into the commit path, and the commit path recover without touching task life cycles.
//!
//! # Restoration runs in the loop
//! The rebalance callback only records what was assigned: a new task is *pending*, and its input
//! partitions are paused on the main consumer right after librdkafka's assign (`pause_pending`).
//! The loop then opens it (`restore_turn`: stores, checkpoint, registration with the
//! [`ChangelogReader`]), restores it a slice per turn while the active tasks go on processing,
//! and activates it when every changelog has reached its end: the task is built, its stores
//! become queryable, and its input partitions are resumed (from the committed offsets, since
//! nothing of them was consumed). Kafka Streams' state updater, on the stream thread.
//!
//! # Input buffers
//! Each active task buffers what the consumer polls for it, one queue per input partition
//! ([`PartitionGroup`]), and the loop takes its next record by the lowest timestamp across them
//! (`next_record`; the rule and its bounded idle wait are in `partition_group.rs`). A partition
//! whose buffer reaches `MAX_BUFFERED_RECORDS_PER_PARTITION` is paused on the consumer and
//! resumed once it has drained to `RESUME_BUFFERED_RECORDS`. Buffered records are not consumed:
//! a commit carries only the offsets of processed records, never the consumer's position, which
//! has run ahead of the buffer (`commit.rs` fences a transaction with a committed offset). Every
//! abort drops the buffers (the
//! consumer is then rewound to the committed offsets and fetches them again), and so do a
//! suspend and a close.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::admin::{self, ChangelogRetention};
use super::backoff::Backoff;
use super::clients::RESTORE_FETCH_WAIT;
use super::partition_group::{Caught, PartitionGroup, RESUME_BUFFERED_RECORDS};
use super::restore::{
    self, ChangelogPartition, ChangelogReader, Phase, RestoreClass, StartFrom, RESTORE_STALL_TIMEOUT,
};
use super::state_directory::{self, Offsets};
use super::stream_thread::now_ms;
use super::{StreamsConfig, StreamsError};
use crate::metrics::StreamsMetrics;
use crate::query::QueryRegistry;
use crate::record::RawRecord;
use crate::store::memory::MemoryBackend;
use crate::store::rocks::RocksBackend;
use crate::store::SharedBackend;
use crate::task::{Task, TaskContext};
use crate::topology::{StoreKind, Topology};

/// How long a clean stop waits for the stores to catch up with their changelogs' ends (the last
/// commit's markers), so that the checkpoints it writes leave nothing to read at the next start.
/// Past it the stop goes on with checkpoints at the last applied record: still correct, only
/// the next start reads the markers.
pub const CLOSE_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of the seek that puts back a record of a restoring task's partition.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// A task with its directory and changelog positions.
pub(super) struct OwnedTask<K, V> {
    /// The task.
    pub task: Task<K, V>,
    /// `<state_dir>/<application_id>/0_<partition>`.
    pub dir: PathBuf,
    /// Logged persistent stores: name → next changelog offset applied to RocksDB.
    pub applied: Offsets,
    /// Records polled for the task, not yet processed, per input partition.
    pub inputs: PartitionGroup,
}

/// A task whose stores are being restored. Its input partitions are paused.
struct RestoringTask {
    /// `<state_dir>/<application_id>/0_<partition>`.
    dir: PathBuf,
    /// Every store of the topology, in its order, with its name.
    backends: Vec<(String, SharedBackend)>,
    /// Logged persistent stores: name → changelog position reached so far.
    applied: Offsets,
    /// Changelog partitions not yet complete, with their store's name.
    changelogs: Vec<(ChangelogPartition, String)>,
}

/// What one turn of restoration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RestoreTurn {
    /// Changelog records applied.
    pub records: usize,
    /// Tasks that became active.
    pub activated: usize,
}

/// The tasks of this instance.
pub(super) struct TaskManager<K, V> {
    topology: Topology<K, V>,
    config: StreamsConfig,
    task_ctx: TaskContext,
    metrics: StreamsMetrics,
    registry: QueryRegistry,
    reader: ChangelogReader,
    /// Each changelog's `delete.retention.ms`, which bounds how old a checkpoint may be.
    retention: ChangelogRetention,
    /// Tasks being processed, by partition.
    pub active: BTreeMap<i32, OwnedTask<K, V>>,
    /// Tasks revoked in this rebalance, kept open in case they come back (eager protocol).
    suspended: BTreeMap<i32, OwnedTask<K, V>>,
    /// Assigned partitions whose tasks the loop has not opened yet.
    pending: BTreeSet<i32>,
    /// Tasks restoring their stores.
    restoring: BTreeMap<i32, RestoringTask>,
    /// Input partitions paused because their buffer is full, until it drains (or the task goes).
    flow_paused: BTreeSet<(String, i32)>,
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> TaskManager<K, V> {
    /// A manager with no tasks yet.
    pub fn new(
        topology: Topology<K, V>,
        config: StreamsConfig,
        metrics: StreamsMetrics,
        registry: QueryRegistry,
        reader: ChangelogReader,
        retention: ChangelogRetention,
    ) -> Self {
        let task_ctx = TaskContext {
            application_id: config.application_id.clone(),
            policy: config.error_policy.clone(),
            metrics: metrics.clone(),
        };
        Self {
            topology,
            config,
            task_ctx,
            metrics,
            registry,
            reader,
            retention,
            active: BTreeMap::new(),
            suspended: BTreeMap::new(),
            pending: BTreeSet::new(),
            restoring: BTreeMap::new(),
            flow_paused: BTreeSet::new(),
        }
    }

    /// Partitions are being revoked (after their work was committed): every active task is
    /// suspended, kept open in case it comes back; restoring tasks are closed where they are
    /// (their checkpoints keep the progress).
    pub fn suspend_all(&mut self) {
        // The consumer starts the kept partitions again from the committed offsets.
        self.clear_buffers();
        let tasks = std::mem::take(&mut self.active);
        self.suspended.extend(tasks);
        self.close_restoring();
        self.update_gauges();
    }

    /// The active tasks cannot be trusted to resume (a commit failed during the revoke, so their
    /// stores may miss writes that committed; or the group moved on without this member): close
    /// them, so that those that come back are opened again and restored from their changelogs.
    /// Their uncommitted work must have been dropped already; the checkpoint written on close
    /// names only what was applied, so the restore starts before anything they lack.
    pub fn close_active(&mut self) {
        for (_, owned) in std::mem::take(&mut self.active) {
            self.close_task(owned);
        }
        self.close_restoring();
        self.update_gauges();
    }

    /// Kafka Streams' corrupted-task path: every active task is closed and opened again, so each
    /// logged store is restored from its checkpoint to its changelog's end. After an ambiguous
    /// commit that its offsets cannot judge, this applies exactly what the transaction committed
    /// (nothing, if it aborted: the restore reads `read_committed`). The caller has dropped the
    /// buffered writes (so the checkpoint written on close names only what was applied), and the
    /// old transaction is complete (a new producer's `init_transactions` returned). The restore
    /// runs to its end before this returns: the tasks were active, their partitions are not
    /// paused, and the caller goes on processing them.
    pub fn reopen_active(&mut self) -> Result<(), StreamsError> {
        for partition in self.active_partitions() {
            let owned = self.active.remove(&partition).expect("listed just above");
            self.close_task(owned);
            self.pending.insert(partition);
        }
        self.restore_until_done(Instant::now() + 2 * RESTORE_STALL_TIMEOUT)
    }

    /// Partitions were assigned: resume suspended tasks we keep, leave new ones pending for the
    /// loop to open and restore, close the rest.
    pub fn assign(&mut self, assignment: &TopicPartitionList) -> Result<(), StreamsError> {
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
            match self.suspended.remove(partition) {
                Some(owned) => {
                    self.active.insert(*partition, owned);
                }
                None => {
                    self.pending.insert(*partition);
                }
            }
        }
        for (_, owned) in std::mem::take(&mut self.suspended) {
            self.close_task(owned);
        }
        self.update_gauges();
        tracing::info!(active = ?self.active.keys().collect::<Vec<_>>(),
            restoring = ?self.pending.iter().collect::<Vec<_>>(), "tasks assigned");
        Ok(())
    }

    /// Pauses the input partitions of the pending tasks: called right after librdkafka's assign,
    /// before any fetch of them, so nothing of a task is consumed before its stores are restored.
    pub fn pause_pending<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let tpl = self.source_partitions(self.pending.iter().copied());
        if tpl.count() > 0 {
            if let Err(error) = consumer.pause(&tpl) {
                // Records that arrive anyway are put back (`hold_back`).
                tracing::warn!(%error, "pausing the partitions of restoring tasks failed");
            }
        }
    }

    /// Whether the task of `partition` is pending or restoring.
    pub fn is_restoring(&self, partition: i32) -> bool {
        self.pending.contains(&partition) || self.restoring.contains_key(&partition)
    }

    /// Whether any task is pending or restoring.
    pub fn any_restoring(&self) -> bool {
        !self.pending.is_empty() || !self.restoring.is_empty()
    }

    /// A record of a restoring task's partition reached the loop (its pause came too late): seek
    /// back to it, so it is read again once the task is active, and pause the partition again.
    pub fn hold_back<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        record: &RawRecord,
    ) -> Result<(), StreamsError> {
        tracing::debug!(topic = %record.topic, partition = record.partition, offset = record.offset,
            "a record of a restoring task: put back until it is restored");
        consumer
            .seek(&record.topic, record.partition, Offset::Offset(record.offset), SEEK_TIMEOUT)
            .map_err(StreamsError::kafka("seeking back a restoring task's partition"))?;
        self.pause_partitions(consumer, [record.partition]);
        Ok(())
    }

    /// One turn of restoration: open the pending tasks, restore a slice, activate the tasks whose
    /// stores are all complete and resume their input partitions.
    pub fn restore_turn<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<RestoreTurn, StreamsError> {
        self.open_pending()?;
        let mut turn = RestoreTurn::default();
        if self.restoring.is_empty() {
            return Ok(turn);
        }
        if self.reader.has_work() {
            turn.records = self.reader.step(Duration::ZERO)?.records;
        }
        let activated = self.activate_complete()?;
        if !activated.is_empty() {
            turn.activated = activated.len();
            let tpl = self.source_partitions(activated.iter().copied());
            consumer.resume(&tpl).map_err(StreamsError::kafka("resuming restored tasks' partitions"))?;
            tracing::info!(partitions = ?activated, "restored; processing");
        }
        Ok(turn)
    }

    /// A retriable error broke off restoration: the changelogs being read go back to their
    /// restored positions, to be read on from there at the next turn (see
    /// [`ChangelogReader::interrupt_reading`]). Pending tasks stay pending.
    pub fn restore_interrupted(&mut self) {
        self.reader.interrupt_reading();
    }

    /// A changelog being read no longer holds the restore's position (offset out of range: it
    /// was truncated beyond it), so its store cannot be completed from there. The poll's error
    /// does not say which changelog, so every task reading one is closed without a checkpoint
    /// and opened again: its persistent stores are wiped and restored from the beginning (Kafka
    /// Streams' corrupted task). Its input partitions stay paused throughout.
    pub fn restore_corrupted(&mut self) -> Result<(), StreamsError> {
        let mut corrupted = self.reader.reading_partitions();
        corrupted.sort_unstable();
        corrupted.dedup();
        for partition in corrupted {
            let Some(mut restoring) = self.restoring.remove(&partition) else { continue };
            for (changelog, _) in std::mem::take(&mut restoring.changelogs) {
                if let Err(error) = self.reader.abandon(&changelog) {
                    tracing::debug!(%error, partition, "giving up a corrupted restore");
                }
            }
            // Its stores are closed here (the reader's and the task's handles are gone), so
            // `open` may wipe and reopen them.
            drop(restoring);
            let dir = state_directory::task_dir(&self.config.app_dir(), partition);
            state_directory::remove_checkpoint(&dir)
                .map_err(|source| StreamsError::StateDir { path: dir.clone(), source })?;
            self.pending.insert(partition);
            tracing::warn!(partition, "task corrupted: its stores are rebuilt from their changelogs");
        }
        self.reader.interrupt_reading();
        Ok(())
    }

    /// Opens every pending task (one watermark lookup for all their changelogs).
    fn open_pending(&mut self) -> Result<(), StreamsError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let changelogs: Vec<ChangelogPartition> = self
            .pending
            .iter()
            .flat_map(|partition| {
                self.topology.stores().iter().filter(|s| s.logged).map(|s| ChangelogPartition {
                    topic: s.changelog_topic(&self.config.application_id),
                    partition: *partition,
                })
            })
            .collect();
        let watermarks = self.reader.watermarks(&changelogs)?;
        for partition in std::mem::take(&mut self.pending) {
            let restoring = self.open(partition, &watermarks)?;
            self.restoring.insert(partition, restoring);
        }
        Ok(())
    }

    /// Opens a task's stores and registers each logged store's changelog with the reader, from
    /// the checkpoint if it can be trusted, else (store wiped) from the changelog's beginning.
    fn open(
        &mut self,
        partition: i32,
        watermarks: &BTreeMap<ChangelogPartition, (i64, i64)>,
    ) -> Result<RestoringTask, StreamsError> {
        let dir = state_directory::task_dir(&self.config.app_dir(), partition);
        let checkpoints = state_directory::read_checkpoint(&dir).unwrap_or_default();
        let checkpoint_age = admin::file_age(&state_directory::checkpoint_path(&dir));
        // From here the local state is ahead of (or equal to) the checkpoint only by committed
        // writes; a crash leaves a checkpoint that is safe to restore from.
        let mut restoring = RestoringTask {
            dir: dir.clone(),
            backends: Vec::new(),
            applied: Offsets::new(),
            changelogs: Vec::new(),
        };
        for spec in self.topology.stores() {
            let path = dir.join(&spec.name);
            let mut backend: SharedBackend = match spec.kind {
                StoreKind::InMemory => Arc::new(MemoryBackend::new()),
                StoreKind::Persistent => Arc::new(RocksBackend::open(&spec.name, &path)?),
            };
            if spec.logged {
                let changelog = ChangelogPartition {
                    topic: spec.changelog_topic(&self.config.application_id),
                    partition,
                };
                let (low, high) = *watermarks.get(&changelog).ok_or_else(|| {
                    restore::RestoreError::NoOffset { topic: changelog.topic.clone(), partition }
                })?;
                let checkpoint = admin::trusted_checkpoint(
                    checkpoints.get(&spec.name).copied(),
                    checkpoint_age,
                    self.retention.get(&changelog.topic).copied(),
                );
                let from = match (spec.kind, restore::start_from(checkpoint, low, high)) {
                    (StoreKind::Persistent, StartFrom::Checkpoint(offset)) => offset,
                    (StoreKind::Persistent, StartFrom::Beginning) => {
                        // No usable checkpoint: the local files may hold anything. Rebuild.
                        drop(backend);
                        state_directory::wipe_store(&spec.name, &path)?;
                        backend = Arc::new(RocksBackend::open(&spec.name, &path)?);
                        low
                    }
                    (StoreKind::InMemory, _) => low,
                };
                if spec.kind == StoreKind::Persistent {
                    restoring.applied.insert(spec.name.clone(), from);
                }
                self.reader.register(changelog.clone(), &spec.name, backend.clone(), from, high)?;
                restoring.changelogs.push((changelog, spec.name.clone()));
            }
            restoring.backends.push((spec.name.clone(), backend));
        }
        Ok(restoring)
    }

    /// Activates every restoring task whose changelogs are all complete; their partitions.
    fn activate_complete(&mut self) -> Result<Vec<i32>, StreamsError> {
        let mut activated = Vec::new();
        let partitions: Vec<i32> = self.restoring.keys().copied().collect();
        for partition in partitions {
            let restoring = self.restoring.get_mut(&partition).expect("listed just above");
            let reader = &mut self.reader;
            let mut remaining = Vec::new();
            for (changelog, store) in std::mem::take(&mut restoring.changelogs) {
                match reader.complete(&changelog)? {
                    Some(position) => {
                        if let Some(applied) = restoring.applied.get_mut(&store) {
                            *applied = position;
                        }
                    }
                    None => remaining.push((changelog, store)),
                }
            }
            restoring.changelogs = remaining;
            if !restoring.changelogs.is_empty() {
                continue;
            }
            let restoring = self.restoring.remove(&partition).expect("listed just above");
            let backends: Vec<SharedBackend> = restoring.backends.iter().map(|(_, b)| b.clone()).collect();
            let task =
                Task::new(partition, self.topology.inner.clone(), backends, self.task_ctx.clone(), now_ms())?;
            for (store, backend) in &restoring.backends {
                self.register(store, partition, backend);
            }
            let inputs = PartitionGroup::new(&self.topology.source_topics());
            let owned = OwnedTask { task, dir: restoring.dir, applied: restoring.applied, inputs };
            checkpoint_task(&owned)?;
            self.active.insert(partition, owned);
            activated.push(partition);
        }
        if !activated.is_empty() {
            self.update_gauges();
        }
        Ok(activated)
    }

    /// Restores until no task is restoring, or fails at `deadline`: for callers that have nothing
    /// else to do meanwhile. A retriable or corrupted restore is handled as in the loop (read on
    /// from the restored position, or rebuild), after the same back-off, until the deadline.
    fn restore_until_done(&mut self, deadline: Instant) -> Result<(), StreamsError> {
        let mut backoff = Backoff::default();
        loop {
            let error = match self.try_restore_until_done(deadline) {
                Err(StreamsError::Restore(error)) => error,
                done => return done,
            };
            let now = Instant::now();
            match error.class() {
                RestoreClass::Fatal => return Err(error.into()),
                _ if now >= deadline => return Err(error.into()),
                RestoreClass::Retriable => self.restore_interrupted(),
                RestoreClass::Corrupted => self.restore_corrupted()?,
            }
            let delay = backoff.next_delay().min(deadline - now);
            self.metrics.retriable_errors.with_label_values(&["restore"]).inc();
            tracing::warn!(%error, backoff_ms = delay.as_millis() as u64, "restore error; retrying");
            std::thread::sleep(delay);
        }
    }

    fn try_restore_until_done(&mut self, deadline: Instant) -> Result<(), StreamsError> {
        self.open_pending()?;
        self.reader.run_until_done(deadline, RESTORE_FETCH_WAIT)?;
        self.activate_complete()?;
        if !self.restoring.is_empty() {
            return Err(restore::RestoreError::Unfinished { tasks: self.restoring.len() }.into());
        }
        Ok(())
    }

    /// Reads each logged persistent store of the active tasks from its applied position to its
    /// changelog's end, up to `deadline`; stores that do not get there stay where they got to
    /// (their positions stay valid checkpoints). For a clean stop.
    fn catch_up_active(&mut self, deadline: Instant) -> Result<(), StreamsError> {
        let mut wanted = Vec::new();
        for (partition, owned) in &self.active {
            for (store, backend) in owned.task.backends() {
                let Some(from) = owned.applied.get(store).copied() else { continue };
                let changelog = ChangelogPartition {
                    topic: crate::topology::changelog_topic(&self.config.application_id, store),
                    partition: *partition,
                };
                wanted.push((changelog, store.to_string(), backend.clone(), from));
            }
        }
        let changelogs: Vec<ChangelogPartition> = wanted.iter().map(|(c, ..)| c.clone()).collect();
        let watermarks = self.reader.watermarks(&changelogs)?;
        let mut registered = Vec::new();
        for (changelog, store, backend, from) in wanted {
            let Some(&(_, high)) = watermarks.get(&changelog) else { continue };
            self.reader.register(changelog.clone(), &store, backend, from, high)?;
            registered.push((changelog, store));
        }
        self.reader.run_until_done(deadline, RESTORE_FETCH_WAIT)?;
        for (changelog, store) in registered {
            let position = match self.reader.phase(&changelog) {
                Some(Phase::Done) => self.reader.complete(&changelog)?,
                _ => self.reader.abandon(&changelog)?,
            };
            if let (Some(position), Some(owned)) = (position, self.active.get_mut(&changelog.partition)) {
                owned.applied.insert(store, position);
            }
        }
        Ok(())
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

    /// Closes the restoring tasks where they are and forgets the pending ones: what each store
    /// has applied is made durable and checkpointed, so a later restore goes on from there.
    fn close_restoring(&mut self) {
        self.pending.clear();
        for (partition, mut restoring) in std::mem::take(&mut self.restoring) {
            let mut trusted = true;
            for (changelog, store) in std::mem::take(&mut restoring.changelogs) {
                match self.reader.abandon(&changelog) {
                    Ok(Some(position)) => {
                        if let Some(applied) = restoring.applied.get_mut(&store) {
                            *applied = position;
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, partition, "closing a restoring task failed; its restore starts over");
                        trusted = false;
                    }
                }
            }
            let result = match trusted && !restoring.applied.is_empty() {
                true => state_directory::write_checkpoint(&restoring.dir, &restoring.applied),
                false => state_directory::remove_checkpoint(&restoring.dir),
            };
            if let Err(error) = result {
                tracing::warn!(%error, partition, "checkpoint of a restoring task failed; its restore starts over");
            }
            tracing::info!(partition, "restoring task closed");
        }
    }

    /// Closes every task, active, suspended or restoring, each with a checkpoint. `clean` (a
    /// requested stop): the stores first catch up with their changelogs' ends, past the last
    /// commit's markers, so that the checkpoints leave nothing to read at the next start.
    pub fn close_all(&mut self, clean: bool) {
        self.active.extend(std::mem::take(&mut self.suspended));
        if clean {
            if let Err(error) = self.catch_up_active(Instant::now() + CLOSE_CATCH_UP_TIMEOUT) {
                tracing::warn!(%error, "catching the stores up on stop failed; the next start reads the rest");
            }
        }
        for (_, owned) in std::mem::take(&mut self.active) {
            self.close_task(owned);
        }
        self.close_restoring();
        self.update_gauges();
    }

    /// Writes the checkpoint of every active task.
    pub fn checkpoint_all(&self) -> Result<(), StreamsError> {
        for owned in self.active.values() {
            checkpoint_task(owned)?;
        }
        Ok(())
    }

    /// A transaction committed: the active tasks write their buffered changes to their stores,
    /// and each logged store's changelog position moves past what was delivered in it
    /// (`delivered`: changelog (topic, partition) → last delivered offset).
    pub fn committed(
        &mut self,
        delivered: &std::collections::HashMap<(String, i32), i64>,
    ) -> Result<(), StreamsError> {
        for (partition, owned) in &mut self.active {
            owned.task.committed()?;
            for store in owned.applied.keys().cloned().collect::<Vec<_>>() {
                let topic = crate::topology::changelog_topic(&self.config.application_id, &store);
                if let Some(offset) = delivered.get(&(topic, *partition)) {
                    owned.applied.insert(store, offset + 1);
                }
            }
        }
        Ok(())
    }

    /// The transaction is gone: every active task drops what it had not committed and is revived
    /// as it was after its last commit.
    /// The buffered input goes too: the caller rewinds the consumer to the committed offsets
    /// (or leaves the group), so the records are fetched again.
    pub fn aborted(&mut self) -> Result<(), StreamsError> {
        let now = now_ms();
        self.clear_buffers();
        for owned in self.active.values_mut() {
            owned.task.aborted(now)?;
        }
        Ok(())
    }

    /// Like [`TaskManager::aborted`] on the way out, where a failure changes nothing.
    pub fn aborted_quietly(&mut self) {
        let now = now_ms();
        self.clear_buffers();
        for owned in self.active.values_mut() {
            let _ = owned.task.aborted(now);
        }
    }

    /// Partitions of the active tasks.
    pub fn active_partitions(&self) -> Vec<i32> {
        self.active.keys().copied().collect()
    }

    // ----- input buffers -----

    /// Buffers a polled record of an active task, and pauses its partition if the buffer is
    /// full. A record of a task no longer active (revoked while in flight) is dropped: its owner
    /// reads it again.
    pub fn buffer<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, record: RawRecord) {
        let Some(owned) = self.active.get_mut(&record.partition) else { return };
        let (topic, partition) = (record.topic.clone(), record.partition);
        if owned.inputs.push(record) == Some(true) && self.flow_paused.insert((topic.clone(), partition)) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            if let Err(error) = consumer.pause(&tpl) {
                // librdkafka's own queue (`queued.max.messages.kbytes`) still bounds what comes.
                tracing::warn!(%error, %topic, partition, "pausing a partition with a full buffer failed");
            }
        }
    }

    /// The next record of the task of `partition` by the lowest-timestamp rule, if it has one
    /// ready (see `partition_group.rs`).
    pub fn next_record<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        now: Instant,
    ) -> Option<RawRecord> {
        let owned = self.active.get_mut(&partition)?;
        let index = owned
            .inputs
            .choose(now, self.config.max_task_idle, |topic| caught_up(consumer, topic, partition))
            .ok()?;
        let (record, left) = owned.inputs.pop(index)?;
        if left <= RESUME_BUFFERED_RECORDS && self.flow_paused.remove(&(record.topic.clone(), partition)) {
            resume_one(consumer, &record.topic, partition);
        }
        Some(record)
    }

    /// Whether any active task has records buffered.
    pub fn any_buffered(&self) -> bool {
        self.active.values().any(|owned| owned.inputs.buffered() > 0)
    }

    /// Resumes the partitions paused for a full buffer whose buffer has been dropped since (an
    /// abort, a suspend) or whose task has gone; those of restoring tasks are left to the
    /// task's activation, which resumes every one of its partitions. Cheap when none is paused.
    pub fn release_paused<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.flow_paused.is_empty() {
            return;
        }
        let released: Vec<(String, i32)> = self
            .flow_paused
            .iter()
            .filter(|(topic, partition)| match self.active.get(partition) {
                Some(owned) => owned.inputs.buffered_of(topic) <= RESUME_BUFFERED_RECORDS,
                None => true,
            })
            .cloned()
            .collect();
        for key in released {
            self.flow_paused.remove(&key);
            if !self.is_restoring(key.1) {
                resume_one(consumer, &key.0, key.1);
            }
        }
    }

    fn clear_buffers(&mut self) {
        for owned in self.active.values_mut() {
            owned.inputs.clear();
        }
    }

    fn pause_partitions<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partitions: impl IntoIterator<Item = i32>,
    ) {
        let tpl = self.source_partitions(partitions);
        if let Err(error) = consumer.pause(&tpl) {
            tracing::warn!(%error, "pausing a restoring task's partitions failed");
        }
    }

    /// Every source topic's partitions `partitions`.
    fn source_partitions(&self, partitions: impl IntoIterator<Item = i32>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let topics = self.topology.source_topics();
        for partition in partitions {
            for topic in &topics {
                tpl.add_partition(topic, partition);
            }
        }
        tpl
    }

    fn update_gauges(&self) {
        self.metrics.tasks.with_label_values(&["active"]).set(self.active.len() as i64);
        self.metrics
            .tasks
            .with_label_values(&["restoring"])
            .set((self.pending.len() + self.restoring.len()) as i64);
    }
}

fn resume_one<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    if let Err(error) = consumer.resume(&tpl) {
        tracing::debug!(%error, %topic, partition, "resuming a drained partition failed (no longer assigned?)");
    }
}

/// Whether `topic`/`partition` is caught up: the consumer's position (past the last record or
/// transaction marker polled) has reached the high watermark of the partition's last fetch
/// response, or the partition's log is empty. Both are librdkafka's cached values: no request.
/// Anything unknown (no fetch response yet, nothing polled since the assignment) is `Unknown`,
/// whose wait is bounded by `UNFETCHED_DATA_WAIT`; a known end beyond the position is `Behind`,
/// bounded by `FETCH_WAIT`.
fn caught_up<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> Caught {
    use rdkafka::bindings::{rd_kafka_get_watermark_offsets, rd_kafka_position};
    use rdkafka::types::RDKafkaRespErr;
    let Ok(c_topic) = CString::new(topic) else { return Caught::Unknown };
    let client = consumer.client().native_ptr();
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: `client` is the live handle of `consumer`, borrowed for this call; `c_topic` is a
    // NUL-terminated string that outlives the call; `low`/`high` are valid out-pointers. The
    // function only reads librdkafka's cached watermarks under its own lock.
    let error =
        unsafe { rd_kafka_get_watermark_offsets(client, c_topic.as_ptr(), partition, &mut low, &mut high) };
    if error != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
        return Caught::Unknown;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    // SAFETY: as above; `tpl` is a valid list owned here, which librdkafka fills in place.
    let error = unsafe { rd_kafka_position(client, tpl.ptr()) };
    if error != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Caught::Unknown;
    }
    match tpl.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(position)) if position >= high => Caught::Up,
        Some(Offset::Offset(_)) => Caught::Behind,
        _ if high == low => Caught::Up,
        _ => Caught::Unknown,
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
    state_directory::write_checkpoint(&owned.dir, &owned.applied)
        .map_err(|source| StreamsError::StateDir { path: owned.dir.clone(), source })
}
