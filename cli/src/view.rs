//! `paystream view` and `paystream view rebuild`: the payment view (a topology on the
//! `topology/` runtime over the payment topics, publishing `payments.view` and
//! `payments.timeline`), and its rebuild from the beginning.
//!
//! `paystream view` runs the application named by the pointer in the state directory
//! (`paystream-view` before any rebuild), or by `--application-id`, until SIGTERM. It rereads the
//! pointer every [`POINTER_POLL_MS`]; when a rebuild has swapped itself in, it stops the old
//! application and starts the new one, which carries on from the rebuild's offsets and state.
//!
//! `paystream view rebuild` replays every input from the beginning under a fresh application id
//! (its own consumer group, changelog and state directory), writing the same views the live one
//! writes; once it has caught up with the inputs' end offsets at its start it stops and writes
//! its id into the pointer (the swap), and the running `paystream view` moves over to it. The
//! old application's group, changelog and state are left for a rollback: write the old id back
//! into the pointer. See `processors/src/view/rebuild.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use paystream_processors::view::codec::RegistryViewCodec;
use paystream_processors::view::metrics::ViewMetrics;
use paystream_processors::view::processor::{self, ViewRecord, ViewTopics};
use paystream_processors::view::rebuild;
use paystream_schemas::EventCodec;
use paystream_stack::StackSettings;
use paystream_topology::{Streams, Topology};

use crate::streams::{config, Common};
use uuid::Uuid;

/// How often the live view rereads the pointer to its application id.
pub const POINTER_POLL_MS: u64 = 5_000;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, env = "PAYSTREAM_VIEW_METRICS_LISTEN", default_value = "127.0.0.1:9105")]
    metrics_listen: SocketAddr,
    /// Run this application id instead of the one the pointer in the state directory names
    /// (with several machines, the id a rebuild printed, rolled out as configuration).
    #[arg(long, env = "PAYSTREAM_VIEW_APPLICATION_ID")]
    application_id: Option<String>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Replay every input from the beginning into a fresh view, then swap it in.
    Rebuild(RebuildArgs),
}

#[derive(clap::Args)]
struct RebuildArgs {
    #[command(flatten)]
    common: Common,
    /// Give up when the replay makes no progress for this long (the old view stays live).
    #[arg(long, env = "PAYSTREAM_VIEW_REBUILD_STALL_TIMEOUT_S", default_value_t = 120)]
    stall_timeout_s: u64,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Rebuild(rebuild)) => run_rebuild(settings, rebuild).await,
        None => run_live(settings, &args.common, args.application_id.as_deref(), args.metrics_listen).await,
    }
}

fn topology(settings: &StackSettings, metrics: ViewMetrics) -> anyhow::Result<Topology<Uuid, ViewRecord>> {
    let codec = EventCodec::new(&settings.schema_registry_url).context("creating the registry codec")?;
    let codec = RegistryViewCodec::new(codec, tokio::runtime::Handle::current());
    Ok(processor::topology(codec, metrics, &ViewTopics::default())?)
}

/// The application id to run: the flag's, else the pointer's.
fn live_application_id(state_dir: &Path, fixed: Option<&str>) -> anyhow::Result<String> {
    match fixed {
        Some(id) => Ok(id.to_owned()),
        None => rebuild::current_application_id(state_dir).context("reading the view's pointer"),
    }
}

/// Why one generation of the live view ended.
enum Ended {
    Shutdown,
    Swapped(String),
}

async fn run_live(
    settings: &StackSettings,
    common: &Common,
    fixed: Option<&str>,
    metrics_listen: SocketAddr,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = ViewMetrics::new(&registry)?;
    let mut application_id = live_application_id(&common.state_dir, fixed)?;
    let shutdown = crate::shutdown::token();
    loop {
        tracing::info!(%application_id, "running the payment view");
        let topology = topology(settings, metrics.clone())?;
        let config = config(settings, &application_id, common);
        let streams = tokio::task::spawn_blocking(move || Streams::start(topology, config)).await??;
        let registries = vec![streams.metrics().registry().clone(), registry.clone()];
        let metrics_server = crate::metrics_server::spawn_many(metrics_listen, registries).await?;
        let ended = watch(&streams, &common.state_dir, fixed, &application_id, &shutdown).await;
        metrics_server.abort();
        // The listener is dropped with its task: wait for that before binding the port again.
        let _ = metrics_server.await;
        tokio::task::spawn_blocking(move || streams.close()).await??;
        match ended? {
            Ended::Shutdown => return Ok(()),
            Ended::Swapped(next) => {
                tracing::info!(from = %application_id, to = %next, "a rebuilt view was swapped in; moving over");
                application_id = next;
            }
        }
    }
}

/// Waits for a shutdown, the stream thread's end (an error), or a new id in the pointer.
async fn watch(
    streams: &Streams,
    state_dir: &Path,
    fixed: Option<&str>,
    current: &str,
    shutdown: &paystream_topology::ShutdownHandle,
) -> anyhow::Result<Ended> {
    let mut poll = tokio::time::interval(Duration::from_millis(POINTER_POLL_MS));
    loop {
        tokio::select! {
            () = shutdown.requested() => return Ok(Ended::Shutdown),
            _ = poll.tick() => {
                if streams.is_finished() {
                    anyhow::bail!("the payment view's stream thread stopped");
                }
                let next = live_application_id(state_dir, fixed)?;
                if next != current {
                    return Ok(Ended::Swapped(next));
                }
            }
        }
    }
}

async fn run_rebuild(settings: &StackSettings, args: RebuildArgs) -> anyhow::Result<()> {
    let live = rebuild::current_application_id(&args.common.state_dir)?;
    let unix_seconds =
        SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let application_id = rebuild::fresh_application_id(unix_seconds);
    let topology = topology(settings, ViewMetrics::new(&prometheus::Registry::new())?)?;
    let config = config(settings, &application_id, &args.common);
    let topics = ViewTopics::default();
    let inputs: Vec<&str> = topics.inputs().iter().map(|(_, topic)| *topic).collect();
    let rebuilt =
        rebuild::rebuild(topology, config, &inputs, Duration::from_secs(args.stall_timeout_s)).await?;
    rebuild::swap_in(&args.common.state_dir, &rebuilt.application_id)?;
    tracing::info!(
        from = %live,
        to = %rebuilt.application_id,
        records = rebuilt.records,
        elapsed_ms = u64::try_from(rebuilt.elapsed.as_millis()).unwrap_or(u64::MAX),
        "the rebuilt view is caught up and swapped in; a running `paystream view` moves over within {POINTER_POLL_MS} ms. \
         The old application's group, changelog ({live}-{}-changelog) and state are left for a rollback",
        processor::STORE
    );
    println!("{}", rebuilt.application_id);
    Ok(())
}
