//! Records as processors see them, and the raw bytes they come from.
//!
//! A [`Record`] is immutable once forwarded: the `with_*` methods return copies, as in
//! Kafka Streams, so a processor cannot change what a sibling already received.

/// Kafka headers in order, duplicates allowed (Kafka allows them; so do we).
pub type Headers = Vec<(String, Vec<u8>)>;

/// A typed record flowing through a topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<K, V> {
    /// The key; partitioning and stores are keyed by it.
    pub key: K,
    /// The value.
    pub value: V,
    /// Event time in milliseconds since the Unix epoch; drives stream time.
    pub timestamp_ms: i64,
    /// Headers carried from the input (e.g. `traceparent`) or set by a processor.
    pub headers: Headers,
}

impl<K, V> Record<K, V> {
    /// A record with no headers.
    pub fn new(key: K, value: V, timestamp_ms: i64) -> Self {
        Self { key, value, timestamp_ms, headers: Vec::new() }
    }

    /// The same record with another key (and possibly another key type).
    pub fn with_key<K2>(self, key: K2) -> Record<K2, V> {
        Record { key, value: self.value, timestamp_ms: self.timestamp_ms, headers: self.headers }
    }

    /// The same record with another value.
    pub fn with_value<V2>(self, value: V2) -> Record<K, V2> {
        Record { key: self.key, value, timestamp_ms: self.timestamp_ms, headers: self.headers }
    }

    /// The same record with another timestamp.
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// The same record with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The last value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }
}

/// The last value of header `name` in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

/// Where a record was read from: what Kafka Streams calls `RecordMetadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Source topic.
    pub topic: String,
    /// Source partition; equals the task's partition.
    pub partition: i32,
    /// Offset in the source partition.
    pub offset: i64,
}

/// A record as it comes off (or goes to) Kafka: bytes, before deserialization.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// Topic the record was read from.
    pub topic: String,
    /// Partition the record was read from.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Key bytes, `None` for a null key.
    pub key: Option<Vec<u8>>,
    /// Value bytes, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Kafka timestamp in milliseconds.
    pub timestamp_ms: i64,
    /// Kafka headers.
    pub headers: Headers,
}

impl RawRecord {
    /// This record's position, as processors see it.
    pub fn metadata(&self) -> RecordMetadata {
        RecordMetadata { topic: self.topic.clone(), partition: self.partition, offset: self.offset }
    }
}

/// A record a task wants written to Kafka: a sink's output, a changelog entry or a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    /// Destination topic.
    pub topic: String,
    /// Explicit partition (changelogs, dead letters); `None` lets the key decide (murmur2,
    /// the Java client's default, so Java and Rust writers agree on co-partitioning).
    pub partition: Option<i32>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Timestamp in milliseconds.
    pub timestamp_ms: i64,
    /// Headers.
    pub headers: Headers,
}
