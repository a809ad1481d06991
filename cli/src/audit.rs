//! `paystream audit`: checks DESIGN.md's invariants at a quiet moment and exits non-zero, naming
//! the offending ids, when one does not hold. The rules are in `audit/src/checks.rs`.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use paystream_audit::{Rules, Scope, Sources};
use paystream_stack::StackSettings;
use uuid::Uuid;

/// Budget for the wallet database to answer.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Only these wallets (repeat the flag); every wallet when omitted.
    #[arg(long = "wallet")]
    wallets: Vec<Uuid>,
    /// Only wallets created at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// The provider whose ledger is compared with the wallets (`GET {url}/v1/charges/{id}`).
    #[arg(long, env = "PAYSTREAM_PROVIDER_URL", default_value = "http://127.0.0.1:8090")]
    provider_url: String,
    /// Skip the comparison with the provider's ledger (e.g. it restarted and forgot).
    #[arg(long)]
    no_provider: bool,
    /// How late a payment timeout may fire after its due time.
    #[arg(long, default_value_t = paystream_audit::checks::DEFAULT_TIMER_TOLERANCE.as_millis() as u64)]
    timer_tolerance_ms: u64,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let db = paystream_stack::postgres::connect(&settings.wallet_db_url, DB_CONNECT_TIMEOUT)
        .await
        .context("the wallet database")?;
    let provider_url = (!args.no_provider).then_some(args.provider_url);
    let sources = Sources::new(settings, provider_url);
    let scope = Scope { wallets: (!args.wallets.is_empty()).then_some(args.wallets), since: args.since };
    let rules = Rules {
        timer_tolerance: Duration::from_millis(args.timer_tolerance_ms),
        check_provider: sources.provider_url.is_some(),
    };
    let findings = paystream_audit::audit(&db, &sources, &scope, &rules).await?;
    print!("{}", paystream_audit::report::render(&findings));
    if !findings.clean() {
        std::process::exit(1);
    }
    Ok(())
}
