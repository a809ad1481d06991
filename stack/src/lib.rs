//! paystream's view of the infrastructure it runs on.
//!
//! Every process and every integration test reaches Kafka, Kafka Connect and Postgres
//! through this crate, so that addresses, delivery-critical client settings and
//! start-up timeouts are decided in one place.
//!
//! # Layout
//! - [`settings`]: where each dependency lives, read from the environment with the
//!   local stack's addresses as defaults.
//! - [`wait`]: bounded readiness probes that fail with a message naming the missing
//!   dependency and what to do about it.
//! - [`kafka`]: client configurations with every delivery-critical key spelled out,
//!   and idempotent topic creation.
//! - [`connect`]: a client for the Kafka Connect REST API (apply connector configs,
//!   read their status).
//! - [`fault_proxy`]: a TCP proxy a test switches off and on, to make a dependency go
//!   away for one process under test.
//! - [`postgres`]: connection pools and the embedded migrations of the `wallet` and
//!   `ledger` databases.
//! - [`supervisor`]: paystream processes started, killed, paused and restarted the way
//!   `dev/run` and the chaos run need them.
//! - [`testkit`]: helpers for integration tests against the real stack.
//! - [`trace`]: the W3C trace context across Kafka and HTTP headers, and each hop's span, so one
//!   payment is one trace.

pub mod connect;
pub mod fault_proxy;
pub mod kafka;
pub mod postgres;
pub mod settings;
pub mod supervisor;
pub mod testkit;
pub mod trace;
pub mod wait;

pub use settings::StackSettings;
