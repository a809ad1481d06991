//! `paystream`: one binary, a subcommand per process or operator task.
//!
//! `main` only parses the command line, sets up logging and traces ([`telemetry`]) and dispatches; each
//! subcommand's work lives in its own module (and, for processes, in its own crate).

mod api;
mod audit;
mod chaos;
mod client;
mod connect;
mod dispatch;
mod lag_exporter;
mod load;
mod metrics_server;
mod migrate;
mod orders;
mod pay;
mod provider_sim;
mod reservations;
mod saga;
mod schemas;
mod settle;
mod shutdown;
mod status;
mod streams;
mod telemetry;
mod token;
mod topics;
mod view;
mod wallet;

use clap::{Parser, Subcommand};
use paystream_stack::StackSettings;

#[derive(Parser)]
#[command(name = "paystream", version, about = "Payment processing on Kafka, exactly once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The HTTP API: accounts and payment ingest.
    Api(api::Args),
    /// Apply the embedded migrations of the wallet and ledger databases.
    Migrate(migrate::Args),
    /// Kafka topics of the payment flow.
    #[command(subcommand)]
    Topics(topics::Command),
    /// Seed 004's Kafka door: the pay.order inbox consumer (`run`), a command by hand (`pay`), an order's row (`show`).
    #[command(subcommand)]
    Orders(orders::Command),
    /// Apply payment results to wallets (consumes payments.results).
    Settle(settle::Args),
    /// The payment saga: initiated + callbacks + outcomes + timers → exactly one PaymentResult.
    Saga(saga::SagaArgs),
    /// Durable timers: fire TimerScheduled events back as TimerFired when due.
    Timers(saga::TimersArgs),
    /// Charge the provider for every ChargeCommand (consumes payments.provider-commands).
    Dispatch(dispatch::Args),
    /// A simulated payment provider: idempotent charges, delayed signed callbacks, faults.
    ProviderSim(paystream_provider_sim::Args),
    /// Check the invariants (money conserved, one result each, provider ⇔ wallet) at a quiet moment.
    Audit(audit::Args),
    /// A load through the whole flow while processes and the stack are broken on purpose, then the audit.
    Chaos(chaos::Args),
    /// Stranded reservations: list them (`stranded`), resolve them through the saga (`nudge`).
    #[command(subcommand)]
    Reservations(reservations::Command),
    /// Mint a bearer token for calling the API by hand (HS256 secret required).
    Token(token::Args),
    /// Pay from a wallet by hand through the API; `--follow` prints each state change until terminal.
    Pay(pay::Args),
    /// Cancel one of a user's payments through the API; `--follow` waits until it is decided.
    Cancel(pay::CancelArgs),
    /// A wallet by hand through the API: `create`, `deposit` (as an operator), `show`.
    #[command(subcommand)]
    Wallet(wallet::Command),
    /// Benchmark: payments at a rate through the running pipeline, each followed to settlement.
    Load(load::Args),
    /// Avro contracts in the Schema Registry.
    #[command(subcommand)]
    Schemas(schemas::Command),
    /// Debezium connectors in Kafka Connect.
    #[command(subcommand)]
    Connect(connect::Command),
    /// Consumer lag of every group, connector states, dead letters, payments by state: Prometheus gauges.
    LagExporter(lag_exporter::Args),
    /// One screen for an operator: components, lag per group, payments by state, dead letters, stuck payments.
    Status(status::Args),
    /// The payment view: payment topics → PaymentView (payments.view) and timeline; `rebuild` replays it.
    View(view::Args),
}

impl Command {
    /// The name a long-running process exports its spans under (`paystream-<name>`); `None` for
    /// the operator's commands, which export nothing.
    fn traced_service(&self) -> Option<&'static str> {
        match self {
            Command::Api(_) => Some("api"),
            Command::Settle(_) => Some("settle"),
            Command::Saga(_) => Some("saga"),
            Command::Timers(_) => Some("timers"),
            Command::Dispatch(_) => Some("dispatch"),
            Command::ProviderSim(_) => Some("provider-sim"),
            Command::View(_) => Some("view"),
            Command::Orders(orders::Command::Run { .. }) => Some("orders"),
            Command::LagExporter(_) => Some("lag-exporter"),
            _ => None,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.command.traced_service())?;
    let settings = StackSettings::from_env();
    let result = run(cli.command, settings).await;
    telemetry.shutdown();
    result
}

async fn run(command: Command, settings: StackSettings) -> anyhow::Result<()> {
    match command {
        Command::Api(args) => api::run(&settings, args).await,
        Command::Migrate(args) => migrate::run(&settings, args).await,
        Command::Topics(command) => topics::run(&settings, command).await,
        Command::Orders(command) => orders::run(&settings, command).await,
        Command::Settle(args) => settle::run(&settings, args).await,
        Command::Saga(args) => saga::run_saga(&settings, args).await,
        Command::Timers(args) => saga::run_timers(&settings, args).await,
        Command::Dispatch(args) => dispatch::run(&settings, args).await,
        Command::ProviderSim(args) => provider_sim::run(args).await,
        Command::Reservations(command) => reservations::run(&settings, command).await,
        Command::Token(args) => token::run(args),
        Command::Pay(args) => pay::run(args).await,
        Command::Cancel(args) => pay::cancel(args).await,
        Command::Wallet(command) => wallet::run(command).await,
        Command::Load(args) => load::run(&settings, args).await,
        Command::Audit(args) => audit::run(&settings, args).await,
        Command::Chaos(args) => chaos::run(&settings, args).await,
        Command::Schemas(command) => schemas::run(&settings, command).await,
        Command::Connect(command) => connect::run(&settings, command).await,
        Command::LagExporter(args) => lag_exporter::run(&settings, args).await,
        Command::Status(args) => status::run(&settings, args).await,
        Command::View(args) => view::run(&settings, args).await,
    }
}
