//! A simulated payment provider, for the demo (`dev/run`) and the tests.
//!
//! It plays the external system the dispatcher charges and that calls paystream back:
//! `POST /v1/charges` with `Idempotency-Key: <paymentId>` is answered `202 Accepted` at
//! once, and some time later (seed 003: a random 0.5–5 s) the verdict is posted to the
//! paystream API's `POST /api/v1/callback`, signed the way `paystream_api::signature`
//! verifies. Everything a real provider does wrong on a bad day can be dialled in: failed
//! charges, callbacks delivered twice, callbacks in swapped order, callbacks never sent
//! (the saga's timeout fires), and 5xx answers to the charge itself. Every decision comes
//! from a seeded RNG keyed by the payment, so a run with the same `--seed` decides the
//! same for every payment, whatever order the charges arrive in.
//!
//! # Layout
//! - [`config`]: the command line (clap, with env fallbacks) and the validated [`SimConfig`].
//! - [`decide`]: the pure decisions (verdict, delay, fate of the callbacks, 5xx answers),
//!   drawn from a per-payment RNG derived from the seed.
//! - [`charges`]: the HTTP side: validation, the bounded idempotency store, the answers.
//! - [`callbacks`]: delivering callbacks: scheduling, signing, bounded retries with backoff.
//! - [`metrics`]: the Prometheus counters, served at `/metrics`.
//! - [`server`]: the router, serving it, and the graceful drain of pending callbacks.

pub mod callbacks;
pub mod charges;
pub mod config;
pub mod decide;
pub mod metrics;
pub mod server;

pub use config::{Args, ConfigError, SimConfig};
pub use metrics::SimMetrics;
pub use server::{serve, ServeError};
