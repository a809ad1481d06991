//! `paystream lag-exporter`: consumer lag of every group, Kafka Connect's connector and task
//! states, Debezium's slots, dead letters and payments by state, as Prometheus gauges at
//! `/metrics` (paystream_monitor::exporter; README "Operating paystream").

use std::net::SocketAddr;

use paystream_monitor::exporter::{self, ExporterMetrics};
use paystream_stack::StackSettings;

#[derive(clap::Args)]
pub struct Args {
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, env = "PAYSTREAM_LAG_EXPORTER_LISTEN", default_value = "127.0.0.1:9108")]
    listen: SocketAddr,
    /// Seconds between two collections (scrapes only read the last one).
    #[arg(long, default_value_t = exporter::DEFAULT_INTERVAL.as_secs())]
    interval_s: u64,
    /// The DLQ topic whose letters are counted.
    #[arg(long, default_value = paystream_processors::dlq::DEFAULT_TOPIC)]
    dlq_topic: String,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let metrics = ExporterMetrics::new()?;
    let server = crate::metrics_server::spawn(args.listen, metrics.registry().clone()).await?;
    tracing::info!(listen = %args.listen, "lag exporter serving /metrics");
    let interval = std::time::Duration::from_secs(args.interval_s.max(1));
    tokio::select! {
        () = exporter::run(settings.clone(), args.dlq_topic, metrics, interval) => {}
        () = crate::shutdown::token().requested() => {}
    }
    server.abort();
    Ok(())
}
