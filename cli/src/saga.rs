//! `paystream saga` and `paystream timers`: the payment saga and the timer processor, each a
//! topology on the `topology/` runtime (exactly-once v2, RocksDB stores with changelogs), until
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use paystream_processors::saga::codec::RegistryCodec;
use paystream_processors::saga::processor::{self, SagaMetrics, SagaSettings, SagaTopics};
use paystream_processors::saga::timers;
use paystream_schemas::EventCodec;
use paystream_stack::StackSettings;
use paystream_topology::{ErrorPolicy, Streams, StreamsConfig};

/// The saga's application id: its consumer group and the prefix of its changelog topic.
pub const SAGA_APPLICATION_ID: &str = "paystream-saga";
/// The timer processor's application id.
pub const TIMERS_APPLICATION_ID: &str = "paystream-timers";

#[derive(clap::Args)]
pub struct Common {
    /// Local state (RocksDB stores, checkpoints): one directory per instance.
    #[arg(long, env = "PAYSTREAM_STATE_DIR", default_value = "/var/lib/paystream/state")]
    state_dir: PathBuf,
    /// Stable identity of this instance (part of its transactional.id); default: kept in the state dir.
    #[arg(long, env = "PAYSTREAM_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Dead-letter topic for poison records.
    #[arg(long, env = "PAYSTREAM_DLQ_TOPIC", default_value = "payments.dlq")]
    dlq_topic: String,
}

#[derive(clap::Args)]
pub struct SagaArgs {
    #[command(flatten)]
    common: Common,
    /// How long a payment waits for the provider's verdict before FAILED_TIMEOUT.
    #[arg(long, env = "PAYSTREAM_PAYMENT_TIMEOUT_MS", default_value_t = 30_000)]
    payment_timeout_ms: u64,
    /// How long a callback that arrived before its payment is kept.
    #[arg(long, env = "PAYSTREAM_CALLBACK_RETENTION_MS", default_value_t = 600_000)]
    callback_retention_ms: u64,
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, env = "PAYSTREAM_SAGA_METRICS_LISTEN", default_value = "127.0.0.1:9103")]
    metrics_listen: SocketAddr,
}

#[derive(clap::Args)]
pub struct TimersArgs {
    #[command(flatten)]
    common: Common,
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, env = "PAYSTREAM_TIMERS_METRICS_LISTEN", default_value = "127.0.0.1:9104")]
    metrics_listen: SocketAddr,
}

fn config(settings: &StackSettings, application_id: &str, common: &Common) -> StreamsConfig {
    let mut config = StreamsConfig::new(application_id, &settings.kafka_bootstrap, &common.state_dir);
    config.instance_id = common.instance_id.clone();
    config.error_policy = ErrorPolicy::DeadLetter { topic: common.dlq_topic.clone() };
    config
}

fn codec(settings: &StackSettings) -> anyhow::Result<RegistryCodec> {
    let codec = EventCodec::new(&settings.schema_registry_url).context("creating the registry codec")?;
    Ok(RegistryCodec::new(codec, tokio::runtime::Handle::current()))
}

/// Starts `topology` (its admin checks block, so off the async workers), serves metrics, runs
/// until SIGTERM.
async fn run_streams(
    topology: paystream_topology::Topology<uuid::Uuid, processor::SagaEvent>,
    config: StreamsConfig,
    metrics_listen: SocketAddr,
    extra: prometheus::Registry,
) -> anyhow::Result<()> {
    let streams = tokio::task::spawn_blocking(move || Streams::start(topology, config)).await??;
    let registries = vec![streams.metrics().registry().clone(), extra];
    let metrics_server = crate::metrics_server::spawn_many(metrics_listen, registries).await?;
    let result = streams.run_until(crate::shutdown::signal()).await;
    metrics_server.abort();
    result?;
    Ok(())
}

pub async fn run_saga(settings: &StackSettings, args: SagaArgs) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = SagaMetrics::new(&registry)?;
    let saga_settings = SagaSettings {
        payment_timeout: Duration::from_millis(args.payment_timeout_ms),
        callback_retention: Duration::from_millis(args.callback_retention_ms),
    };
    let topology = processor::topology(codec(settings)?, saga_settings, metrics, &SagaTopics::default())?;
    tracing::info!(application_id = SAGA_APPLICATION_ID, "running the payment saga");
    run_streams(topology, config(settings, SAGA_APPLICATION_ID, &args.common), args.metrics_listen, registry)
        .await
}

pub async fn run_timers(settings: &StackSettings, args: TimersArgs) -> anyhow::Result<()> {
    let topology = timers::topology(codec(settings)?, &SagaTopics::default().timers)?;
    tracing::info!(application_id = TIMERS_APPLICATION_ID, "running the timer processor");
    let config = config(settings, TIMERS_APPLICATION_ID, &args.common);
    run_streams(topology, config, args.metrics_listen, prometheus::Registry::new()).await
}
