//! The `Processor` trait and the context it works through, after Kafka Streams' Processor API.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::record::{Record, RecordMetadata};
use crate::store::buffered::BufferedStore;
use crate::store::{KeyValueStore, StoreError};
use crate::topology::Nodes;

/// Errors a processor (or a deserializer) returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Marks an error as retriable: a dependency is away (a schema registry that cannot be reached or
/// answers 5xx or 429, a timeout), and the same record may well succeed in a moment.
///
/// Deserializers and serializers return a plain [`BoxError`], so this wrapper is how they say
/// "not the record's fault": `Err(Retriable::boxed(error))`. The runtime finds it by downcast (at
/// the top of the error, or anywhere in its `source()` chain) and then never dead-letters the
/// record: it aborts the open transaction, rewinds to the committed offsets, backs off and
/// processes the same record again. Any other error of a deserializer or serializer is poison.
/// A processor returns [`ProcessError::Retriable`] for the same meaning.
#[derive(Debug)]
pub struct Retriable(pub BoxError);

impl Retriable {
    /// `error`, marked retriable and boxed, ready to return from a deserializer or serializer.
    pub fn boxed(error: impl Into<BoxError>) -> BoxError {
        Box::new(Retriable(error.into()))
    }

    /// Whether `error` is marked retriable, at its top or anywhere in its source chain.
    pub fn is_marked(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(error) = current {
            if error.is::<Retriable>() {
                return true;
            }
            current = error.source();
        }
        false
    }
}

impl std::fmt::Display for Retriable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The marker adds no words: logs and metrics show the dependency's own error.
        self.0.fmt(f)
    }
}

impl std::error::Error for Retriable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why processing a record failed, which decides what the runtime does next.
///
/// A deserializer's or serializer's [`BoxError`] becomes [`ProcessError::Retriable`] when it is
/// marked with [`Retriable`], and [`ProcessError::Poison`] otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// This record cannot be processed, ever (bad content, an illegal value). Under the dead-letter
    /// policy it goes to the DLQ with the reason in its headers and processing continues; its store
    /// writes and outputs are dropped.
    #[error("poison record: {0}")]
    Poison(#[source] BoxError),
    /// Not the record's fault, and retrying may succeed: a dependency is away (a registry, a
    /// timeout). Never dead-lettered, whatever the policy: the runtime aborts the transaction (every
    /// task's uncommitted work is dropped), rewinds to the committed offsets, backs off (capped
    /// exponential) and processes the same record again. In a punctuation it means the same: abort
    /// and retry, not stop.
    #[error("retriable: {0}")]
    Retriable(#[source] BoxError),
    /// A store failed (disk, RocksDB). Not the record's fault: the transaction aborts and the
    /// runtime stops rather than dead-letter good records.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A processor named a child it does not have: a programming error in the topology.
    #[error("processor {processor} has no child named {child}")]
    UnknownChild {
        /// The processor that forwarded.
        processor: String,
        /// The name it used.
        child: String,
    },
    /// Anything else the processor cannot go on from; the runtime aborts and stops.
    #[error("fatal: {0}")]
    Fatal(#[source] BoxError),
}

impl ProcessError {
    /// A poison-record error from anything printable.
    pub fn poison(reason: impl Into<BoxError>) -> Self {
        ProcessError::Poison(reason.into())
    }

    /// A retriable error from anything printable.
    pub fn retriable(reason: impl Into<BoxError>) -> Self {
        ProcessError::Retriable(reason.into())
    }

    /// `error` as [`ProcessError::Retriable`] if it is marked with [`Retriable`], else as
    /// `otherwise` says: how the runtime reads a deserializer's or serializer's error
    /// (`otherwise` = `Poison`), and how a processor that calls a codec itself should read its
    /// error (e.g. `otherwise` = `Fatal`), so that a registry blip is retried there too.
    pub fn retriable_or(error: BoxError, otherwise: impl FnOnce(BoxError) -> ProcessError) -> Self {
        match error.downcast::<Retriable>() {
            Ok(marked) => ProcessError::Retriable(marked.0),
            Err(error) if Retriable::is_marked(error.as_ref()) => ProcessError::Retriable(error),
            Err(error) => otherwise(error),
        }
    }

    /// Whether the runtime retries this error rather than dead-letter or stop.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ProcessError::Retriable(_))
    }
}

impl From<Retriable> for ProcessError {
    fn from(marked: Retriable) -> Self {
        ProcessError::Retriable(marked.0)
    }
}

/// Which clock a punctuation follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunctuationType {
    /// Advances only with the timestamps of the task's records: deterministic, replayable.
    StreamTime,
    /// The system clock, checked by the runtime's loop (best effort, at least the poll timeout).
    WallClock,
}

/// Names one `schedule` call of one processor, so `punctuate` knows which schedule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PunctuationId(pub(crate) usize);

/// One scheduled punctuation of one task.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// The processor node to call.
    pub node: usize,
    /// Its id, handed back to `punctuate`.
    pub id: PunctuationId,
    /// Interval in milliseconds.
    pub interval_ms: i64,
    /// Which clock.
    pub kind: PunctuationType,
    /// The next time it is due; `None` until that clock has a value (stream time before the
    /// first record).
    pub next_due_ms: Option<i64>,
}

/// A stream processor. Only `process` is required.
///
/// One instance exists per task (partition); the runtime calls it from one thread. It must not
/// keep state outside its stores that matters for correctness: a task can move to another
/// instance, and only stores move with it.
pub trait Processor<K, V>: Send {
    /// Called once when the task starts, after its stores are restored. Schedule punctuations here.
    fn init(&mut self, _ctx: &mut ProcessorContext<'_, K, V>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Processes one record.
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, V>,
    ) -> Result<(), ProcessError>;

    /// Called when a schedule made with [`ProcessorContext::schedule`] is due; `timestamp_ms` is the
    /// time of that schedule's clock. Missed punctuations are skipped, not replayed.
    fn punctuate(
        &mut self,
        _id: PunctuationId,
        _timestamp_ms: i64,
        _ctx: &mut ProcessorContext<'_, K, V>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called when the task closes. Nothing can be sent from here, and stores belong to the runtime.
    fn close(&mut self) {}
}

/// What a processor can do while it runs: forward records, use its stores, read the current
/// record's metadata and the clocks, schedule punctuations.
pub struct ProcessorContext<'a, K, V> {
    /// The processor's node.
    pub(crate) node: usize,
    /// The topology's nodes, for children and store attachments.
    pub(crate) nodes: &'a Nodes<K, V>,
    /// Forwarded records waiting for their node.
    pub(crate) queue: &'a mut VecDeque<(usize, Record<K, V>)>,
    /// The task's stores.
    pub(crate) stores: &'a mut [BufferedStore],
    /// Store name → index in `stores`.
    pub(crate) store_index: &'a HashMap<String, usize>,
    /// The task's punctuation schedules.
    pub(crate) schedules: &'a mut Vec<Schedule>,
    /// The record being processed; `None` in `init` and `punctuate`.
    pub(crate) metadata: Option<&'a RecordMetadata>,
    /// The task's partition.
    pub(crate) partition: i32,
    /// The task's stream time (max record timestamp seen), `None` before the first record.
    pub(crate) stream_time_ms: Option<i64>,
    /// Wall-clock time of this step, in ms since the epoch.
    pub(crate) wall_clock_ms: i64,
    /// Set by `commit()`.
    pub(crate) commit_requested: &'a mut bool,
}

impl<K: Clone, V: Clone> ProcessorContext<'_, K, V> {
    /// Forwards `record` to every child of this processor.
    pub fn forward(&mut self, record: Record<K, V>) {
        let children = &self.nodes.get(self.node).children;
        if let Some((last, rest)) = children.split_last() {
            for child in rest {
                self.queue.push_back((*child, record.clone()));
            }
            self.queue.push_back((*last, record));
        }
    }

    /// Forwards `record` to the child named `child` only.
    pub fn forward_to(&mut self, child: &str, record: Record<K, V>) -> Result<(), ProcessError> {
        let node = self.nodes.get(self.node);
        let target = node.children.iter().copied().find(|c| self.nodes.get(*c).name == child);
        match target {
            Some(target) => {
                self.queue.push_back((target, record));
                Ok(())
            }
            None => {
                Err(ProcessError::UnknownChild { processor: node.name.clone(), child: child.to_string() })
            }
        }
    }
}

impl<K, V> ProcessorContext<'_, K, V> {
    /// The store named `name`, which must be attached to this processor in the topology.
    pub fn store(&mut self, name: &str) -> Result<&mut dyn KeyValueStore, StoreError> {
        let node = self.nodes.get(self.node);
        let attached = node.stores.iter().any(|s| s == name);
        match self.store_index.get(name) {
            Some(index) if attached => Ok(&mut self.stores[*index]),
            _ => Err(StoreError::NotAttached { store: name.to_string(), processor: node.name.clone() }),
        }
    }

    /// Where the current record came from; `None` in `init` and `punctuate`.
    pub fn record_metadata(&self) -> Option<&RecordMetadata> {
        self.metadata
    }

    /// The task's partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// This processor's name.
    pub fn processor_name(&self) -> &str {
        &self.nodes.get(self.node).name
    }

    /// The task's stream time: the largest record timestamp it has processed.
    pub fn stream_time_ms(&self) -> Option<i64> {
        self.stream_time_ms
    }

    /// The wall-clock time of this step (the test driver's clock under the driver).
    pub fn wall_clock_ms(&self) -> i64 {
        self.wall_clock_ms
    }

    /// Asks the runtime to commit soon. A request, not a command: the commit happens after this
    /// record, together with everything else pending.
    pub fn commit(&mut self) {
        *self.commit_requested = true;
    }

    /// Schedules `punctuate` every `interval` on clock `kind`, starting one interval from now.
    ///
    /// # Panics
    /// If `interval` is shorter than one millisecond: a zero interval would fire forever.
    pub fn schedule(&mut self, interval: Duration, kind: PunctuationType) -> PunctuationId {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        assert!(interval_ms >= 1, "a punctuation interval is at least 1 ms");
        let id = PunctuationId(self.schedules.len());
        let now = match kind {
            PunctuationType::StreamTime => self.stream_time_ms,
            PunctuationType::WallClock => Some(self.wall_clock_ms),
        };
        self.schedules.push(Schedule {
            node: self.node,
            id,
            interval_ms,
            kind,
            next_due_ms: now.map(|now| now.saturating_add(interval_ms)),
        });
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error of a codec's own that carries the marker as its source, as `?` into a wrapper
    /// type would leave it.
    #[derive(Debug, thiserror::Error)]
    #[error("codec: {0}")]
    struct Wrapped(#[source] Retriable);

    #[test]
    fn a_marked_error_is_retriable_and_keeps_its_words_and_anything_else_is_as_the_caller_says() {
        let marked = Retriable::boxed("registry at 127.0.0.1:1 refused the connection");
        assert_eq!(marked.to_string(), "registry at 127.0.0.1:1 refused the connection");
        let error = ProcessError::retriable_or(marked, ProcessError::Poison);
        assert!(error.is_retriable(), "{error:?}");
        assert_eq!(error.to_string(), "retriable: registry at 127.0.0.1:1 refused the connection");

        let nested: BoxError = Box::new(Wrapped(Retriable("503".into())));
        assert!(Retriable::is_marked(nested.as_ref()));
        assert!(ProcessError::retriable_or(nested, ProcessError::Poison).is_retriable());

        let plain: BoxError = "bad magic byte".into();
        assert!(!Retriable::is_marked(plain.as_ref()));
        assert!(matches!(ProcessError::retriable_or(plain, ProcessError::Poison), ProcessError::Poison(_)));
        let plain: BoxError = "corrupt state".into();
        assert!(matches!(ProcessError::retriable_or(plain, ProcessError::Fatal), ProcessError::Fatal(_)));
    }
}
