//! The real API, in-process, started exactly as `paystream api` and the API's tests start
//! it: the wallet and ledger pools from `paystream_stack::postgres` (their real size), the
//! registry-backed `EventCodec`, HS256 bearer tokens, a callback verifier, on 127.0.0.1:0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_api::auth::{self, Authenticator, Claims};
use paystream_api::metrics::ApiMetrics;
use paystream_api::signature::Verifier;
use paystream_api::{server, AppState};
use paystream_schemas::registry::RegistryClient;
use paystream_schemas::EventCodec;
use paystream_stack::{postgres, wait, StackSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The HS256 secret of the in-process API; at least 32 bytes, as `paystream api` requires.
pub const JWT_SECRET: &[u8] = b"paystream-bench-hs256-secret-not-for-production";
/// The provider's callback signing secret; the benchmark sends no callbacks, but the API
/// needs one to start.
pub const CALLBACK_SECRET: &[u8] = b"paystream-bench-provider-webhook-secret";
/// How long to wait for the database and the registry at start.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to finish in-flight requests once asked to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running API.
pub struct RunningApi {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Dropping or sending it starts the graceful shutdown.
    stop: oneshot::Sender<()>,
    /// The serving task; finishes once shutdown has drained.
    serving: JoinHandle<std::io::Result<()>>,
}

/// Starts the API on 127.0.0.1:0 against the wallet database and the registry.
pub async fn start(settings: &StackSettings) -> anyhow::Result<RunningApi> {
    let db = postgres::connect(&settings.wallet_db_url, START_TIMEOUT).await?;
    postgres::migrate_wallet(&db).await?;
    let registry = RegistryClient::new(&settings.schema_registry_url)?;
    let what = format!("Schema Registry at {}", settings.schema_registry_url);
    wait::until_ready(what, START_TIMEOUT, || registry.global_compatibility()).await?;
    let ledger = postgres::connect(&settings.ledger_db_url, START_TIMEOUT).await?;
    postgres::migrate_ledger(&ledger).await?;
    let query = postgres::connect(&settings.query_db_url, START_TIMEOUT).await?;
    postgres::migrate_query(&query).await?;
    let state = AppState {
        db,
        ledger,
        query,
        callbacks: Arc::new(Verifier::new(vec![CALLBACK_SECRET.to_vec()])),
        codec: Arc::new(EventCodec::new(&settings.schema_registry_url)?),
        auth: Arc::new(Authenticator::hs256(JWT_SECRET)),
        metrics: Arc::new(ApiMetrics::new()),
        topics: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(listener, state, async {
        // A dropped sender stops the server too.
        let _ = stopped.await;
    }));
    Ok(RunningApi { base_url, stop, serving })
}

impl RunningApi {
    /// Stops the server and waits for it to drain, at most `STOP_TIMEOUT`.
    pub async fn stop(self) -> anyhow::Result<()> {
        // The receiver lives in the serving task; if it has already ended there is nobody
        // to tell, which is fine.
        let _ = self.stop.send(());
        tokio::time::timeout(STOP_TIMEOUT, self.serving)
            .await
            .context("the API did not stop in time")?
            .context("the API task panicked")?
            .context("serving the API")
    }
}

/// A bearer token for `user`, valid for `ttl` from now (at most the API's 24 h).
pub fn token(user: Uuid, ttl: Duration) -> anyhow::Result<String> {
    Ok(auth::mint_hs256(JWT_SECRET, &Claims::user(user, ttl))?)
}
