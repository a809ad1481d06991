//! Prometheus metrics of the HTTP edge, served at `GET /metrics`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Request and payment counters.
pub struct ApiMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Requests by route and status.
    pub requests: IntCounterVec,
    /// Request latency by route.
    pub latency: HistogramVec,
    /// Payment requests by outcome: accepted, replayed, rejected:<problem>.
    pub payments: IntCounterVec,
}

impl ApiMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("paystream_http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("paystream_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["route"],
        )
        .expect("valid metric");
        let payments = IntCounterVec::new(
            Opts::new("paystream_payment_requests_total", "POST /api/v1/payment by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(payments.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self { registry, requests, latency, payments }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}
