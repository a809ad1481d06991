//! A Kafka Streams-style runtime on rdkafka and RocksDB, with no payment knowledge:
//! `Topology`, `Processor`, state stores with changelogs, exactly-once v2, punctuators
//! and a test driver.
//!
//! Not built yet: this crate is reserved by the foundation so the workspace has the
//! shape DESIGN.md describes. Its issue ("topology/: a Kafka Streams-style runtime")
//! fills it.
