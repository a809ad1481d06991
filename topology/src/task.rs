//! A task: one partition of the co-partitioned sources, its processor instances and its stores.
//!
//! The task knows nothing of Kafka clients: it turns raw records into output records and store
//! writes, and the caller (the runtime, or the test driver) decides when they are committed. That
//! is what lets the test driver run the very code production runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::dlq::{dead_letter, ErrorPolicy, PoisonKind};
use crate::metrics::StreamsMetrics;
use crate::processor::{BoxError, ProcessError, Processor, ProcessorContext, PunctuationType, Schedule};
use crate::record::{OutputRecord, RawRecord, Record};
use crate::store::buffered::BufferedStore;
use crate::store::{SharedBackend, StoreError};
use crate::topology::{changelog_topic, NodeKind, TopologyInner};

/// Why a task cannot go on. Each of these aborts the transaction; the caller decides whether to stop.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A record is poison and the policy is `Fail`.
    #[error("{kind:?} error at {topic}-{partition}@{offset} in {node}: {detail}")]
    Poison {
        /// Which step refused it.
        kind: PoisonKind,
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
        /// The node that refused it.
        node: String,
        /// The error in words.
        detail: String,
    },
    /// A record came from a topic no source reads (a subscription mismatch).
    #[error("no source reads topic {0}")]
    UnknownTopic(String),
    /// A processor failed in a way that is not the record's fault.
    #[error("processor {node}: {source}")]
    Processor {
        /// The node.
        node: String,
        /// Its error.
        #[source]
        source: ProcessError,
    },
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not the record's fault and worth another try: a dependency is away (a deserializer or
    /// serializer error marked [`crate::processor::Retriable`], or [`ProcessError::Retriable`]).
    /// The record's staged work is already dropped; the caller aborts the transaction (every
    /// task's uncommitted work), rewinds to the committed offsets, backs off and processes the
    /// same record again. Never dead-lettered.
    #[error("retriable {} error at {at} in {node}: {source}", kind.as_str())]
    Retriable {
        /// Which step failed.
        kind: RetriableKind,
        /// Where: `<topic>-<partition>@<offset>` of the input record, or the punctuation.
        at: String,
        /// The node that failed.
        node: String,
        /// The dependency's error.
        #[source]
        source: BoxError,
    },
}

impl TaskError {
    /// Whether the caller should abort, back off and retry rather than stop.
    pub fn is_retriable(&self) -> bool {
        matches!(self, TaskError::Retriable { .. })
    }
}

/// Which step met a retriable error: the `kind` label of the retriable-errors metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetriableKind {
    /// A source's deserializer.
    Deserialization,
    /// A processor's `process`.
    Processing,
    /// A sink's serializer.
    Serialization,
    /// A punctuation (the processor's `punctuate`, or a sink it forwarded to).
    Punctuation,
}

impl RetriableKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetriableKind::Deserialization => "deserialization",
            RetriableKind::Processing => "processing",
            RetriableKind::Serialization => "serialization",
            RetriableKind::Punctuation => "punctuation",
        }
    }

    fn of(kind: PoisonKind) -> Self {
        match kind {
            PoisonKind::Deserialization => RetriableKind::Deserialization,
            PoisonKind::Processing => RetriableKind::Processing,
            PoisonKind::Serialization => RetriableKind::Serialization,
        }
    }
}

/// What happened to one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// It went through the graph.
    Ok,
    /// It was dead-lettered for this reason.
    DeadLettered(PoisonKind),
}

/// How a task was configured by its runtime.
#[derive(Clone)]
pub(crate) struct TaskContext {
    /// The application, for changelog names and DLQ headers.
    pub application_id: String,
    /// What to do with poison records.
    pub policy: ErrorPolicy,
    /// Where to count.
    pub metrics: StreamsMetrics,
}

/// A record that failed inside the graph: which node, why, and whether it is the record's fault.
struct Failure {
    node: usize,
    kind: PoisonKind,
    error: ProcessError,
}

/// One partition's processing state.
pub(crate) struct Task<K, V> {
    /// The partition of every source topic this task reads.
    pub partition: i32,
    /// The shared graph.
    topology: Arc<TopologyInner<K, V>>,
    /// Configuration from the runtime.
    ctx: TaskContext,
    /// Processor instances by node index (`None` for sources and sinks).
    processors: Vec<Option<Box<dyn Processor<K, V>>>>,
    /// Stores in topology order.
    stores: Vec<BufferedStore>,
    /// Store name → index.
    store_index: HashMap<String, usize>,
    /// Punctuation schedules.
    schedules: Vec<Schedule>,
    /// Largest record timestamp processed.
    stream_time_ms: Option<i64>,
    /// Forwarded records not yet delivered to their node.
    queue: VecDeque<(usize, Record<K, V>)>,
    /// Outputs of the current record (dropped if it fails).
    staged_outputs: Vec<OutputRecord>,
    /// Outputs ready to be sent.
    outputs: Vec<OutputRecord>,
    /// Source topic → offset of the next record to read, for the commit.
    consumed: BTreeMap<String, i64>,
    /// A processor asked for a commit.
    commit_requested: bool,
    /// Records-in counter per node, resolved once (label lookups cost more than the work).
    node_in: Vec<prometheus::IntCounter>,
    /// Records-out counter per node.
    node_out: Vec<prometheus::IntCounter>,
}

impl<K: Clone + 'static, V: Clone + 'static> Task<K, V> {
    /// A task over `backends` (one per topology store, in order), with processors initialized.
    pub fn new(
        partition: i32,
        topology: Arc<TopologyInner<K, V>>,
        backends: Vec<SharedBackend>,
        ctx: TaskContext,
        wall_clock_ms: i64,
    ) -> Result<Self, TaskError> {
        let stores: Vec<BufferedStore> = topology
            .stores
            .iter()
            .zip(backends)
            .map(|(spec, backend)| BufferedStore::new(&spec.name, backend))
            .collect();
        let store_index = topology.stores.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        let node_in = topology
            .nodes
            .iter()
            .map(|(_, n)| ctx.metrics.records_in.with_label_values(&[&n.name]))
            .collect();
        let node_out = topology
            .nodes
            .iter()
            .map(|(_, n)| ctx.metrics.records_out.with_label_values(&[&n.name]))
            .collect();
        let mut task = Self {
            partition,
            topology,
            ctx,
            processors: Vec::new(),
            stores,
            store_index,
            schedules: Vec::new(),
            stream_time_ms: None,
            queue: VecDeque::new(),
            staged_outputs: Vec::new(),
            outputs: Vec::new(),
            consumed: BTreeMap::new(),
            commit_requested: false,
            node_in,
            node_out,
        };
        task.init_processors(wall_clock_ms)?;
        Ok(task)
    }

    /// Fresh processor instances, initialized: on creation and after an abort (Kafka Streams
    /// closes a task "dirty" and revives it the same way).
    fn init_processors(&mut self, wall_clock_ms: i64) -> Result<(), TaskError> {
        self.processors = self
            .topology
            .nodes
            .iter()
            .map(|(_, node)| match &node.kind {
                NodeKind::Processor { supplier } => Some(supplier()),
                _ => None,
            })
            .collect();
        self.schedules.clear();
        for index in 0..self.processors.len() {
            let Some(mut processor) = self.processors[index].take() else { continue };
            let result = processor.init(&mut self.context(index, None, wall_clock_ms));
            self.processors[index] = Some(processor);
            result.map_err(|source| self.processor_error(index, source))?;
            // Records forwarded and writes made in init belong to the first commit.
            self.drain(None, wall_clock_ms)
                .map_err(|failure| self.processor_error(failure.node, failure.error))?;
            self.keep_record();
        }
        Ok(())
    }

    fn context<'a>(
        &'a mut self,
        node: usize,
        metadata: Option<&'a crate::record::RecordMetadata>,
        wall_clock_ms: i64,
    ) -> ProcessorContext<'a, K, V> {
        ProcessorContext {
            node,
            nodes: &self.topology.nodes,
            queue: &mut self.queue,
            stores: &mut self.stores,
            store_index: &self.store_index,
            schedules: &mut self.schedules,
            metadata,
            partition: self.partition,
            stream_time_ms: self.stream_time_ms,
            wall_clock_ms,
            commit_requested: &mut self.commit_requested,
        }
    }

    fn processor_error(&self, node: usize, source: ProcessError) -> TaskError {
        TaskError::Processor { node: self.topology.nodes.get(node).name.clone(), source }
    }

    /// Processes one raw record: deserialize, run the graph, stage outputs and writes.
    pub fn process(&mut self, raw: &RawRecord, wall_clock_ms: i64) -> Result<Processed, TaskError> {
        let started = Instant::now();
        let &source = self
            .topology
            .source_by_topic
            .get(&raw.topic)
            .ok_or_else(|| TaskError::UnknownTopic(raw.topic.clone()))?;
        match self.consumed.get_mut(&raw.topic) {
            Some(next) => *next = raw.offset + 1,
            None => {
                self.consumed.insert(raw.topic.clone(), raw.offset + 1);
            }
        }
        let NodeKind::Source { deserializer, .. } = &self.topology.nodes.get(source).kind else {
            unreachable!("source_by_topic only names source nodes");
        };
        let (key, value) = match deserializer(raw) {
            Ok(kv) => kv,
            Err(error) => {
                return self.poison(
                    raw,
                    Failure {
                        node: source,
                        kind: PoisonKind::Deserialization,
                        error: ProcessError::retriable_or(error, ProcessError::Poison),
                    },
                )
            }
        };
        self.stream_time_ms = Some(self.stream_time_ms.map_or(raw.timestamp_ms, |t| t.max(raw.timestamp_ms)));
        let record = Record { key, value, timestamp_ms: raw.timestamp_ms, headers: raw.headers.clone() };
        let metadata = raw.metadata();
        self.node_in[source].inc();
        // Clone for all children but the last, which takes the record itself.
        if let Some((&last, rest)) = self.topology.nodes.get(source).children.split_last() {
            for &child in rest {
                self.queue.push_back((child, record.clone()));
            }
            self.queue.push_back((last, record));
        }
        let outcome = match self.drain(Some(&metadata), wall_clock_ms) {
            Ok(()) => {
                self.keep_record();
                Processed::Ok
            }
            Err(failure) => return self.poison(raw, failure),
        };
        self.punctuate(PunctuationType::StreamTime, wall_clock_ms)?;
        self.ctx.metrics.process_latency.observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    /// Runs queued records through their nodes until the queue is empty (breadth first).
    fn drain(
        &mut self,
        metadata: Option<&crate::record::RecordMetadata>,
        wall_clock_ms: i64,
    ) -> Result<(), Failure> {
        while let Some((node, record)) = self.queue.pop_front() {
            let topology = self.topology.clone();
            let spec = topology.nodes.get(node);
            self.node_in[node].inc();
            match &spec.kind {
                NodeKind::Sink { topic, serializer } => {
                    let (key, value) = serializer(&record).map_err(|e| Failure {
                        node,
                        kind: PoisonKind::Serialization,
                        error: ProcessError::retriable_or(e, ProcessError::Poison),
                    })?;
                    self.staged_outputs.push(OutputRecord {
                        topic: topic.clone(),
                        partition: None,
                        key,
                        value,
                        timestamp_ms: record.timestamp_ms,
                        headers: record.headers,
                    });
                }
                NodeKind::Processor { .. } => {
                    let Some(mut processor) = self.processors[node].take() else {
                        unreachable!("every processor node has an instance while the task lives");
                    };
                    let before = self.queue.len();
                    let result = processor.process(record, &mut self.context(node, metadata, wall_clock_ms));
                    self.processors[node] = Some(processor);
                    result.map_err(|error| Failure { node, kind: PoisonKind::Processing, error })?;
                    let forwarded = self.queue.len().saturating_sub(before) as u64;
                    self.node_out[node].inc_by(forwarded);
                }
                NodeKind::Source { .. } => unreachable!("sources are never children"),
            }
        }
        Ok(())
    }

    fn keep_record(&mut self) {
        self.stores.iter_mut().for_each(BufferedStore::keep_record);
        self.outputs.append(&mut self.staged_outputs);
    }

    fn drop_record(&mut self) {
        self.stores.iter_mut().for_each(BufferedStore::drop_record);
        self.staged_outputs.clear();
        self.queue.clear();
    }

    /// A record failed: dead-letter it, or fail, by policy. Store errors and fatal errors always
    /// fail; a retriable error is handed to the caller to retry, never dead-lettered.
    fn poison(&mut self, raw: &RawRecord, failure: Failure) -> Result<Processed, TaskError> {
        self.drop_record();
        let Failure { node, kind, error } = failure;
        let node_name = self.topology.nodes.get(node).name.clone();
        let error = match error {
            ProcessError::Retriable(source) => {
                let at = format!("{}-{}@{}", raw.topic, raw.partition, raw.offset);
                return Err(self.retriable(RetriableKind::of(kind), at, node_name, source));
            }
            other => other,
        };
        let ProcessError::Poison(reason) = error else {
            return Err(TaskError::Processor { node: node_name, source: error });
        };
        let detail = reason.to_string();
        match &self.ctx.policy {
            ErrorPolicy::DeadLetter { topic } => {
                tracing::warn!(topic = %raw.topic, partition = raw.partition, offset = raw.offset, node = %node_name,
                    reason = kind.as_str(), %detail, "poison record sent to the dead-letter topic");
                self.ctx.metrics.dead_letters.with_label_values(&[kind.as_str()]).inc();
                let letter = dead_letter(topic, raw, kind, &detail, &self.ctx.application_id, &node_name);
                self.outputs.push(letter);
                Ok(Processed::DeadLettered(kind))
            }
            ErrorPolicy::Fail => Err(TaskError::Poison {
                kind,
                topic: raw.topic.clone(),
                partition: raw.partition,
                offset: raw.offset,
                node: node_name,
                detail,
            }),
        }
    }

    /// Counts a retriable error and builds it for the caller, who aborts, backs off and retries.
    fn retriable(&self, kind: RetriableKind, at: String, node: String, source: BoxError) -> TaskError {
        self.ctx.metrics.retriable_errors.with_label_values(&[kind.as_str()]).inc();
        TaskError::Retriable { kind, at, node, source }
    }

    /// Fires every due schedule of clock `kind`; returns how many fired.
    pub fn punctuate(&mut self, kind: PunctuationType, wall_clock_ms: i64) -> Result<usize, TaskError> {
        let now = match kind {
            PunctuationType::StreamTime => match self.stream_time_ms {
                Some(t) => t,
                None => return Ok(0),
            },
            PunctuationType::WallClock => wall_clock_ms,
        };
        let mut fired = 0;
        for i in 0..self.schedules.len() {
            let schedule = &mut self.schedules[i];
            if schedule.kind != kind {
                continue;
            }
            let due = *schedule.next_due_ms.get_or_insert(now.saturating_add(schedule.interval_ms));
            if now < due {
                continue;
            }
            // Fire once for now, then skip missed intervals (Kafka Streams' semantics).
            let missed = (now - due) / schedule.interval_ms;
            schedule.next_due_ms = Some(due + (missed + 1) * schedule.interval_ms);
            let (node, id) = (schedule.node, schedule.id);
            let Some(mut processor) = self.processors[node].take() else {
                unreachable!("schedules belong to processor nodes");
            };
            let result = processor.punctuate(id, now, &mut self.context(node, None, wall_clock_ms));
            self.processors[node] = Some(processor);
            let clock = match kind {
                PunctuationType::StreamTime => "stream_time",
                PunctuationType::WallClock => "wall_clock",
            };
            let name = self.topology.nodes.get(node).name.clone();
            self.ctx.metrics.punctuations.with_label_values(&[&name, clock]).inc();
            let result = result.and_then(|()| {
                self.drain(None, wall_clock_ms).map_err(|f| match f.error {
                    ProcessError::Poison(e) => {
                        ProcessError::Fatal(format!("{:?} error in a punctuation: {e}", f.kind).into())
                    }
                    other => other,
                })
            });
            match result {
                Ok(()) => self.keep_record(),
                Err(ProcessError::Retriable(source)) => {
                    // A dependency is away: the caller aborts and the punctuation runs again
                    // after a back-off (the revived processor schedules it anew).
                    self.drop_record();
                    let at = format!("a {clock} punctuation of partition {}", self.partition);
                    return Err(self.retriable(RetriableKind::Punctuation, at, name, source));
                }
                Err(error) => {
                    // A punctuation has no input record to dead-letter: its writes are dropped and
                    // the task stops, so the fault is seen rather than silently repeated.
                    self.drop_record();
                    return Err(self.processor_error(node, error));
                }
            }
            fired += 1;
        }
        Ok(fired)
    }

    /// Whether a wall-clock punctuation is due at `wall_clock_ms` (so the runtime opens a
    /// transaction only when something may be written).
    pub fn wall_clock_due(&self, wall_clock_ms: i64) -> bool {
        self.schedules.iter().any(|s| {
            s.kind == PunctuationType::WallClock && s.next_due_ms.is_none_or(|due| due <= wall_clock_ms)
        })
    }

    /// Outputs ready to send (sinks and dead letters), in order.
    pub fn take_outputs(&mut self) -> Vec<OutputRecord> {
        std::mem::take(&mut self.outputs)
    }

    /// Whether a processor asked for a commit; reading it clears it.
    pub fn take_commit_request(&mut self) -> bool {
        std::mem::take(&mut self.commit_requested)
    }

    /// Changelog records for this interval: the last write per key of every logged store, sent to
    /// the task's partition of the changelog.
    pub fn changelog_records(&self, timestamp_ms: i64) -> Vec<OutputRecord> {
        let mut records = Vec::new();
        for (spec, store) in self.topology.stores.iter().zip(&self.stores) {
            if !spec.logged {
                continue;
            }
            let topic = changelog_topic(&self.ctx.application_id, &spec.name);
            records.extend(store.pending().map(|(key, value)| OutputRecord {
                topic: topic.clone(),
                partition: Some(self.partition),
                key: Some(key.to_vec()),
                value: value.map(<[u8]>::to_vec),
                timestamp_ms,
                headers: Vec::new(),
            }));
        }
        records
    }

    /// Offsets to commit: source topic → next offset.
    pub fn consumed(&self) -> &BTreeMap<String, i64> {
        &self.consumed
    }

    /// The transaction committed: apply store writes and forget what was committed.
    pub fn committed(&mut self) -> Result<(), StoreError> {
        for store in &mut self.stores {
            store.apply()?;
        }
        self.consumed.clear();
        Ok(())
    }

    /// The transaction aborted: drop everything uncommitted and revive the processors, so the
    /// task is exactly as it was after its last commit (the caller rewinds the consumer).
    pub fn aborted(&mut self, wall_clock_ms: i64) -> Result<(), TaskError> {
        for store in &mut self.stores {
            store.discard();
        }
        self.queue.clear();
        self.staged_outputs.clear();
        self.outputs.clear();
        self.consumed.clear();
        self.commit_requested = false;
        self.stream_time_ms = None;
        for processor in self.processors.iter_mut().flatten() {
            processor.close();
        }
        self.init_processors(wall_clock_ms)
    }

    /// Committed state of each store, by name.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &SharedBackend)> {
        self.stores.iter().map(|s| (crate::store::KeyValueStore::name(s), s.backend()))
    }

    /// The task's stream time.
    pub fn stream_time_ms(&self) -> Option<i64> {
        self.stream_time_ms
    }

    /// Closes the processors. Uncommitted work must have been committed or aborted before.
    pub fn close(&mut self) {
        for processor in self.processors.iter_mut().flatten() {
            processor.close();
        }
    }
}
