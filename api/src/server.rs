//! The router and serving it until shutdown.
//!
//! Routes are registered through `utoipa_axum`'s [`OpenApiRouter`]: each handler carries its
//! `#[utoipa::path]` documentation, and one list ([`api_routes`]) makes both the axum router and
//! the OpenAPI document ([`crate::openapi`]), so a route cannot exist undocumented or be
//! documented at another path.

use std::future::Future;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{self, ApiError};
use crate::state::AppState;
use crate::{accounts, callbacks, cancel, http_trace, openapi, payments, views};

/// The largest request body accepted; a payment is a few hundred bytes.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// Every documented route, with its OpenAPI description (the fallbacks are added by [`router`]).
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(payments::create))
        .routes(routes!(cancel::cancel, cancel::read))
        .routes(routes!(views::history))
        .routes(routes!(views::get))
        .routes(routes!(views::timeline))
        .routes(routes!(callbacks::receive))
        .routes(routes!(accounts::create, accounts::list))
        .routes(routes!(accounts::balance))
        .routes(routes!(accounts::deposit))
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(openapi::serve))
}

/// Every route of the API, and Swagger UI at [`openapi::DOCS_PATH`]. A path no route has answers
/// 404 and a method a path does not have answers 405 (with `Allow`), both as problems like every
/// other error.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api_routes().split_for_parts();
    routes
        // Swagger UI (not an operation of the document, which it displays).
        .merge(openapi::swagger_ui())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(middleware::from_fn(http_trace::server_span))
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

/// Ready when the wallet database answers (a 503 problem otherwise; the database's error is
/// logged, not shown).
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "The wallet database answers", body = String, content_type = "text/plain"),
        (status = 503, response = error::Problem),
    )
)]
async fn health(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    sqlx::query("SELECT 1")
        .execute(&state.db)
        .await
        .map_err(|e| ApiError::Unavailable(format!("wallet database: {e}")))?;
    Ok("ok")
}

/// Prometheus metrics of the edge, in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String,
         content_type = "text/plain"),
    )
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
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
