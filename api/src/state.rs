//! What every handler shares.

use std::sync::Arc;

use paystream_schemas::EventCodec;
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
    /// Verifies provider callback signatures.
    pub callbacks: Arc<Verifier>,
    /// Encodes `PaymentInitiated` for the outbox in the registered Avro contract.
    pub codec: Arc<EventCodec>,
    /// Verifies bearer tokens.
    pub auth: Arc<Authenticator>,
    /// The edge's metrics.
    pub metrics: Arc<ApiMetrics>,
}
