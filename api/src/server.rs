//! The router and serving it until shutdown.

use std::future::Future;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::state::AppState;
use crate::{accounts, callbacks, payments};

/// The largest request body accepted; a payment is a few hundred bytes.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/payment", post(payments::create))
        .route("/api/v1/callback", post(callbacks::receive))
        .route("/api/v1/accounts", post(accounts::create).get(accounts::list))
        .route("/api/v1/accounts/{wallet_id}", get(accounts::balance))
        .route("/api/v1/accounts/{wallet_id}/deposits", post(accounts::deposit))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes in-flight
/// requests (axum's graceful shutdown) before returning.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Ready when the wallet database answers.
async fn health(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.db).await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("wallet database: {error}")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// Counts and times every request by its route template (not its path: ids would explode
/// the label set).
async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.latency.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    state.metrics.requests.with_label_values(&[&route, response.status().as_str()]).inc();
    response
}
