//! `paystream migrate`: bring every database (wallet, ledger, the read database `query`) to the
//! schema this binary was built with.

use std::time::Duration;

use paystream_stack::postgres;
use paystream_stack::StackSettings;

#[derive(clap::Args)]
pub struct Args {
    /// How long to wait for each database to accept connections.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout_s);
    let wallet = postgres::connect(&settings.wallet_db_url, timeout).await?;
    postgres::migrate_wallet(&wallet).await?;
    tracing::info!(db = "wallet", migrations = postgres::WALLET_MIGRATIONS.iter().count(), "migrated");
    let ledger = postgres::connect(&settings.ledger_db_url, timeout).await?;
    postgres::migrate_ledger(&ledger).await?;
    tracing::info!(db = "ledger", migrations = postgres::LEDGER_MIGRATIONS.iter().count(), "migrated");
    let query = postgres::connect(&settings.query_db_url, timeout).await?;
    postgres::migrate_query(&query).await?;
    tracing::info!(db = "query", migrations = postgres::QUERY_MIGRATIONS.iter().count(), "migrated");
    Ok(())
}
