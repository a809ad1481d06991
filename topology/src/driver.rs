//! `TopologyTestDriver`: runs a topology in-process, deterministically, with no broker.
//!
//! It drives the same [`Task`] code the runtime runs, over in-memory stores, on partition 0, and
//! commits after every input record (as Kafka Streams' driver does). Outputs, dead letters and
//! changelog records land in in-memory topics the test reads back. The wall clock is the
//! driver's own and moves only when the test says so.
//!
//! A retriable error (a dependency away, [`crate::processor::Retriable`]) is returned to the test
//! as `Err(TaskError::Retriable { .. })`, never as a dead letter: the driver drops the step's work
//! and revives the processors as the runtime's abort does, and does not count the record as
//! consumed, so piping it again is the runtime's retry of the same record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::dlq::ErrorPolicy;
use crate::metrics::StreamsMetrics;
use crate::processor::PunctuationType;
use crate::record::{Headers, OutputRecord, RawRecord};
use crate::store::memory::MemoryBackend;
use crate::store::{ReadOnlyKeyValueStore, SharedBackend, StoreBackend};
use crate::task::{Processed, Task, TaskContext, TaskError};
use crate::topology::Topology;

/// The partition every driven record is on.
pub const DRIVER_PARTITION: i32 = 0;

/// A deterministic, broker-free runner for one task of a topology.
pub struct TopologyTestDriver<K, V> {
    /// The topology, kept to rebuild the task on `restart`.
    topology: Topology<K, V>,
    /// The task being driven.
    task: Task<K, V>,
    /// Task configuration.
    ctx: TaskContext,
    /// Committed state per store.
    backends: HashMap<String, Arc<MemoryBackend>>,
    /// Every record written, per topic, in order (read cursors are separate).
    topics: HashMap<String, Vec<OutputRecord>>,
    /// Per topic, the index of the next record `read_output` returns.
    cursors: HashMap<String, usize>,
    /// Next offset per input topic.
    offsets: HashMap<String, i64>,
    /// The driver's wall clock.
    wall_clock_ms: i64,
}

impl<K: Clone + 'static, V: Clone + 'static> TopologyTestDriver<K, V> {
    /// A driver for `topology` as application `application_id`, dead-lettering poison records to
    /// `dlq`, with the wall clock at `wall_clock_ms`.
    pub fn new(
        topology: Topology<K, V>,
        application_id: &str,
        policy: ErrorPolicy,
        wall_clock_ms: i64,
    ) -> Result<Self, TaskError> {
        let ctx = TaskContext {
            application_id: application_id.to_string(),
            policy,
            metrics: StreamsMetrics::new(application_id),
        };
        let backends: HashMap<String, Arc<MemoryBackend>> =
            topology.stores().iter().map(|s| (s.name.clone(), Arc::new(MemoryBackend::new()))).collect();
        let task = Self::task(&topology, &backends, &ctx, wall_clock_ms)?;
        let mut driver = Self {
            topology,
            task,
            ctx,
            backends,
            topics: HashMap::new(),
            cursors: HashMap::new(),
            offsets: HashMap::new(),
            wall_clock_ms,
        };
        driver.commit()?;
        Ok(driver)
    }

    fn task(
        topology: &Topology<K, V>,
        backends: &HashMap<String, Arc<MemoryBackend>>,
        ctx: &TaskContext,
        wall_clock_ms: i64,
    ) -> Result<Task<K, V>, TaskError> {
        let shared: Vec<SharedBackend> =
            topology.stores().iter().map(|s| backends[&s.name].clone() as SharedBackend).collect();
        Task::new(DRIVER_PARTITION, topology.inner.clone(), shared, ctx.clone(), wall_clock_ms)
    }

    /// Pipes one record with no headers into `topic`.
    pub fn pipe(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<Processed, TaskError> {
        self.pipe_with_headers(topic, key, value, timestamp_ms, Vec::new())
    }

    /// Pipes one record into `topic`, processes it and commits.
    pub fn pipe_with_headers(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
        headers: Headers,
    ) -> Result<Processed, TaskError> {
        let offset = self.offsets.entry(topic.to_string()).or_insert(0);
        let raw = RawRecord {
            topic: topic.to_string(),
            partition: DRIVER_PARTITION,
            offset: *offset,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            timestamp_ms,
            headers,
        };
        *offset += 1;
        let outcome = match self.task.process(&raw, self.wall_clock_ms) {
            Ok(outcome) => outcome,
            Err(error) if error.is_retriable() => {
                // Not consumed: the retry is the same record at the same offset.
                self.offsets.insert(topic.to_string(), raw.offset);
                return Err(self.abort(error));
            }
            Err(error) => return Err(error),
        };
        self.commit()?;
        Ok(outcome)
    }

    /// A retriable error: drop the step's uncommitted work and revive the processors, as the
    /// runtime's abort does, and hand the error (or a failure of the revival) to the test.
    fn abort(&mut self, error: TaskError) -> TaskError {
        match self.task.aborted(self.wall_clock_ms) {
            Ok(()) => error,
            Err(revival) => revival,
        }
    }

    /// Moves the wall clock forward and fires due wall-clock punctuations; returns how many fired.
    pub fn advance_wall_clock(&mut self, by: Duration) -> Result<usize, TaskError> {
        self.wall_clock_ms += i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let fired = match self.task.punctuate(PunctuationType::WallClock, self.wall_clock_ms) {
            Ok(fired) => fired,
            Err(error) if error.is_retriable() => return Err(self.abort(error)),
            Err(error) => return Err(error),
        };
        self.commit()?;
        Ok(fired)
    }

    /// The driver's wall clock.
    pub fn wall_clock_ms(&self) -> i64 {
        self.wall_clock_ms
    }

    /// The task's stream time.
    pub fn stream_time_ms(&self) -> Option<i64> {
        self.task.stream_time_ms()
    }

    /// The next unread record of `topic`, if any.
    pub fn read_output(&mut self, topic: &str) -> Option<OutputRecord> {
        let cursor = self.cursors.entry(topic.to_string()).or_insert(0);
        let record = self.topics.get(topic)?.get(*cursor)?.clone();
        *cursor += 1;
        Some(record)
    }

    /// Every unread record of `topic`.
    pub fn read_all(&mut self, topic: &str) -> Vec<OutputRecord> {
        std::iter::from_fn(|| self.read_output(topic)).collect()
    }

    /// Every record ever written to `topic` (changelogs included), read or not.
    pub fn topic(&self, topic: &str) -> &[OutputRecord] {
        self.topics.get(topic).map(Vec::as_slice).unwrap_or_default()
    }

    /// Committed state of store `name`.
    pub fn store(&self, name: &str) -> Option<&dyn ReadOnlyKeyValueStore> {
        self.backends.get(name).map(|b| b.as_ref() as &dyn ReadOnlyKeyValueStore)
    }

    /// Simulates losing the machine: the stores are rebuilt from their changelog topics alone
    /// and the task starts again, as a new owner of the partition would.
    pub fn restart_from_changelogs(&mut self) -> Result<(), TaskError> {
        self.task.close();
        let mut restored = HashMap::new();
        for spec in self.topology.stores() {
            let backend = Arc::new(MemoryBackend::new());
            if spec.logged {
                let changelog = spec.changelog_topic(&self.ctx.application_id);
                for record in self.topics.get(&changelog).map(Vec::as_slice).unwrap_or_default() {
                    if let Some(key) = &record.key {
                        let mut write = std::iter::once((key.as_slice(), record.value.as_deref()));
                        backend.write_batch(&mut write)?;
                    }
                }
            }
            restored.insert(spec.name.clone(), backend);
        }
        self.backends = restored;
        self.task = Self::task(&self.topology, &self.backends, &self.ctx, self.wall_clock_ms)?;
        self.commit()
    }

    /// Commits the task's pending work into the in-memory topics and stores.
    fn commit(&mut self) -> Result<(), TaskError> {
        let mut written = self.task.take_outputs();
        written.extend(self.task.changelog_records(self.wall_clock_ms));
        for record in written {
            self.topics.entry(record.topic.clone()).or_default().push(record);
        }
        self.task.committed()?;
        Ok(())
    }
}
