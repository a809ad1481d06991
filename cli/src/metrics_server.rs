//! `GET /metrics` for processes that have no HTTP API of their own (the API serves its
//! metrics on its own port).

use std::net::SocketAddr;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;

/// Serves `registry` at `http://{listen}/metrics` until the returned task is aborted.
pub async fn spawn(listen: SocketAddr, registry: prometheus::Registry) -> anyhow::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} for metrics"))?;
    let router =
        Router::new().route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default()
                }
            }),
        );
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    }))
}
