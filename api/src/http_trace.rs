//! A server span for every HTTP request (the API's and the provider simulator's), a child of the
//! trace its `traceparent` header carries, so a payment's request, the provider's callback and
//! the simulator's charge each join the payment's trace (`paystream_stack::trace`).

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use paystream_stack::trace;
use tracing::Instrument;

/// Routes polled by machines (Prometheus, readiness probes): no span, or every scrape would be a
/// trace of its own.
const UNTRACED_ROUTES: [&str; 2] = ["/metrics", "/health"];

/// Middleware (`axum::middleware::from_fn`): runs the request in a span named `<METHOD> <route
/// template>`, tagged with its status and, once a handler records it, its `payment_id`.
pub async fn server_span(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let Some(route) = route.filter(|route| !UNTRACED_ROUTES.contains(&route.as_str())) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        payment_id = tracing::field::Empty,
    );
    trace::set_parent(&span, trace::parent_from_http(request.headers()));
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Tags the current request's span with the payment it is about (Jaeger finds a payment's trace
/// by this tag).
pub fn record_payment(payment_id: uuid::Uuid) {
    tracing::Span::current().record("payment_id", tracing::field::display(payment_id));
}
