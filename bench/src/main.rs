//! `paystream-bench`: benchmarks of paystream against equivalent baselines, one
//! subcommand each. `main` only parses the command line, sets up logging and dispatches.

use anyhow::Context;
use clap::{Parser, Subcommand};
use paystream_bench::join::{harness, peer};
use paystream_bench::{ingest, query, restore};

#[derive(Parser)]
#[command(
    name = "paystream-bench",
    version,
    about = "paystream benchmarks against baselines on the same machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /api/v1/payment against pgbench running the same transaction, in one run.
    Ingest(ingest::Args),
    /// The read side's GET by id and search against pgbench running the same SQL on the read database.
    Query(query::Args),
    /// Remove what interrupted `ingest` runs left in the wallet database.
    Clean,
    /// One stateful keyed join as raw rdkafka, paystream's runtime, Kafka Streams and Quix Streams.
    Join(harness::Args),
    /// Restore a store from its changelog with paystream's runtime, and restart from a checkpoint.
    Restore(restore::Args),
    /// A Rust peer of `join`, as the harness starts it (environment: bench/peers/WORKLOAD.md).
    #[command(hide = true)]
    JoinPeer {
        #[arg(value_enum)]
        peer: peer::RustPeer,
    },
}

fn main() -> anyhow::Result<()> {
    // The API logs every accepted payment at info; at thousands a second that would be a
    // benchmark of the terminal. The bench's own progress is at info.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,paystream_bench=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = match Cli::parse().command {
        // Before any tokio runtime: a peer needs none (see `join::peer`).
        Command::JoinPeer { peer } => return peer::main(peer),
        command => command,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("building the runtime")?;
    runtime.block_on(async {
        match command {
            Command::Ingest(args) => ingest::run(args).await,
            Command::Query(args) => query::run(args).await,
            Command::Clean => ingest::clean().await,
            Command::Join(args) => harness::run(args).await,
            Command::Restore(args) => restore::run(args).await,
            Command::JoinPeer { .. } => unreachable!("dispatched above"),
        }
    })
}
