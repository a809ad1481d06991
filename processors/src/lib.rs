//! The payment flow's processors: each is a consumer or a topology of its own, in a
//! folder of its own, started by one subcommand of the `paystream` binary.
//!
//! # Layout
//! - [`settlement`]: consumes `payments.results` and applies each PaymentResult to the
//!   wallet database exactly once (dedup by PaymentResultId, confirm or compensate in one
//!   transaction), dead-lettering results that contradict the database.
//! - [`dispatcher`]: consumes the saga's `ChargeCommand`s, charges the provider over HTTP
//!   (idempotency key = paymentId, timeouts, full-jitter retries, bounded concurrency) and
//!   reports each as a `DispatchOutcome` before committing the command.
//! - [`dlq`]: the dead-letter producer every processor shares: the original record, byte
//!   for byte, with the reason and its source in headers, acknowledged before the source
//!   offset is committed.
//! - [`retry`]: bounded retries with capped exponential back-off for transient failures,
//!   interruptible by shutdown, so a record is retried, never skipped, and never forever.
//! - [`shutdown`]: the shutdown trigger a processor's `run` takes as a `Future`, made
//!   awaitable more than once.
//!
//! - [`saga`]: the payment saga on `topology/`: the state machine, the saga topology and the
//!   timer processor (logic done and tested on the test driver; binaries and end-to-end tests
//!   come next).
//!
//! Still to come: the payment view.

pub mod dispatcher;
pub mod dlq;
pub mod retry;
pub mod saga;
pub mod settlement;
pub mod shutdown;
