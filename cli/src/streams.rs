//! The flags every `topology/` application of the CLI shares (`paystream saga`, `timers`,
//! `view`) and the `StreamsConfig` they make: one place, so that a setting added for one
//! application (the commit interval, librdkafka overrides) reaches all of them.

use std::path::PathBuf;
use std::time::Duration;

use paystream_stack::StackSettings;
use paystream_topology::{ErrorPolicy, StreamsConfig};

#[derive(clap::Args)]
pub struct Common {
    /// Local state (RocksDB stores, checkpoints; the view's pointer to its live application id):
    /// one directory per instance.
    #[arg(long, env = "PAYSTREAM_STATE_DIR", default_value = "/var/lib/paystream/state")]
    pub state_dir: PathBuf,
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

/// The applications' commit interval: Kafka Streams' 100 ms. A record waits for the
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

/// The runtime's configuration of one application from the shared flags.
pub fn config(settings: &StackSettings, application_id: &str, common: &Common) -> StreamsConfig {
    let mut config = StreamsConfig::new(application_id, &settings.kafka_bootstrap, &common.state_dir);
    config.instance_id = common.instance_id.clone();
    config.error_policy = ErrorPolicy::DeadLetter { topic: common.dlq_topic.clone() };
    config.commit_interval = Duration::from_millis(common.commit_interval_ms);
    config.poll_timeout = Duration::from_millis(common.poll_timeout_ms);
    config.kafka_overrides.extend(common.kafka_set.iter().cloned());
    config
}
