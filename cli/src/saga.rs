//! `paystream saga` and `paystream timers`: the payment saga and the timer processor, each a
//! topology on the `topology/` runtime (exactly-once v2, RocksDB stores with changelogs), until
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use paystream_processors::dispatcher;
use paystream_processors::saga::codec::RegistryCodec;
use paystream_processors::saga::deadline::{self, DispatchBudget, TIMEOUT_MARGIN};
use paystream_processors::saga::processor::{self, defaults, SagaMetrics, SagaSettings, SagaTopics};
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
    /// How often work is committed (one Kafka transaction per interval). Every hop through the
    /// saga waits for its commit, so this is most of what the saga adds to a payment's latency.
    #[arg(long, env = "PAYSTREAM_STREAMS_COMMIT_INTERVAL_MS", default_value_t = COMMIT_INTERVAL_MS)]
    commit_interval_ms: u64,
    /// Longest wait of one consumer poll: a commit that falls due while no record arrives waits
    /// for the poll to return, so it stays well under the commit interval.
    #[arg(long, env = "PAYSTREAM_STREAMS_POLL_TIMEOUT_MS", default_value_t = POLL_TIMEOUT_MS)]
    poll_timeout_ms: u64,
    /// Extra librdkafka settings for every client of the runtime, `KEY=VALUE` (repeat the flag,
    /// or separate them with `;` in the variable), e.g. `debug=eos,protocol` to see the
    /// transaction cycle's requests and retries.
    #[arg(long = "kafka-set", env = "PAYSTREAM_STREAMS_KAFKA", value_delimiter = ';', value_parser = kafka_setting)]
    kafka_set: Vec<(String, String)>,
}

/// The saga's and the timers' commit interval: Kafka Streams' 100 ms. A record waits for the
/// end of its interval (50 ms on average per hop through the saga, two hops per payment), but
/// 20 ms did not make payments faster on this 2-core machine: the saga's commit hops fell by
/// 50-80 ms while its input hops rose as much with the extra transactions' load (`paystream
/// load`, README). Worth trying again where CPU is not the limit.
pub const COMMIT_INTERVAL_MS: u64 = 100;
/// The runtime's default: a commit due while no record arrives starts at most this late.
pub const POLL_TIMEOUT_MS: u64 = 50;

/// One `KEY=VALUE` librdkafka setting.
fn kafka_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.trim().to_owned())),
        _ => Err(format!("{text:?} is not a librdkafka setting (KEY=VALUE)")),
    }
}

#[derive(clap::Args)]
pub struct SagaArgs {
    #[command(flatten)]
    common: Common,
    /// How long a payment waits for the provider's verdict before the saga verifies it with the
    /// provider (status query, then void → FAILED_TIMEOUT if it holds no charge). Must exceed the
    /// dispatch budget plus a 10 s margin.
    #[arg(long, env = "PAYSTREAM_PAYMENT_TIMEOUT_MS", default_value_t = defaults::PAYMENT_TIMEOUT_MS)]
    payment_timeout_ms: u64,
    /// How long a callback that arrived before its payment is kept.
    #[arg(long, env = "PAYSTREAM_CALLBACK_RETENTION_MS", default_value_t = defaults::CALLBACK_RETENTION_MS)]
    callback_retention_ms: u64,
    /// The dispatcher's attempts per command (the same setting as `paystream dispatch`'s).
    #[arg(long, env = "PAYSTREAM_DISPATCH_ATTEMPTS_MAX", default_value_t = dispatcher::backoff::ATTEMPTS_MAX)]
    dispatch_attempts_max: u32,
    /// The dispatcher's budget of one attempt (the same setting as `paystream dispatch`'s).
    #[arg(long, env = "PAYSTREAM_DISPATCH_REQUEST_TIMEOUT_MS", default_value_t = dispatcher::REQUEST_TIMEOUT_MS)]
    dispatch_request_timeout_ms: u64,
    /// The dispatcher's longest pause between attempts (the same setting as `paystream dispatch`'s).
    #[arg(long, env = "PAYSTREAM_DISPATCH_BACKOFF_MAX_MS", default_value_t = dispatcher::backoff::BACKOFF_MAX_MS)]
    dispatch_backoff_max_ms: u64,
    /// First pause before asking the provider again after an answer without a decision.
    #[arg(long, env = "PAYSTREAM_VERIFY_BACKOFF_INITIAL_MS", default_value_t = defaults::VERIFY_BACKOFF_INITIAL_MS)]
    verify_backoff_initial_ms: u64,
    /// Longest pause between two attempts to verify.
    #[arg(long, env = "PAYSTREAM_VERIFY_BACKOFF_MAX_MS", default_value_t = defaults::VERIFY_BACKOFF_MAX_MS)]
    verify_backoff_max_ms: u64,
    /// Answers without a decision after which `paystream_saga_verification_overdue_total` alerts.
    #[arg(long, env = "PAYSTREAM_VERIFY_ROUNDS_ALERT", default_value_t = defaults::VERIFY_ROUNDS_ALERT)]
    verify_rounds_alert: u32,
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
    config.commit_interval = Duration::from_millis(common.commit_interval_ms);
    config.poll_timeout = Duration::from_millis(common.poll_timeout_ms);
    config.kafka_overrides.extend(common.kafka_set.iter().cloned());
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
    let result = streams.run_until(crate::shutdown::token().requested()).await;
    metrics_server.abort();
    result?;
    Ok(())
}

/// The saga's settings from its flags; refuses a payment timeout the dispatcher could outlast.
fn saga_settings(args: &SagaArgs) -> anyhow::Result<SagaSettings> {
    let ms = Duration::from_millis;
    let payment_timeout = ms(args.payment_timeout_ms);
    let budget = DispatchBudget {
        attempts_max: args.dispatch_attempts_max,
        request_timeout: ms(args.dispatch_request_timeout_ms),
        backoff_max: ms(args.dispatch_backoff_max_ms),
    };
    let charge_deadline = deadline::charge_deadline(payment_timeout, budget, TIMEOUT_MARGIN)
        .context("refusing the saga's timeout settings")?;
    Ok(SagaSettings {
        payment_timeout,
        charge_deadline,
        callback_retention: ms(args.callback_retention_ms),
        verify_backoff_initial: ms(args.verify_backoff_initial_ms),
        verify_backoff_max: ms(args.verify_backoff_max_ms),
        verify_rounds_alert: args.verify_rounds_alert,
    })
}

pub async fn run_saga(settings: &StackSettings, args: SagaArgs) -> anyhow::Result<()> {
    let saga_settings = saga_settings(&args)?;
    let registry = prometheus::Registry::new();
    let metrics = SagaMetrics::new(&registry)?;
    tracing::info!(
        payment_timeout_ms = args.payment_timeout_ms,
        charge_deadline_ms = saga_settings.charge_deadline.as_millis() as u64,
        "timeouts checked against the dispatch budget"
    );
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SagaArgs,
    }

    fn settings(argv: &[&str]) -> anyhow::Result<SagaSettings> {
        let mut all = vec!["saga"];
        all.extend_from_slice(argv);
        saga_settings(&Cli::try_parse_from(all).expect("the command line parses").args)
    }

    #[test]
    fn the_defaults_pass_the_check_and_a_short_timeout_is_refused() {
        let defaults = settings(&[]).unwrap();
        assert_eq!(defaults.payment_timeout, Duration::from_secs(60));
        assert_eq!(defaults.charge_deadline, Duration::from_secs(45));
        let refused = settings(&["--payment-timeout-ms", "30000"]).unwrap_err();
        assert!(
            format!("{refused:#}").contains("not longer than the dispatch budget 40000 ms"),
            "{refused:#}"
        );
        let fewer_attempts =
            settings(&["--payment-timeout-ms", "30000", "--dispatch-attempts-max", "2"]).unwrap();
        assert_eq!(fewer_attempts.charge_deadline, Duration::from_secs(15));
    }
}
