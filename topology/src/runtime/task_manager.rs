//! The task manager: which tasks this instance owns, and their life cycle — assign, revoke
//! (suspend), open (stores, restoration, query registration), close (checkpoint, unregister).
//! Kafka Streams' `TaskManager`.
//!
//! It knows nothing of transactions: the stream thread commits the active tasks' work through the
//! producer and then tells the tasks (and this manager's changelog positions) that it is durable.
//! Keeping the two apart is what lets a rebalance callback suspend and close tasks without
//! reaching into the commit path, and the commit path recover without touching task life cycles.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;
use rdkafka::TopicPartitionList;

use super::clients::QuietContext;
use super::restore::{self, StartFrom};
use super::state_directory::{self, Offsets};
use super::stream_thread::now_ms;
use super::{StreamsConfig, StreamsError};
use crate::metrics::StreamsMetrics;
use crate::query::QueryRegistry;
use crate::store::memory::MemoryBackend;
use crate::store::rocks::RocksBackend;
use crate::store::SharedBackend;
use crate::task::{Task, TaskContext};
use crate::topology::{StoreKind, Topology};

/// A task with its directory and changelog positions.
pub(super) struct OwnedTask<K, V> {
    /// The task.
    pub task: Task<K, V>,
    /// `<state_dir>/<application_id>/0_<partition>`.
    pub dir: PathBuf,
    /// Logged persistent stores: name → next changelog offset applied to RocksDB.
    pub applied: Offsets,
}

/// The tasks of this instance.
pub(super) struct TaskManager<K, V> {
    topology: Topology<K, V>,
    config: StreamsConfig,
    task_ctx: TaskContext,
    metrics: StreamsMetrics,
    registry: QueryRegistry,
    restore_consumer: BaseConsumer<QuietContext>,
    /// Tasks being processed, by partition.
    pub active: BTreeMap<i32, OwnedTask<K, V>>,
    /// Tasks revoked in this rebalance, kept open in case they come back (eager protocol).
    suspended: BTreeMap<i32, OwnedTask<K, V>>,
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> TaskManager<K, V> {
    /// A manager with no tasks yet.
    pub fn new(
        topology: Topology<K, V>,
        config: StreamsConfig,
        metrics: StreamsMetrics,
        registry: QueryRegistry,
        restore_consumer: BaseConsumer<QuietContext>,
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
            restore_consumer,
            active: BTreeMap::new(),
            suspended: BTreeMap::new(),
        }
    }

    /// Partitions are being revoked (after their work was committed): every active task is
    /// suspended, kept open in case it comes back.
    pub fn suspend_all(&mut self) {
        let tasks = std::mem::take(&mut self.active);
        self.suspended.extend(tasks);
        self.metrics.tasks.with_label_values(&["active"]).set(0);
    }

    /// Partitions were assigned: resume suspended tasks we keep, restore new ones, close the rest.
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
            let owned = match self.suspended.remove(partition) {
                Some(owned) => owned,
                None => self.open_task(*partition)?,
            };
            self.active.insert(*partition, owned);
        }
        for (_, owned) in std::mem::take(&mut self.suspended) {
            self.close_task(owned);
        }
        self.metrics.tasks.with_label_values(&["active"]).set(self.active.len() as i64);
        tracing::info!(partitions = ?self.active.keys().collect::<Vec<_>>(), "tasks assigned");
        Ok(())
    }

    /// Opens a task's stores, restores them from their changelogs, and registers them for queries.
    fn open_task(&mut self, partition: i32) -> Result<OwnedTask<K, V>, StreamsError> {
        let dir = state_directory::task_dir(&self.config.app_dir(), partition);
        let checkpoints = state_directory::read_checkpoint(&dir).unwrap_or_default();
        // From here the local state is ahead of (or equal to) the checkpoint only by committed
        // writes; a crash leaves a checkpoint that is safe to restore from.
        let mut backends: Vec<SharedBackend> = Vec::new();
        let mut applied = Offsets::new();
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
                            state_directory::wipe_store(&spec.name, &path)?;
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

    /// Closes every task, active or suspended, each with a checkpoint.
    pub fn close_all(&mut self) {
        let tasks: Vec<_> = std::mem::take(&mut self.active)
            .into_values()
            .chain(std::mem::take(&mut self.suspended).into_values())
            .collect();
        for owned in tasks {
            self.close_task(owned);
        }
        self.metrics.tasks.with_label_values(&["active"]).set(0);
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
    pub fn aborted(&mut self) -> Result<(), StreamsError> {
        let now = now_ms();
        for owned in self.active.values_mut() {
            owned.task.aborted(now)?;
        }
        Ok(())
    }

    /// Like [`TaskManager::aborted`] on the way out, where a failure changes nothing.
    pub fn aborted_quietly(&mut self) {
        let now = now_ms();
        for owned in self.active.values_mut() {
            let _ = owned.task.aborted(now);
        }
    }

    /// Partitions of the active tasks.
    pub fn active_partitions(&self) -> Vec<i32> {
        self.active.keys().copied().collect()
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
