//! `paystream status`: every component's health and version, consumer lag per group, payments by
//! state, dead letters and stuck payments, in one terminal screen (paystream_monitor::status).
//! Exits 1 when a required component (PostgreSQL, Kafka, Connect and its connectors, the
//! registry) is not up.

use paystream_monitor::status::{self, StatusConfig, DEFAULT_LAG_EXPORTER_URL};
use paystream_stack::StackSettings;

#[derive(clap::Args)]
pub struct Args {
    /// The local Prometheus (dev/up starts it).
    #[arg(long, env = "PAYSTREAM_PROMETHEUS_URL", default_value = "http://127.0.0.1:9090")]
    prometheus_url: String,
    /// Jaeger's query API and UI.
    #[arg(long, env = "PAYSTREAM_JAEGER_URL", default_value = "http://127.0.0.1:16686")]
    jaeger_url: String,
    /// `paystream lag-exporter`'s metrics.
    #[arg(long, env = "PAYSTREAM_LAG_EXPORTER_URL", default_value = DEFAULT_LAG_EXPORTER_URL)]
    lag_exporter_url: String,
    /// The DLQ topic whose letters are counted.
    #[arg(long, default_value = paystream_processors::dlq::DEFAULT_TOPIC)]
    dlq_topic: String,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let config = StatusConfig {
        prometheus_url: args.prometheus_url,
        jaeger_url: args.jaeger_url,
        lag_exporter_url: args.lag_exporter_url,
        dlq_topic: args.dlq_topic,
    };
    let report = status::gather(settings, &config).await;
    print!("{}", status::render(&report));
    if !report.healthy() {
        // The table said what is wrong; an error's backtrace would only push it off the screen.
        eprintln!("a required component is not up (see COMPONENTS above)");
        std::process::exit(1);
    }
    Ok(())
}
