//! What every handler shares.

use std::sync::Arc;

use paystream_schemas::events::{PaymentCancelRequested, PaymentInitiated};
use paystream_schemas::{Event, EventCodec};
use sqlx::PgPool;

use crate::auth::Authenticator;
use crate::metrics::ApiMetrics;
use crate::signature::Verifier;

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The wallet database: users, wallets, deposits, payments, the outbox.
    pub db: PgPool,
    /// The ledger (transaction) database: provider callbacks and their outbox.
    pub ledger: PgPool,
    /// The read database (fed only from Kafka): payment views, timelines, replicated users and
    /// wallets; the query endpoints ([`crate::views`]) read it.
    pub query: PgPool,
    /// Verifies provider callback signatures.
    pub callbacks: Arc<Verifier>,
    /// Encodes `PaymentInitiated` for the outbox in the registered Avro contract.
    pub codec: Arc<EventCodec>,
    /// Verifies bearer tokens.
    pub auth: Arc<Authenticator>,
    /// The edge's metrics.
    pub metrics: Arc<ApiMetrics>,
    /// Where the outbox rows go.
    pub topics: OutboxTopics,
}

/// The topics the API's outbox rows are routed to; `Default` is the production names. Tests
/// route to topics of their own (the `wallet-outbox` connector routes by the row's
/// `aggregatetype`), so that their payments never reach a production saga.
#[derive(Debug, Clone)]
pub struct OutboxTopics {
    /// `PaymentInitiated` (`payments.initiated`).
    pub initiated: String,
    /// `PaymentCancelRequested` (`payments.cancel-requests`).
    pub cancel_requests: String,
}

impl Default for OutboxTopics {
    fn default() -> Self {
        Self {
            initiated: PaymentInitiated::TOPIC.into(),
            cancel_requests: PaymentCancelRequested::TOPIC.into(),
        }
    }
}
