//! `paystream-bench restore`: how fast the topology runtime restores a store from its changelog
//! (issue 4: a 1M-key store at ≥ 250k records/s; issue 12 raised it to ≥ 500k records/s).
//!
//! 1. Create 1-partition topics for peer (b)'s join topology and, before the runtime starts, its
//!    compacted changelog `<app>-pending-changelog` with the settings the runtime gives its own
//!    changelogs; fill the changelog with N distinct keys (fast idempotent producer, lz4, big
//!    batches).
//! 2. Start `Streams` in this process on an empty state directory and time it until `Running`;
//!    the runtime's own metrics say how many records it restored (must be N) and how long the
//!    restore itself took.
//! 3. Close it and start again on the same state directory: the checkpoint written at close
//!    should leave ~0 records to restore.
//! 4. Delete the topics, the group and the state; write `results/restore-<UTC>.{md,json}`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{SecondsFormat, Utc};
use paystream_stack::kafka::{self, TopicSpec};
use paystream_stack::StackSettings;
use paystream_topology::runtime::StreamsState;
use paystream_topology::{Streams, StreamsConfig};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;
use tracing::{info, warn};

use crate::join::harness::{cache_dir, delete_group, list_topics, REPO_DIR};
use crate::join::paystream_peer::{self, STORE};
use crate::machine::{self, Host};
use crate::report::round_down;

/// Issue 12 (raised from issue 4's 250k): records per second restoring a 1M-key store.
pub const TARGET_RECORDS_PER_S: f64 = 500_000.0;
pub const KEYS_MAX: u64 = 100_000_000;
pub const VALUE_BYTES_MAX: usize = 1_000_000;
/// The longest a start (restore included) may take before the run fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the state is polled while starting: the resolution of the wall-clock times.
const STATE_POLL: Duration = Duration::from_millis(2);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(300);
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);
const DEFAULT_RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

/// `paystream-bench restore`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Distinct keys in the changelog (the store's size after the restore).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=KEYS_MAX))]
    pub keys: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=VALUE_BYTES_MAX as u64))]
    pub value_bytes: u64,
    /// Where the result files go.
    #[arg(long, default_value = DEFAULT_RESULTS_DIR)]
    pub results_dir: PathBuf,
}

/// One start of the runtime.
#[derive(Clone, Debug, Serialize)]
pub struct Start {
    /// From `Streams::start` to `Running` (start-up checks, group join, restore).
    pub to_running_s: f64,
    /// Records the runtime restored (`restore_records` metric).
    pub restored_records: u64,
    /// Time the runtime spent restoring (`restore_duration` metric: the restore loop alone).
    pub restore_s: f64,
    /// `restored_records / restore_s`.
    pub restore_records_per_s: f64,
    /// `restored_records / to_running_s`: what a restarting instance sees, group join included.
    pub wall_records_per_s: f64,
    /// From asking it to close to the stream thread's end.
    pub close_s: f64,
}

/// Everything a `restore` run found.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub started_at: String,
    pub keys: u64,
    pub value_bytes: u64,
    pub changelog: String,
    /// How long filling the changelog took (not part of the result).
    pub fill_s: f64,
    pub machine: Host,
    /// On an empty state directory: the full restore.
    pub cold: Start,
    /// Again on the same directory, after a clean close.
    pub warm: Start,
    pub target_records_per_s: f64,
    pub target_met: bool,
    pub verdict: String,
    pub warnings: Vec<String>,
}

/// Runs the benchmark; see the module documentation.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let bootstrap = StackSettings::from_env().kafka_bootstrap;
    kafka::wait_until_ready(&bootstrap, Duration::from_secs(15))
        .await
        .context("is Kafka up? `dev/status`")?;
    let started_at = Utc::now();
    let machine = machine::host(Path::new(REPO_DIR)).await;
    let run_id = started_at.format("%Y%m%dt%H%M%S").to_string();
    let app_id = format!("bench-restore-{run_id}");
    let topic = |suffix: &str| format!("bench.restore.{run_id}.{suffix}");
    let (left, right, out) = (topic("left"), topic("right"), topic("out"));
    let changelog = paystream_topology::topology::changelog_topic(&app_id, STORE);
    let state_dir = cache_dir().join("bench").join("restore").join(&run_id);

    let measured = measure(&args, &bootstrap, &app_id, [&left, &right, &out], &changelog, &state_dir).await;

    // Clean up whatever happened.
    let mut topics = vec![left.clone(), right.clone(), out.clone(), changelog.clone()];
    if let Ok(all) = list_topics(&bootstrap) {
        topics.extend(all.into_iter().filter(|t| t.contains(&app_id)));
    }
    topics.sort();
    topics.dedup();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(error) = kafka::delete_topics(&bootstrap, &names).await {
        warn!(%error, "deleting the topics");
    }
    if let Err(error) = delete_group(&bootstrap, &app_id).await {
        warn!("{error:#}");
    }
    if let Err(error) = std::fs::remove_dir_all(&state_dir) {
        warn!(%error, dir = %state_dir.display(), "removing the state directory");
    }
    let (fill_s, cold, warm) = measured?;

    let mut warnings = Vec::new();
    if cold.restored_records != args.keys {
        warnings.push(format!(
            "the cold start restored {} records, not the {} in the changelog",
            cold.restored_records, args.keys
        ));
    }
    if warm.restored_records > 0 {
        warnings.push(format!(
            "the warm start restored {} records: the checkpoint did not cover the whole store",
            warm.restored_records
        ));
    }
    let (target_met, verdict) = verdict(&cold, args.keys);
    let report = RestoreReport {
        started_at: started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        keys: args.keys,
        value_bytes: args.value_bytes,
        changelog,
        fill_s,
        machine,
        cold,
        warm,
        target_records_per_s: TARGET_RECORDS_PER_S,
        target_met,
        verdict,
        warnings,
    };
    let markdown = markdown(&report);
    println!("{markdown}");
    let stamp = started_at.format("%Y%m%dT%H%M%SZ").to_string();
    let (md, json) = crate::report::write_files(&args.results_dir, "restore", &stamp, &markdown, &report)?;
    println!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

async fn measure(
    args: &Args,
    bootstrap: &str,
    app_id: &str,
    [left, right, out]: [&String; 3],
    changelog: &str,
    state_dir: &Path,
) -> anyhow::Result<(f64, Start, Start)> {
    let mut specs: Vec<TopicSpec> =
        [left, right, out].into_iter().map(|t| TopicSpec::new(t.clone(), 1)).collect();
    // The settings `topology/src/runtime/admin.rs` gives the changelogs it creates, so the runtime
    // accepts this one as its own.
    specs.push(
        TopicSpec::new(changelog, 1)
            .with_config("cleanup.policy", "compact")
            .with_config("delete.retention.ms", "86400000")
            .with_config("min.compaction.lag.ms", "0")
            .with_config("segment.bytes", "67108864"),
    );
    kafka::ensure_topics(bootstrap, &specs).await.context("creating the topics")?;
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;

    let fill = {
        let (bootstrap, changelog, keys, value_bytes) =
            (bootstrap.to_owned(), changelog.to_owned(), args.keys, args.value_bytes as usize);
        tokio::task::spawn_blocking(move || fill_changelog(&bootstrap, &changelog, keys, value_bytes))
            .await??
    };
    info!(records = args.keys, secs = fill, "changelog filled");

    let (bootstrap, app_id, state_dir) = (bootstrap.to_owned(), app_id.to_owned(), state_dir.to_path_buf());
    let (left, right, out) = (left.clone(), right.clone(), out.clone());
    let (cold, warm) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Start, Start)> {
        let start = || {
            let mut config = StreamsConfig::new(&app_id, &bootstrap, &state_dir);
            config.error_policy = paystream_topology::ErrorPolicy::Fail;
            start_and_close(paystream_peer::topology(&left, &right, &out), config)
        };
        let cold = start().context("cold start")?;
        info!(?cold, "cold start");
        let warm = start().context("warm start")?;
        info!(?warm, "warm start");
        Ok((cold, warm))
    })
    .await??;
    Ok((fill, cold, warm))
}

/// Produces `keys` distinct keys `k<i>` with `value_bytes`-byte values to partition 0 of the
/// changelog; returns the seconds it took.
fn fill_changelog(bootstrap: &str, changelog: &str, keys: u64, value_bytes: usize) -> anyhow::Result<f64> {
    let mut config = kafka::idempotent_producer(bootstrap);
    config
        .set("compression.type", "lz4")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000");
    let producer: BaseProducer = config.create().context("creating the producer")?;
    let started = Instant::now();
    let mut value = vec![0u8; value_bytes];
    for index in 0..keys {
        let key = crate::join::workload::key(index);
        // A varied ASCII value (what a store holds is not one repeated string, and lz4 would
        // make a constant one almost free).
        let payload = crate::join::workload::payload(index, crate::join::workload::Side::Left);
        for (i, byte) in value.iter_mut().enumerate() {
            *byte = payload[i % payload.len()];
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(changelog)
            .partition(0)
            .key(key.as_bytes())
            .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(QUEUE_FULL_WAIT);
                }
                Err((error, _)) => return Err(error).context("producing to the changelog"),
            }
        }
        if index % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(FLUSH_TIMEOUT).context("flushing the changelog records")?;
    Ok(started.elapsed().as_secs_f64())
}

/// Starts the runtime, waits for `Running`, reads its restore metrics, closes it.
fn start_and_close(
    topology: paystream_topology::Topology<Vec<u8>, Vec<u8>>,
    config: StreamsConfig,
) -> anyhow::Result<Start> {
    let started = Instant::now();
    let streams = Streams::start(topology, config).context("starting the runtime")?;
    loop {
        match streams.state() {
            StreamsState::Running => break,
            StreamsState::Error | StreamsState::NotRunning => {
                let why = streams.join().err().map_or_else(|| "no error".to_owned(), |e| e.to_string());
                bail!("the runtime stopped before it was running: {why}");
            }
            _ if streams.is_finished() => bail!("the stream thread ended before it was running"),
            _ if started.elapsed() > START_TIMEOUT => bail!("not running after {START_TIMEOUT:?}"),
            _ => std::thread::sleep(STATE_POLL),
        }
    }
    let to_running_s = started.elapsed().as_secs_f64();
    let metrics = streams.metrics();
    let restored_records = metrics.restore_records.with_label_values(&[STORE]).get();
    let restore_s = metrics.restore_duration.with_label_values(&[STORE]).get_sample_sum();
    let closing = Instant::now();
    streams.close().context("closing the runtime")?;
    let close_s = closing.elapsed().as_secs_f64();
    let rate = |secs: f64| if secs > 0.0 { restored_records as f64 / secs } else { f64::NAN };
    Ok(Start {
        to_running_s,
        restored_records,
        restore_s,
        restore_records_per_s: rate(restore_s),
        wall_records_per_s: rate(to_running_s),
        close_s,
    })
}

/// Whether the cold restore met the target, in one sentence. Judged on the restore itself (the
/// runtime's `restore_duration`), not on start-up and the group join around it, which do not
/// grow with the store; both rates are in the table.
pub fn verdict(cold: &Start, keys: u64) -> (bool, String) {
    let rate = round_down(cold.restore_records_per_s / 1000.0, 1);
    let target = TARGET_RECORDS_PER_S / 1000.0;
    if cold.restored_records != keys {
        return (
            false,
            format!("Target not judged: {} records restored, {keys} expected.", cold.restored_records),
        );
    }
    if !cold.restore_records_per_s.is_finite() {
        return (false, "Target not judged: no restore time was recorded.".to_owned());
    }
    let met = cold.restore_records_per_s >= TARGET_RECORDS_PER_S;
    let word = if met { "PASS" } else { "MISS" };
    (
        met,
        format!("{word}: restored {keys} records at {rate:.1}k records/s (target ≥ {target:.0}k records/s)."),
    )
}

/// The report as markdown.
pub fn markdown(report: &RestoreReport) -> String {
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line(format!("# restore: a {}-key store from its changelog, {}", report.keys, report.started_at));
    line(String::new());
    line("| start | records restored | restore s | records/s (restore) | start → Running s | records/s (wall) | close s |".into());
    line("|---|---:|---:|---:|---:|---:|---:|".into());
    for (name, s) in [
        ("cold (empty state dir)", &report.cold),
        ("warm (same state dir, after a clean close)", &report.warm),
    ] {
        let rate = |r: f64| if r.is_finite() { format!("{r:.0}") } else { "–".to_owned() };
        line(format!(
            "| {name} | {} | {:.3} | {} | {:.3} | {} | {:.3} |",
            s.restored_records,
            s.restore_s,
            rate(s.restore_records_per_s),
            s.to_running_s,
            rate(s.wall_records_per_s),
            s.close_s
        ));
    }
    line(String::new());
    line(format!("**{}**", report.verdict));
    line(String::new());
    for warning in &report.warnings {
        line(format!("> Warning: {warning}"));
        line(String::new());
    }
    line("## How it was measured".into());
    line(String::new());
    line(format!(
        "- changelog `{}`: 1 partition, compacted, {} distinct keys with {}-byte values, produced before the \
         runtime started (in {:.1} s, idempotent producer, lz4)",
        report.changelog, report.keys, report.value_bytes, report.fill_s
    ));
    line(
        "- the runtime: peer (b)'s join topology (store `pending`, RocksDB), in this process, exactly-once v2, \
         1-partition empty source topics"
            .into(),
    );
    line(
        "- records/s (restore) = the `restore_records` metric / the `restore_duration` metric (the restore loop: \
         fetch, RocksDB write batches); the target is judged on it"
            .into(),
    );
    line(
        "- start → Running adds the start-up checks and the consumer group join (plus the broker's \
         `group.initial.rebalance.delay.ms` for a fresh group: 0 on the local stack, 3 s by Kafka's default)"
            .into(),
    );
    line(String::new());
    line("## Machine".into());
    line(String::new());
    line(format!("- {}", report.machine.describe()));
    line(format!("- commit: {}", report.machine.commit));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(records: u64, restore_s: f64) -> Start {
        Start {
            to_running_s: restore_s + 3.0,
            restored_records: records,
            restore_s,
            restore_records_per_s: records as f64 / restore_s,
            wall_records_per_s: records as f64 / (restore_s + 3.0),
            close_s: 0.1,
        }
    }

    #[test]
    fn the_verdict_is_on_the_restore_rate() {
        let (met, text) = verdict(&start(1_000_000, 2.0), 1_000_000);
        assert!(met, "{text}");
        assert!(text.starts_with("PASS") && text.contains("500.0k records/s"), "{text}");
        let (met, text) = verdict(&start(1_000_000, 4.01), 1_000_000);
        assert!(!met && text.starts_with("MISS") && text.contains("249.3k"), "{text}");
        let (met, text) = verdict(&start(999_999, 1.0), 1_000_000);
        assert!(!met && text.contains("not judged"), "{text}");
    }

    #[test]
    fn the_table_has_both_starts() {
        let report = RestoreReport {
            started_at: "t".into(),
            keys: 1_000_000,
            value_bytes: 100,
            changelog: "app-pending-changelog".into(),
            fill_s: 5.0,
            machine: Host {
                cpus: 2,
                memory_gib: 8.0,
                kernel: "k".into(),
                cpu_model: "c".into(),
                commit: "abc".into(),
            },
            cold: start(1_000_000, 2.0),
            warm: Start { restore_records_per_s: f64::NAN, wall_records_per_s: f64::NAN, ..start(0, 0.0) },
            target_records_per_s: TARGET_RECORDS_PER_S,
            target_met: true,
            verdict: "PASS".into(),
            warnings: vec![],
        };
        let md = markdown(&report);
        assert!(
            md.contains("| cold (empty state dir) | 1000000 | 2.000 | 500000 | 5.000 | 200000 | 0.100 |"),
            "{md}"
        );
        assert!(md.contains("| warm (same state dir, after a clean close) | 0 | 0.000 | – |"), "{md}");
    }
}
