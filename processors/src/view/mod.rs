//! The payment view (issue 13's projection): every payment's current state and history,
//! folded from the payment topics and published for the read side.
//!
//! - [`fact`]: what one input event says about its payment — an id to deduplicate by, its own
//!   time, its timeline entry, and its effect on the view — turned from the seven inputs.
//! - [`fold`]: the pure fold: a payment's applied facts → its `PaymentView` and its timeline.
//!   The view is a function of the *set* of facts, never of their order, so out-of-order,
//!   duplicated and replayed inputs converge to the same view.
//! - [`processor`]: the topology — seven co-partitioned inputs keyed by paymentId, one RocksDB
//!   store of facts per payment (with its changelog), and two outputs, `payments.view`
//!   (compacted) and `payments.timeline`.
//! - [`codec`]: the registry (Confluent wire format) codec, bridged onto the stream thread.
//! - [`metrics`]: projection lag and what was applied, deduplicated or dropped.
//! - [`rebuild`]: `paystream view rebuild` — a fresh application replays every input from the
//!   beginning, and is swapped in once it has caught up.

pub mod codec;
pub mod fact;
pub mod fold;
pub mod metrics;
pub mod processor;
pub mod rebuild;
