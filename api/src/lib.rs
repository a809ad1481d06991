//! paystream's HTTP edge.
//!
//! The REST API: accounts (seed 004), payment ingest (seed 000, `POST /api/v1/payment`)
//! and the provider's callbacks (`POST /api/v1/callback`). Every write is one Postgres transaction; a payment's event
//! leaves through the outbox in that same transaction, so an accepted payment and its
//! `PaymentInitiated` exist together or not at all.
//!
//! # Layout
//! - [`server`]: the router, its layers (body limit, metrics), serving with graceful shutdown.
//! - [`state`]: what every handler shares: the wallet pool, the event codec, the authenticator.
//! - [`auth`]: `Authorization: Bearer` JWTs (HS256 or RS256; iss, aud, nbf, a bounded lifetime);
//!   the caller is the token's subject, an operator if its scope says so. Mints tokens too.
//! - [`secrets`]: start-up checks of secrets; the repository's development ones need dev mode.
//! - [`error`]: [`ApiError`], the one error type, rendered as `application/problem+json`.
//! - [`extract`]: a JSON extractor whose rejections are problems too.
//! - [`money`]: exact decimal amounts in JSON (never through a float).
//! - [`timestamp`]: the seeds' `yyyyMMdd-HH:mm:ss:SSSSSS` timestamps.
//! - [`accounts`]: create a wallet, deposit (idempotent on `Idempotency-Key`), read balances.
//! - [`payments`]: accept a payment: idempotency, ownership, balance, reserve, outbox.
//! - [`cancel`]: the owner's cancel of a payment, recorded with its outbox row; its outcome read
//!   from the payment's row that settlement updates.
//! - [`outbox`]: the one writer of `PaymentInitiated` into the outbox (the API, and the nudge of a
//!   stranded reservation).
//! - [`callbacks`]: the provider's signed callback: verify, deduplicate on the signed event id,
//!   forward only a payment's first verdict.
//! - [`signature`]: Stripe-style HMAC signatures of callbacks.
//! - [`views`]: the read side: a payment, a caller's history and search, a payment's timeline,
//!   from the read database `query` (fed only from Kafka).
//! - [`metrics`]: Prometheus metrics of the edge.
//! - [`http_trace`]: a server span per request, under the caller's `traceparent` (one payment, one trace).
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers, served and checked in.

pub mod accounts;
pub mod auth;
pub mod callbacks;
pub mod cancel;
pub mod error;
pub mod extract;
pub mod http_trace;
pub mod metrics;
pub mod money;
pub mod openapi;
pub mod outbox;
pub mod payments;
pub mod secrets;
pub mod server;
pub mod signature;
pub mod state;
pub mod timestamp;
pub mod views;

pub use error::ApiError;
pub use state::{AppState, OutboxTopics};
