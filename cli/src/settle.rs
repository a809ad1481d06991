//! `paystream settle`: apply every PaymentResult to its wallet, once, until SIGTERM.

use std::net::SocketAddr;

use paystream_processors::settlement::{self, SettlementConfig, SettlementMetrics};
use paystream_stack::StackSettings;

#[derive(clap::Args)]
pub struct Args {
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, env = "PAYSTREAM_SETTLE_METRICS_LISTEN", default_value = "127.0.0.1:9101")]
    metrics_listen: SocketAddr,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = SettlementMetrics::register(&registry)?;
    let metrics_server = crate::metrics_server::spawn(args.metrics_listen, registry).await?;
    let config = SettlementConfig::new(settings, metrics);
    tracing::info!(topic = %config.results_topic, group = %config.group_id, "settling payment results");
    let result = settlement::run(config, crate::shutdown::token()).await;
    metrics_server.abort();
    result?;
    tracing::info!("settlement stopped");
    Ok(())
}
