//! Logging and traces, set up once for every subcommand.
//!
//! Logs go to stderr as before (`RUST_LOG`, default `info`). Traces: when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (dev/lib.sh sets it to the local Jaeger's OTLP/HTTP
//! receiver) and the subcommand is one of the long-running processes, paystream's spans are
//! exported over OTLP/HTTP (protobuf) with `service.name` = `paystream-<subcommand>`; unset or
//! empty, nothing is exported and no span context is made (the `traceparent` headers are then
//! passed on unchanged, `paystream_stack::trace::outgoing`).

use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The variable that turns export on (OpenTelemetry's own name; the exporter reads it too and
/// appends `/v1/traces`).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The crates whose spans (and the events inside them) are exported: ours only, so a
/// dependency's chatter never fills the trace.
const EXPORTED_TARGETS: [&str; 8] = [
    "paystream",
    "paystream_stack",
    "paystream_api",
    "paystream_monitor",
    "paystream_processors",
    "paystream_provider_sim",
    "paystream_topology",
    "paystream_wallet",
];
/// How long the exit waits for the last batch of spans to reach the collector.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter of a process that exports; flushed by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (the batch processor exports every few seconds) and stops
    /// the exporter; a collector that is away only costs a warning.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_FLUSH_TIMEOUT) {
                eprintln!("warning: flushing the last spans failed: {error}");
            }
        }
    }
}

/// Installs the subscriber: stderr logs, plus OTLP export under `service` when it is `Some` and
/// [`ENDPOINT_VAR`] is set and not empty.
pub fn init(service: Option<&str>) -> anyhow::Result<Telemetry> {
    let endpoint = std::env::var(ENDPOINT_VAR).ok().filter(|value| !value.trim().is_empty());
    let provider = match (service, &endpoint) {
        (Some(service), Some(endpoint)) => Some(tracer_provider(service, endpoint)?),
        _ => None,
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    let traces = provider.as_ref().map(|provider| {
        let exported = EXPORTED_TARGETS
            .iter()
            .fold(Targets::new(), |targets, crate_name| targets.with_target(*crate_name, Level::INFO));
        tracing_opentelemetry::layer().with_tracer(provider.tracer("paystream")).with_filter(exported)
    });
    tracing_subscriber::registry().with(logs).with(traces).init();
    if let (Some(service), Some(endpoint)) = (service, endpoint) {
        tracing::info!(service, endpoint, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

/// An OTLP/HTTP (protobuf) exporter behind a batch processor, for `service` at `endpoint`.
fn tracer_provider(service: &str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .with_context(|| format!("creating the OTLP/HTTP span exporter for {endpoint} ({ENDPOINT_VAR})"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(format!("paystream-{service}")).build())
        .build())
}
