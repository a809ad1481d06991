//! The payment saga (issue 6, in progress).
//!
//! Built so far, and tested on the topology test driver (`processors/tests/saga_driver.rs`):
//! - [`state`]: the state machine, every transition in one table;
//! - [`processor`]: the saga topology — four co-partitioned inputs keyed by paymentId, a RocksDB
//!   store of payment state, the charge command, timers and exactly one `PaymentResult`;
//! - [`timers`]: the timer processor — a due-time-ordered RocksDB index and a wall-clock
//!   punctuator firing timers back on `payments.timers`.
//!
//! Still to come: the registry (Confluent wire format) codec bridging the async `EventCodec`,
//! the `paystream saga` / `paystream timers` subcommands, and the end-to-end tests against the
//! real stack with the dispatcher and the provider simulator.

pub mod codec;
pub mod processor;
pub mod state;
pub mod timers;
