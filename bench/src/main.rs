//! `paystream-bench`: benchmarks of paystream against equivalent baselines, one
//! subcommand each. `main` only parses the command line, sets up logging and dispatches.

use clap::{Parser, Subcommand};
use paystream_bench::ingest;

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
    /// Remove what interrupted `ingest` runs left in the wallet database.
    Clean,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The API logs every accepted payment at info; at thousands a second that would be a
    // benchmark of the terminal. The bench's own progress is at info.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,paystream_bench=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Ingest(args) => ingest::run(args).await,
        Command::Clean => ingest::clean().await,
    }
}
