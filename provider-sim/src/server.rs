//! The router, serving it, and the graceful end.
//!
//! On shutdown the listener stops taking charges (axum's graceful shutdown finishes the
//! requests in progress), then pending callbacks may still go out for
//! [`crate::SimConfig::drain_timeout`]; whatever is left after that is abandoned (counted
//! and logged) rather than holding the process up.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::charges::{self, Store};
use crate::config::{ConfigError, SimConfig};
use crate::metrics::SimMetrics;

/// The largest request body accepted; a charge is a few hundred bytes.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;
/// Longest wait to establish a callback connection (inside the callback timeout).
pub const CALLBACK_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// After the drain, how long abandoned tasks get to notice and end.
pub const ABANDON_TIMEOUT_MS: u64 = 5_000;

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("building the callback HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a request handler or a callback task needs.
pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) metrics: SimMetrics,
    /// The idempotency store (short critical sections, never held across an `.await`).
    pub(crate) store: Mutex<Store>,
    /// One permit per charge whose callbacks are pending.
    pub(crate) pending_slots: Arc<Semaphore>,
    /// One permit per callback POST on the wire.
    pub(crate) posting: Semaphore,
    /// Posts callbacks, with the configured timeouts and no redirects.
    pub(crate) http: reqwest::Client,
    /// Turns true when pending callbacks are to be abandoned.
    pub(crate) abandon: watch::Receiver<bool>,
}

/// The simulator's routes.
fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/charges", post(charges::create))
        .route("/v1/charges/{key}", get(charges::show))
        .route("/v1/charges/{key}/void", post(charges::void))
        .route("/v1/charges/{key}/refund", post(charges::refund))
        .route("/metrics", get(|State(sim): State<Arc<Sim>>| async move { sim.metrics.render() }))
        .route("/health", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn(paystream_api::http_trace::server_span))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(sim)
}

/// Serves the simulator on `listener` until `shutdown` completes, then drains pending
/// callbacks (bounded by the drain timeout) and returns.
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    metrics: SimMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let http = reqwest::Client::builder()
        .timeout(config.callback_timeout)
        .connect_timeout(config.callback_timeout.min(Duration::from_millis(CALLBACK_CONNECT_TIMEOUT_MS)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(ServeError::Client)?;
    let (abandon_tx, abandon) = watch::channel(false);
    let sim = Arc::new(Sim {
        store: Mutex::new(Store::new(config.charges_max)),
        pending_slots: Arc::new(Semaphore::new(config.callbacks_in_flight_max)),
        posting: Semaphore::new(config.callback_concurrency_max),
        http,
        abandon,
        metrics,
        config,
    });
    let rates = &sim.config.rates;
    tracing::info!(
        listen = %listener.local_addr()?,
        callback_url = %sim.config.callback_url,
        seed = rates.seed,
        delay_min_ms = rates.delay_min.as_millis() as u64,
        delay_max_ms = rates.delay_max.as_millis() as u64,
        success_ratio = rates.success_ratio,
        duplicate_rate = rates.duplicate_rate,
        reorder_rate = rates.reorder_rate,
        lost_rate = rates.lost_rate,
        charge_5xx_rate = rates.charge_5xx_rate,
        charge_5xx_first = rates.charge_5xx_first,
        request_5xx_rate = rates.request_5xx_rate,
        "provider simulator serving"
    );
    axum::serve(listener, router(sim.clone())).with_graceful_shutdown(shutdown).await?;
    drain(&sim, &abandon_tx).await;
    Ok(())
}

/// Waits for pending callbacks up to the drain timeout, then abandons the rest.
async fn drain(sim: &Sim, abandon: &watch::Sender<bool>) {
    // Validated: at most CALLBACKS_IN_FLIGHT_MAX_LIMIT, which fits in a u32.
    let all = u32::try_from(sim.config.callbacks_in_flight_max).expect("validated bound");
    let pending = sim.metrics.pending_total();
    if pending > 0 {
        tracing::info!(
            pending,
            drain_timeout_ms = sim.config.drain_timeout.as_millis() as u64,
            "draining callbacks"
        );
    }
    if tokio::time::timeout(sim.config.drain_timeout, sim.pending_slots.acquire_many(all)).await.is_ok() {
        tracing::info!("provider simulator stopped; no callback pending");
        return;
    }
    tracing::warn!(pending = sim.metrics.pending_total(), "drain timeout: abandoning pending callbacks");
    let _ = abandon.send(true);
    let ended = Duration::from_millis(ABANDON_TIMEOUT_MS);
    if tokio::time::timeout(ended, sim.pending_slots.acquire_many(all)).await.is_err() {
        tracing::warn!(pending = sim.metrics.pending_total(), "callback tasks still running at exit");
    }
}
