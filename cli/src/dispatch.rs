//! `paystream dispatch`: charge the provider for every ChargeCommand, until SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use paystream_processors::dispatcher::{self, DispatcherConfig, DispatcherMetrics, HttpRetryPolicy};
use paystream_stack::StackSettings;

#[derive(clap::Args)]
pub struct Args {
    /// The provider's base URL; charges go to `<url>/v1/charges`.
    #[arg(long, env = "PAYSTREAM_PROVIDER_URL", default_value = dispatcher::DEFAULT_PROVIDER_URL)]
    provider_url: String,
    /// Longest wait to connect to the provider.
    #[arg(long, env = "PAYSTREAM_DISPATCH_CONNECT_TIMEOUT_MS", default_value_t = dispatcher::CONNECT_TIMEOUT_MS)]
    connect_timeout_ms: u64,
    /// Longest wait for one charge attempt, connection included.
    #[arg(long, env = "PAYSTREAM_DISPATCH_REQUEST_TIMEOUT_MS", default_value_t = dispatcher::REQUEST_TIMEOUT_MS)]
    request_timeout_ms: u64,
    /// HTTP attempts per command before RETRIES_EXHAUSTED.
    #[arg(long, env = "PAYSTREAM_DISPATCH_ATTEMPTS_MAX", default_value_t = dispatcher::backoff::ATTEMPTS_MAX,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    attempts_max: u32,
    /// Ceiling of the first pause between attempts (full jitter under a doubling ceiling).
    #[arg(long, env = "PAYSTREAM_DISPATCH_BACKOFF_INITIAL_MS", default_value_t = dispatcher::backoff::BACKOFF_INITIAL_MS)]
    backoff_initial_ms: u64,
    /// Largest ceiling of a pause.
    #[arg(long, env = "PAYSTREAM_DISPATCH_BACKOFF_MAX_MS", default_value_t = dispatcher::backoff::BACKOFF_MAX_MS)]
    backoff_max_ms: u64,
    /// HTTP calls in flight at once.
    #[arg(long, env = "PAYSTREAM_DISPATCH_CONCURRENCY_MAX", default_value_t = dispatcher::CONCURRENCY_MAX,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    concurrency_max: usize,
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, env = "PAYSTREAM_DISPATCH_METRICS_LISTEN", default_value = "127.0.0.1:9102")]
    metrics_listen: SocketAddr,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = DispatcherMetrics::register(&registry)?;
    let metrics_server = crate::metrics_server::spawn(args.metrics_listen, registry).await?;
    let config = DispatcherConfig {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        http_retry: HttpRetryPolicy {
            attempts_max: args.attempts_max,
            backoff_initial: Duration::from_millis(args.backoff_initial_ms),
            backoff_max: Duration::from_millis(args.backoff_max_ms),
        },
        concurrency_max: args.concurrency_max,
        ..DispatcherConfig::new(settings, &args.provider_url, metrics)
    };
    let result = dispatcher::run(config, crate::shutdown::token()).await;
    metrics_server.abort();
    result?;
    Ok(())
}
