//! `GET /metrics` for processes that have no HTTP API of their own (the API serves its
//! metrics on its own port).

use std::net::SocketAddr;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;

/// Serves `registry` at `http://{listen}/metrics` until the returned task is aborted.
pub async fn spawn(listen: SocketAddr, registry: prometheus::Registry) -> anyhow::Result<JoinHandle<()>> {
    spawn_many(listen, vec![registry]).await
}

/// Serves several registries as one exposition (a topology runtime keeps its own registry).
pub async fn spawn_many(
    listen: SocketAddr,
    registries: Vec<prometheus::Registry>,
) -> anyhow::Result<JoinHandle<()>> {
    let registries: Vec<_> = registries.into_iter().chain(build_info()).collect();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} for metrics"))?;
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let families: Vec<_> = registries.iter().flat_map(prometheus::Registry::gather).collect();
            async move { prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default() }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    }))
}

/// `paystream_build_info{version} 1`: which build answers (`paystream status` shows it).
fn build_info() -> Option<prometheus::Registry> {
    let registry = prometheus::Registry::new();
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("paystream_build_info", "The paystream build serving these metrics (always 1)"),
        &["version"],
    )
    .ok()?;
    gauge.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(gauge)).ok()?;
    Some(registry)
}
