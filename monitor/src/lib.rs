//! What an operator of paystream looks at first, from the stack's own bookkeeping rather than
//! from any one process: consumer lag of every group (paystream's, Kafka Connect's, anyone's),
//! Kafka Connect's connectors and tasks, Debezium's replication slots, the dead letters, and the
//! payments by state with the stuck ones, and the durable timers' lag behind their due time.
//!
//! Two front ends share it: `paystream lag-exporter` ([`exporter`]: Prometheus gauges, refreshed
//! in the background) and `paystream status` ([`status`]: one table, probed on demand).
//!
//! # Why not `klag-exporter`
//! crates.io's `klag-exporter` 0.1.29 was evaluated first: it is a binary only (no library to
//! call with our client), pins rdkafka 0.36 built by its own `cmake-build` of librdkafka with the
//! `sasl` feature (libsasl2-dev is not installed here, and it would be a second librdkafka
//! build next to the workspace's rdkafka 0.39), and brings OpenTelemetry 0.27/tonic and axum 0.7.
//! It reads time lag the same way as [`lag`] (the record at the committed offset), which is what
//! is kept from it.

pub mod dlq;
pub mod exporter;
pub mod lag;
pub mod payments;
pub mod status;
pub mod timers;
