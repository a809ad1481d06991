//! The payment flow's processors: each is a consumer or a topology of its own, in a
//! folder of its own, started by one subcommand of the `paystream` binary.
//!
//! # Layout
//! - [`consumer`]: the one consumer loop of the plain processors: consume → decode →
//!   handle → retry → DLQ → commit, one worker per partition, rebalance-aware (a revoked
//!   partition's worker stops and its finished offsets are committed before the partition
//!   moves). A processor is a [`consumer::Handler`].
//! - [`settlement`]: a handler on `payments.results` that applies each PaymentResult to the
//!   wallet database exactly once (dedup by PaymentResultId, confirm or compensate in one
//!   transaction), dead-lettering results refused for their own data and stopping on a
//!   broken invariant.
//! - [`dispatcher`]: a handler on the saga's `ChargeCommand`s that charges the provider over
//!   HTTP (idempotency key = paymentId, timeouts, full-jitter retries, 409 retried on the
//!   same key, bounded concurrency) and reports each as a `DispatchOutcome` before the
//!   command is committed.
//! - [`orders`]: seed 004's Kafka door: a handler on `pay.order` that records each command in
//!   the wallet database's inbox and opens its payment on the HTTP door's money path (or answers
//!   `OrderPaymentFailed` at once), in one transaction; and the `OrderPaid` /
//!   `OrderPaymentFailed` settlement writes when it applies such a payment's result.
//! - [`dlq`]: the dead-letter producer every processor shares: the original record (key,
//!   value, headers) byte for byte, with the reason and its source in `dlq.*` headers,
//!   acknowledged before the source offset is committed.
//! - [`retry`]: bounded retries with capped exponential back-off for transient failures,
//!   interruptible by shutdown, so a record is retried, never skipped, and never forever.
//!
//! Shutdown has one mechanism, the topology runtime's [`paystream_topology::ShutdownHandle`]: a
//! processor's `run` takes the process's handle, and its loops, workers and back-offs watch it.
//!
//! - [`saga`]: the payment saga on `topology/`: the state machine, the saga topology and the
//!   timer processor (logic done and tested on the test driver; binaries and end-to-end tests
//!   come next).
//!
//! - [`view`]: the payment view on `topology/`: every payment's events folded, in any order and
//!   any number of times, into one `PaymentView` (compacted `payments.view`) and its timeline
//!   (`payments.timeline`); `paystream view rebuild` replays it from the beginning.

pub mod blocking_codec;
pub mod consumer;
pub mod dispatcher;
pub mod dlq;
pub mod orders;
pub mod retry;
pub mod saga;
pub mod settlement;
pub mod view;
