//! The payment saga (issue 6, and issue 11's verification of uncertain outcomes).
//!
//! - [`state`]: the state machine — every transition in one table, and the effects of each
//!   decision — including VERIFYING and VOIDING (an uncertain outcome is verified with the
//!   provider, never refunded blind) and REFUNDING/RECONCILED (a charge after a failure is
//!   compensated);
//! - [`processor`]: the saga topology — four co-partitioned inputs keyed by paymentId, a RocksDB
//!   store of payment state, the charge command, provider requests (status query, void, refund),
//!   timers, exactly one `PaymentResult`, and reconciliation events;
//! - [`deadline`]: the start-up check that the payment timeout outlasts the dispatcher's budget,
//!   and the charge deadline (`notAfter`) derived from it;
//! - [`timers`]: the timer processor — a due-time-ordered RocksDB index and a wall-clock
//!   punctuator firing timers back on `payments.timers`;
//! - [`codec`]: the registry (Confluent wire format) codec bridging the async `EventCodec`.

pub mod codec;
pub mod deadline;
pub mod processor;
pub mod state;
pub mod timers;
