//! `paystream saga` and `paystream timers`: the payment saga and the timer processor, each a
//! topology on the `topology/` runtime (exactly-once v2, RocksDB stores with changelogs), until
//! SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use paystream_processors::dispatcher;
use paystream_processors::saga::codec::RegistryCodec;
use paystream_processors::saga::deadline::{self, DispatchBudget, TIMEOUT_MARGIN};
use paystream_processors::saga::processor::{self, defaults, SagaMetrics, SagaSettings, SagaTopics};
use paystream_processors::saga::timers;
use paystream_schemas::EventCodec;
use paystream_stack::StackSettings;
use paystream_topology::{Streams, StreamsConfig};

use crate::streams::{config, Common};

/// The saga's application id: its consumer group and the prefix of its changelog topic.
pub const SAGA_APPLICATION_ID: &str = "paystream-saga";
/// The timer processor's application id.
pub const TIMERS_APPLICATION_ID: &str = "paystream-timers";

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
