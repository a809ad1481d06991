//! The `join` run, peer after peer (never two at once), each on topics and state of its own:
//!
//! 1. Create `bench.join.<run>.<peer>.{left,right,out}` with P partitions.
//! 2. Preload the backlog: N keys, one LEFT and one RIGHT record each, in chunks of 1000 keys
//!    whose 2000 records are shuffled (seeded), so a key's two sides arrive in either order and
//!    at varying distances, with Java's murmur2 partitioner (co-partitioned).
//! 3. Wait for a quiet machine, start the output reader (read_committed, every OUT partition
//!    from the beginning, arrival time of each output), start the peer child.
//! 4. Throughput: N pairs over the time from the first output of the backlog to the last.
//! 5. Latency: pairs of new keys at a fixed rate for a fixed time; end-to-end latency of each
//!    output is its arrival minus the production time of the later input.
//! 6. Peak RSS (`VmHWM`) of the child, then SIGTERM (SIGKILL after 30 s, noted).
//! 7. Verify every output; delete the topics (also the peer's internal ones: names containing
//!    its application id), its consumer group and its state — also when the peer failed. The
//!    peer's log (its stderr and stdout) stays in `$PAYSTREAM_CACHE/bench/join/<run>/`.
//!
//! The harness is synchronous code on a blocking thread (rdkafka's base clients, child
//! processes, paced sends); the few async admin calls go through the runtime's handle.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{SecondsFormat, Utc};
use paystream_stack::kafka::{self, TopicSpec};
use paystream_stack::StackSettings;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rdkafka::admin::AdminOptions;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{info, warn};

use super::env::{PeerEnv, DEFAULT_COMMIT_INTERVAL_MS};
use super::report::{self, JoinParameters, JoinReport, PeerResult, StopOutcome};
use super::workload::{self, Output, Sent, Side};
use super::PeerKind;
use crate::cpu;
use crate::machine;

/// Largest backlog a run accepts: the harness keeps every output in memory (~100 bytes each).
pub const KEYS_MAX: u64 = 10_000_000;
pub const PARTITIONS_MAX: i64 = 64;
/// Highest latency-phase rate, pairs per second (the pacing sleeps between sends).
pub const LATENCY_RATE_MAX: u64 = 100_000;
pub const LATENCY_SECS_MAX: u64 = 3_600;
/// Keys per shuffled chunk of the backlog, and the shuffle's seed (the same order every run).
pub const PRELOAD_CHUNK_KEYS: u64 = 1_000;
pub const SHUFFLE_SEED: u64 = 0x0004_1015;
/// How long a peer gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// After the peer stopped, outputs it committed last may still be on their way to the reader.
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Budget of a producer flush and of metadata requests.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress is logged this often while waiting for outputs.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a producer serves delivery reports when its queue is full before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);
/// Lines of a failed peer's log quoted in the report.
const LOG_TAIL_LINES: usize = 15;
/// How long the broker may take to answer at start.
const KAFKA_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The results folder and the peers' directory, inside this crate; the repository for git.
const DEFAULT_RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");
const PEERS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");
pub(crate) const REPO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `paystream-bench join`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Keys (pairs) in the throughput backlog of every peer but Quix.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(2..=KEYS_MAX))]
    pub keys: u64,
    /// Keys in Quix's backlog: a smaller one keeps a slow peer's run short, and throughput is a
    /// rate, so it still compares.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(2..=KEYS_MAX))]
    pub quix_keys: u64,
    /// Partitions of each input and output topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=PARTITIONS_MAX))]
    pub partitions: i32,
    /// Pairs per second in the latency phase: a rate every peer sustains.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=LATENCY_RATE_MAX))]
    pub latency_rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=LATENCY_SECS_MAX))]
    pub latency_secs: u64,
    /// Which peers run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "raw,paystream,kafka-streams,quix")]
    pub peers: Vec<PeerKind>,
    /// Longest wait for a peer's outputs, per phase.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Commit interval every peer is given (WORKLOAD.md: 100).
    #[arg(long, default_value_t = DEFAULT_COMMIT_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub commit_interval_ms: u64,
    /// Where the result files go.
    #[arg(long, default_value = DEFAULT_RESULTS_DIR)]
    pub results_dir: PathBuf,
}

/// What every peer's run shares.
struct Ctx {
    args: Args,
    bootstrap: String,
    run_id: String,
    /// Root of this run's peer state and logs.
    work_dir: PathBuf,
    handle: Handle,
    interrupted: Arc<AtomicBool>,
}

impl Ctx {
    fn check_interrupted(&self) -> anyhow::Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// Runs the benchmark; see the module documentation.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = StackSettings::from_env();
    let bootstrap = settings.kafka_bootstrap.clone();
    kafka::wait_until_ready(&bootstrap, KAFKA_READY_TIMEOUT).await.context("is Kafka up? `dev/status`")?;
    let started_at = Utc::now();
    let host = machine::host(Path::new(REPO_DIR)).await;
    let run_id = started_at.format("%Y%m%dt%H%M%S").to_string();
    let work_dir = cache_dir().join("bench").join("join").join(&run_id);
    std::fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    info!(run = %run_id, peers = ?args.peers, keys = args.keys, quix_keys = args.quix_keys, "join benchmark");

    let interrupted = Arc::new(AtomicBool::new(false));
    let watcher = {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            let signal = crate::ingest::interrupted().await;
            warn!("{signal}: stopping the current peer and cleaning up");
            interrupted.store(true, Ordering::SeqCst);
        })
    };
    let ctx = Ctx {
        args: args.clone(),
        bootstrap: bootstrap.clone(),
        run_id: run_id.clone(),
        work_dir: work_dir.clone(),
        handle: Handle::current(),
        interrupted: interrupted.clone(),
    };
    let results = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        for &peer in &ctx.args.peers {
            if ctx.interrupted.load(Ordering::SeqCst) {
                break;
            }
            results.push(run_peer(&ctx, peer));
        }
        results
    })
    .await
    .context("the harness thread panicked")?;
    watcher.abort();
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted; the peers' topics and state were removed, no result written");
    }

    let parameters = JoinParameters {
        keys: args.keys,
        quix_keys: args.quix_keys,
        partitions: args.partitions,
        latency_rate_pairs_per_s: args.latency_rate,
        latency_secs: args.latency_secs,
        commit_interval_ms: args.commit_interval_ms,
        payload_bytes: workload::PAYLOAD_BYTES,
        bootstrap,
        run_id,
        peer_versions: peer_versions(),
    };
    let report =
        JoinReport::new(started_at.to_rfc3339_opts(SecondsFormat::Secs, true), parameters, host, results);
    let markdown = report::markdown(&report);
    println!("{markdown}");
    let stamp = started_at.format("%Y%m%dT%H%M%SZ").to_string();
    let (md, json) = crate::report::write_files(&args.results_dir, "join", &stamp, &markdown, &report)?;
    println!("wrote {} and {}; the peers' logs are in {}", md.display(), json.display(), work_dir.display());
    Ok(())
}

/// `$PAYSTREAM_CACHE`, as `dev/lib.sh` defines it: downloads and runtime state live outside the
/// clone.
pub(crate) fn cache_dir() -> PathBuf {
    match std::env::var_os("PAYSTREAM_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/paystream")
        }
    }
}

/// The peers' library versions, from their pinned build files (so a result says what it ran).
fn peer_versions() -> Vec<String> {
    let read = |path: &str| std::fs::read_to_string(Path::new(PEERS_DIR).join(path)).unwrap_or_default();
    let pom = read("kafka-streams/pom.xml");
    let kafka_streams = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .map_or_else(|| "Kafka Streams (version unknown)".to_owned(), |v| format!("Kafka Streams {v}"));
    let quix: Vec<String> = read("quix/requirements.txt")
        .lines()
        .map(str::trim)
        .filter(|line| line.contains("==") && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    vec![
        format!("rdkafka (librdkafka) {}", rdkafka::util::get_rdkafka_version().1),
        kafka_streams,
        format!("Quix: {}", quix.join(", ")),
    ]
}

/// Names, places and the environment of one peer's run.
struct PeerRun {
    peer: PeerKind,
    env: PeerEnv,
    log: PathBuf,
    /// Pairs in the backlog.
    keys: u64,
}

impl PeerRun {
    fn new(ctx: &Ctx, peer: PeerKind) -> Self {
        let topic = |suffix: &str| format!("bench.join.{}.{}.{suffix}", ctx.run_id, peer.name());
        let state_dir = ctx.work_dir.join(format!("{}-state", peer.name()));
        let env = PeerEnv {
            bootstrap: ctx.bootstrap.clone(),
            app_id: format!("bench-join-{}-{}", ctx.run_id, peer.name()),
            left: topic("left"),
            right: topic("right"),
            out: topic("out"),
            state_dir: state_dir.display().to_string(),
            commit_interval_ms: ctx.args.commit_interval_ms,
        };
        let keys = if peer == PeerKind::Quix { ctx.args.quix_keys } else { ctx.args.keys };
        Self { peer, env, log: ctx.work_dir.join(format!("{}.log", peer.name())), keys }
    }

    fn topic(&self, side: Side) -> &str {
        match side {
            Side::Left => &self.env.left,
            Side::Right => &self.env.right,
        }
    }
}

/// One peer, start to clean-up; a failure is recorded in the result, never ends the run.
fn run_peer(ctx: &Ctx, peer: PeerKind) -> PeerResult {
    let run = PeerRun::new(ctx, peer);
    info!(peer = peer.name(), keys = run.keys, log = %run.log.display(), "── {}", peer.label());
    let mut result = PeerResult::new(peer, run.keys, &run.log);
    if let Err(error) = measure(ctx, &run, &mut result) {
        let mut text = format!("{error:#}");
        if let Some(tail) = log_tail(&run.log) {
            text.push_str(&format!(" — last lines of {}:\n{tail}", run.log.display()));
        }
        warn!(peer = peer.name(), "failed: {text}");
        result.error = Some(text);
    }
    if let Err(error) = clean_up(ctx, &run) {
        warn!(peer = peer.name(), "clean-up: {error:#}");
        result.cleanup_error = Some(format!("{error:#}"));
    }
    result
}

/// Everything of one peer that needs the broker; fills `result` as it goes, so a peer that
/// fails half-way still reports what it did.
fn measure(ctx: &Ctx, run: &PeerRun, result: &mut PeerResult) -> anyhow::Result<()> {
    let env = &run.env;
    let partitions = ctx.args.partitions;
    let specs: Vec<TopicSpec> = [&env.left, &env.right, &env.out]
        .into_iter()
        .map(|name| TopicSpec::new(name.clone(), partitions))
        .collect();
    ctx.handle.block_on(kafka::ensure_topics(&ctx.bootstrap, &specs)).context("creating the topics")?;
    std::fs::create_dir_all(&env.state_dir).with_context(|| format!("creating {}", env.state_dir))?;

    let producer = BenchProducer::new(&ctx.bootstrap, false)?;
    let mut sent = vec![Sent::default(); run.keys as usize];
    let preload_started = Instant::now();
    preload(ctx, &producer, run, &mut sent)?;
    info!(
        peer = run.peer.name(),
        pairs = run.keys,
        secs = preload_started.elapsed().as_secs_f64(),
        "backlog produced"
    );

    let settled = ctx.handle.block_on(cpu::settle());
    if !settled.settled {
        warn!(peer = run.peer.name(), "the machine stayed busy for {:?}; starting anyway", settled.waited);
    }
    ctx.check_interrupted()?;
    let reader =
        OutputReader::start(&ctx.bootstrap, &env.out, partitions, &format!("{}-reader", env.app_id))?;
    let before = cpu::sample();
    let mut child = PeerProcess::spawn(run)?;
    info!(peer = run.peer.name(), pid = child.pid(), "peer started");

    let per_pair = run.peer.expect().outputs_per_pair();
    let phases = (|| -> anyhow::Result<()> {
        let timeout = Duration::from_secs(ctx.args.timeout_secs);
        wait_for_outputs(ctx, &reader, &mut child, run.keys * per_pair, timeout, "the backlog")?;
        let latency_producer = BenchProducer::new(&ctx.bootstrap, true)?;
        info!(
            peer = run.peer.name(),
            rate = ctx.args.latency_rate,
            secs = ctx.args.latency_secs,
            "latency phase"
        );
        produce_paced(ctx, &latency_producer, run, &mut child, &mut sent)?;
        result.latency_pairs = sent.len() as u64 - run.keys;
        wait_for_outputs(ctx, &reader, &mut child, sent.len() as u64 * per_pair, timeout, "the latency phase")
    })();
    result.peak_rss_mib = child.peak_rss_kib().map(|kib| kib as f64 / 1024.0);
    result.peer_cpu_s = child.cpu_s();
    result.cpu = Some(cpu::between(&before, &cpu::sample(), cpu::Own::Waiting, settled));
    result.stop = Some(child.stop(STOP_GRACE));
    std::thread::sleep(OUTPUT_DRAIN);
    let outputs = reader.finish()?;
    result.first_output_after_s = outputs
        .iter()
        .map(|o| o.arrived_us)
        .min()
        .map(|first| first.saturating_sub(child.started_us) as f64 / 1e6);
    result.throughput = workload::throughput(run.keys, &outputs);
    let latencies = workload::latencies(run.peer.expect(), run.keys, &outputs);
    if latencies.successes() > 0 {
        result.latency = Some(latencies.summarize(Duration::from_secs(ctx.args.latency_secs)));
    }
    result.verification = Some(workload::verify(run.peer.expect(), &sent, &outputs));
    phases
}

/// Produces the backlog: pairs `0..keys`, in shuffled chunks.
fn preload(ctx: &Ctx, producer: &BenchProducer, run: &PeerRun, sent: &mut [Sent]) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(SHUFFLE_SEED);
    let mut chunk: Vec<(u64, Side)> = Vec::with_capacity(2 * PRELOAD_CHUNK_KEYS as usize);
    for start in (0..run.keys).step_by(PRELOAD_CHUNK_KEYS as usize) {
        ctx.check_interrupted()?;
        chunk.clear();
        chunk.extend(
            (start..(start + PRELOAD_CHUNK_KEYS).min(run.keys))
                .flat_map(|i| [(i, Side::Left), (i, Side::Right)]),
        );
        chunk.shuffle(&mut rng);
        for &(index, side) in &chunk {
            let ts = producer.send(run.topic(side), index, side)?;
            let pair = &mut sent[index as usize];
            match side {
                Side::Left => pair.ts_left = ts,
                Side::Right => pair.ts_right = ts,
            }
        }
    }
    producer.flush()
}

/// The latency phase: pairs of new keys (after the backlog's), LEFT then RIGHT at once, at the
/// fixed rate for the fixed time, each pair at its scheduled moment.
fn produce_paced(
    ctx: &Ctx,
    producer: &BenchProducer,
    run: &PeerRun,
    child: &mut PeerProcess,
    sent: &mut Vec<Sent>,
) -> anyhow::Result<()> {
    let pairs = ctx.args.latency_rate * ctx.args.latency_secs;
    let interval = Duration::from_secs_f64(1.0 / ctx.args.latency_rate as f64);
    let started = Instant::now();
    let mut behind = Duration::ZERO;
    for n in 0..pairs {
        let due = started + interval.mul_f64(n as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            behind = behind.max(now - due);
        }
        let index = run.keys + n;
        let ts_left = producer.send(run.topic(Side::Left), index, Side::Left)?;
        let ts_right = producer.send(run.topic(Side::Right), index, Side::Right)?;
        sent.push(Sent { ts_left, ts_right });
        if n % ctx.args.latency_rate == 0 {
            ctx.check_interrupted()?;
            child.check_alive()?;
        }
    }
    producer.flush()?;
    if behind > Duration::from_millis(100) {
        warn!(behind_ms = behind.as_millis() as u64, "the latency producer fell behind its schedule");
    }
    Ok(())
}

/// Waits until the reader has `target` outputs; fails when the peer exits, the run is
/// interrupted or `timeout` passes.
fn wait_for_outputs(
    ctx: &Ctx,
    reader: &OutputReader,
    child: &mut PeerProcess,
    target: u64,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let received = reader.received();
        if received >= target {
            return Ok(());
        }
        ctx.check_interrupted()?;
        child.check_alive()?;
        reader.check_alive()?;
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for the outputs of {what}: {received} of {target}");
        }
        if last_log.elapsed() >= PROGRESS_INTERVAL {
            info!(peer = child.peer.name(), received, target, "waiting for the outputs of {what}");
            last_log = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes the peer's topics (inputs, output, and every topic whose name contains its
/// application id: Kafka Streams' and paystream's `<app>-pending-changelog`, Quix's
/// `changelog__<app>--…`), its consumer group and its state directory.
fn clean_up(ctx: &Ctx, run: &PeerRun) -> anyhow::Result<()> {
    let env = &run.env;
    let mut topics = vec![env.left.clone(), env.right.clone(), env.out.clone()];
    topics.extend(list_topics(&ctx.bootstrap)?.into_iter().filter(|t| t.contains(&env.app_id)));
    topics.sort();
    topics.dedup();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    ctx.handle.block_on(kafka::delete_topics(&ctx.bootstrap, &names)).context("deleting the topics")?;
    info!(peer = run.peer.name(), topics = ?topics, "deleted topics");
    ctx.handle.block_on(delete_group(&ctx.bootstrap, &env.app_id))?;
    if Path::new(&env.state_dir).exists() {
        std::fs::remove_dir_all(&env.state_dir).with_context(|| format!("removing {}", env.state_dir))?;
    }
    Ok(())
}

/// Every topic's name, from cluster metadata.
pub(crate) fn list_topics(bootstrap: &str) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = kafka::base_config(bootstrap).create()?;
    let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT).context("listing topics")?;
    Ok(metadata.topics().iter().map(|t| t.name().to_owned()).collect())
}

/// Deletes a consumer group; one that does not exist (never joined) is fine, and so is one that
/// still has a member: Kafka Streams does not leave the group on close (its consumer's
/// `internal.leave.group.on.close=false`), so its member stays until `session.timeout.ms` (45 s)
/// passes; the empty group then expires with the broker's offsets retention. Waiting for that
/// would cost every run 45 s for an empty group.
pub(crate) async fn delete_group(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    let admin = kafka::admin(bootstrap)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_millis(kafka::ADMIN_TIMEOUT_MS)));
    for result in admin.delete_groups(&[group], &options).await.context("deleting the consumer group")? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((group, RDKafkaErrorCode::NonEmptyGroup)) => {
                info!(%group, "the group still has a member (it did not leave on close); it will expire");
            }
            Err((group, code)) => bail!("deleting consumer group {group}: {code}"),
        }
    }
    Ok(())
}

/// The last lines of a peer's log.
fn log_tail(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    (!tail.is_empty()).then_some(tail)
}

// ----- the peer child -----

/// A peer running as a child process.
struct PeerProcess {
    child: Child,
    peer: PeerKind,
    /// When it was started, on the clock of output arrivals.
    started_us: u64,
}

impl PeerProcess {
    fn spawn(run: &PeerRun) -> anyhow::Result<Self> {
        let mut command = match run.peer {
            PeerKind::Raw | PeerKind::Paystream => {
                let mut command = Command::new(std::env::current_exe().context("locating this binary")?);
                command.args(["join-peer", run.peer.name()]);
                command
            }
            PeerKind::KafkaStreams => Command::new(Path::new(PEERS_DIR).join("kafka-streams/run")),
            PeerKind::Quix => Command::new(Path::new(PEERS_DIR).join("quix/run")),
        };
        let log = File::create(&run.log).with_context(|| format!("creating {}", run.log.display()))?;
        command.envs(run.env.vars()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let started_us = workload::now_us();
        let child = command.spawn().with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Self { child, peer: run.peer, started_us })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the peer has exited (it should run until SIGTERM).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!("the peer exited on its own: {}", describe_exit(status))),
        }
    }

    /// `VmHWM` of the child: its peak resident set, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        report::vm_hwm_kib(&status)
    }

    fn cpu_s(&self) -> Option<f64> {
        cpu::process_cpu_s(self.pid())
    }

    /// SIGTERM, then waits up to `grace`, then SIGKILL.
    fn stop(&mut self, grace: Duration) -> StopOutcome {
        if let Ok(Some(status)) = self.child.try_wait() {
            return StopOutcome {
                secs: 0.0,
                exit: format!("had exited: {}", describe_exit(status)),
                killed: false,
            };
        }
        let pid = libc::pid_t::try_from(self.pid()).unwrap_or(libc::pid_t::MAX);
        // SAFETY: kill(2) with a pid of our own child that has not been reaped (try_wait above saw
        // it running, and only this struct waits for it), so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(status)) = self.child.try_wait() {
                return StopOutcome {
                    secs: started.elapsed().as_secs_f64(),
                    exit: describe_exit(status),
                    killed: false,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let exit = self.child.wait().map_or_else(|e| e.to_string(), describe_exit);
        StopOutcome { secs: started.elapsed().as_secs_f64(), exit, killed: true }
    }
}

impl Drop for PeerProcess {
    /// A peer never outlives a failed or interrupted run.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

// ----- producing -----

/// Counts failed deliveries: a lost input would read as a peer's missing output.
#[derive(Default)]
struct DeliveryCheck {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCheck {}

impl ProducerContext for DeliveryCheck {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| error.to_string());
        }
    }
}

/// The harness's idempotent producer of input records.
struct BenchProducer {
    producer: BaseProducer<DeliveryCheck>,
}

impl BenchProducer {
    /// `idempotent_producer` (acks=all, murmur2_random as Java's clients); for the latency phase
    /// with `linger.ms=0`, so the harness does not add its own batching delay to every peer's
    /// latency.
    fn new(bootstrap: &str, latency: bool) -> anyhow::Result<Self> {
        let mut config = kafka::idempotent_producer(bootstrap);
        if latency {
            config.set("linger.ms", "0");
        }
        let producer = config.create_with_context(DeliveryCheck::default()).context("creating a producer")?;
        Ok(Self { producer })
    }

    /// Sends the `side` record of pair `index` stamped with now; returns the stamp.
    fn send(&self, topic: &str, index: u64, side: Side) -> anyhow::Result<u64> {
        let key = workload::key(index);
        let ts = workload::now_us();
        let value = workload::value(ts, index, side);
        let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(value.as_slice());
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(QUEUE_FULL_WAIT);
                }
                Err((error, _)) => return Err(error).context("producing an input record"),
            }
        }
        self.producer.poll(Duration::ZERO);
        Ok(ts)
    }

    /// Waits for every delivery; an error if any failed.
    fn flush(&self) -> anyhow::Result<()> {
        self.producer.flush(FLUSH_TIMEOUT).context("flushing the producer")?;
        let context = self.producer.context();
        let failed = context.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first =
                context.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
            bail!("{failed} input records were not delivered, e.g.: {first}");
        }
        Ok(())
    }
}

// ----- reading OUT -----

/// Reads OUT from the beginning on a thread of its own and stamps each output's arrival.
struct OutputReader {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<Vec<Output>>>>,
}

impl OutputReader {
    fn start(bootstrap: &str, topic: &str, partitions: i32, group: &str) -> anyhow::Result<Self> {
        // read_committed: an output counts once its transaction committed, as a downstream
        // consumer would see it. A short fetch wait bounds what the reader itself adds to latency.
        let mut config = kafka::read_committed_consumer(bootstrap, group);
        config.set("fetch.wait.max.ms", "10");
        let consumer: BaseConsumer = config.create().context("creating the output reader")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment).context("assigning the output partitions")?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::Builder::new().name("output-reader".into()).spawn(move || {
                let mut outputs = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match consumer.poll(Duration::from_millis(50)) {
                        Some(Ok(message)) => {
                            let arrived_us = workload::now_us();
                            outputs.push(Output {
                                key: message.key().unwrap_or_default().to_vec(),
                                value: message.payload().unwrap_or_default().to_vec(),
                                arrived_us,
                            });
                            received.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(Err(error)) => warn!(%error, "output reader"),
                        None => {}
                    }
                }
                Ok(outputs)
            })?
        };
        Ok(Self { stop, received, thread: Some(thread) })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        match &self.thread {
            Some(thread) if !thread.is_finished() => Ok(()),
            _ => Err(anyhow!("the output reader stopped")),
        }
    }

    /// Stops reading; every output read.
    fn finish(mut self) -> anyhow::Result<Vec<Output>> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().ok_or_else(|| anyhow!("the output reader is gone"))?;
        thread.join().map_err(|_| anyhow!("the output reader panicked"))?
    }
}

impl Drop for OutputReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
