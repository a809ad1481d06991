//! A Kafka Streams-style runtime on rdkafka and RocksDB, with no payment knowledge.
//!
//! # Layout
//! - [`topology`]: the graph — named sources, processors, sinks and state stores, validated at build.
//! - [`processor`]: the `Processor` trait and the `ProcessorContext` it works through (forward,
//!   stores, record metadata, punctuation schedules).
//! - [`record`]: typed records, raw records off Kafka, and records going to Kafka.
//! - [`store`]: the `KeyValueStore` API, its RocksDB and in-memory backends, and the write buffer
//!   that keeps uncommitted writes out of RocksDB.
//! - [`task`]: one partition's processors and stores; turns records into outputs and writes.
//! - [`runtime`]: the Kafka side — consumer group, exactly-once v2 transactions, changelogs,
//!   restoration, checkpoints, rebalances, shutdown ([`ShutdownHandle`], also the one stop token a
//!   process's other loops watch).
//! - [`driver`]: `TopologyTestDriver`, the same task code with no broker, for unit tests.
//! - [`query`]: interactive queries over this instance's stores.
//! - [`dlq`]: dead letters for poison records (a retriable error, marked [`Retriable`], is retried
//!   instead, never dead-lettered).
//! - [`metrics`]: the runtime's Prometheus metrics.
//! - [`partitioner`]: Kafka's murmur2 partitioner, so Rust and Java agree on co-partitioning.

pub mod dlq;
pub mod driver;
pub mod metrics;
pub mod partitioner;
pub mod processor;
pub mod query;
pub mod record;
pub mod runtime;
pub mod store;
pub mod task;
pub mod topology;

pub use dlq::ErrorPolicy;
pub use driver::TopologyTestDriver;
pub use processor::{
    BoxError, ProcessError, Processor, ProcessorContext, PunctuationId, PunctuationType, Retriable,
};
pub use query::{KeyOwner, KeyQueryMetadata, StoreQuery};
pub use record::{Headers, OutputRecord, RawRecord, Record, RecordMetadata};
pub use runtime::{ProcessingGuarantee, ShutdownHandle, Streams, StreamsConfig, StreamsError};
pub use store::{KeyValueStore, ReadOnlyKeyValueStore, StoreError};
pub use topology::{StoreKind, StoreSpec, Topology, TopologyBuilder, TopologyError};
