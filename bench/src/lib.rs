//! Benchmarks of paystream against baselines on the same machine and database.
//!
//! A speed target is measured here, by a run that prints a table and writes it under
//! `bench/results/`, never by a timed assertion in a test.
//!
//! # Layout
//! - [`ingest`]: the `ingest` benchmark, step by step: seed, paystream, pgbench, report,
//!   clean up (also when interrupted).
//! - [`query`]: the `query` benchmark (issue 13): the read side's GET by id and search against
//!   pgbench running the same SQL on the read database.
//! - [`payment`]: the one payment both sides make, and a real encoded `PaymentInitiated`.
//! - [`seed`]: bench users and wallets, their deterministic ids (shared with pgbench),
//!   inserting and removing them.
//! - [`server`]: the real API, in-process on 127.0.0.1:0, and bearer tokens for it.
//! - [`load`]: the HTTP load generator: a closed loop at a fixed concurrency, or an open loop
//!   at a rate with a bounded number in flight.
//! - [`pgbench`]: runs pgbench on the equivalent script and reads its per-transaction log.
//! - [`latency`]: the measurement window and the latency tally both sides fill.
//! - [`cpu`]: where the CPU went while a side ran, and whether a build shared it.
//! - [`machine`]: the machine, database, connectors and commit a result was measured on.
//! - [`report`]: the markdown table and its JSON twin; every benchmark's result files.
//! - [`join`]: the `join` benchmark (issue 4): one stateful keyed join as raw rdkafka, the
//!   topology runtime, Kafka Streams and Quix Streams, each a child process; its Rust peers.
//! - [`restore`]: the `restore` benchmark: a store restored from its changelog, and a restart
//!   from a checkpoint.
//! - [`flow`]: `paystream load` (issue 10): payments through the whole running pipeline at a
//!   rate, each followed to settlement, with where the time goes hop by hop.

pub mod cpu;
pub mod flow;
pub mod ingest;
pub mod join;
pub mod latency;
pub mod load;
pub mod machine;
pub mod payment;
pub mod pgbench;
pub mod query;
pub mod report;
pub mod restore;
pub mod seed;
pub mod server;
pub mod wrk;
