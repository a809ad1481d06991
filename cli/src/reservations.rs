//! `paystream reservations`: stranded reservations, listed and resolved through the saga.
//!
//! `stranded` lists the PENDING payments that settlement's gauge
//! `paystream_wallet_stranded_reservations` counts (the queries are
//! `paystream_processors::settlement::stranded`'s). `nudge` resolves them the way every payment
//! is resolved: it publishes the payment's `PaymentInitiated` again through the wallet outbox
//! (`paystream_api::outbox`), Debezium delivers it to `payments.initiated`, and the saga either
//! starts the payment (its event was lost), ignores it (still in flight), or forwards its one
//! result again (the result was lost), which settlement applies once. No balance is edited here.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use chrono::SecondsFormat;
use paystream_api::outbox::{self, NudgeError};
use paystream_processors::settlement::stranded::{
    self, Scope, StrandedReservation, LIST_ROWS_MAX, STRANDED_AFTER_MS,
};
use paystream_schemas::events::topics;
use paystream_schemas::EventCodec;
use paystream_stack::{postgres, StackSettings};
use uuid::Uuid;

/// How long the command waits for the wallet database.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Subcommand)]
pub enum Command {
    /// List PENDING payments older than the payment timeout + verification margin + slack
    /// (what `paystream_wallet_stranded_reservations` counts), oldest first.
    Stranded(StrandedArgs),
    /// Publish a payment's PaymentInitiated again through the outbox, so the saga resolves it
    /// (starts it, ignores it while in flight, or forwards its one result again).
    Nudge(NudgeArgs),
}

#[derive(clap::Args)]
pub struct StrandedArgs {
    /// Only payments accepted longer ago than this, in seconds (default: the gauge's threshold).
    #[arg(long)]
    older_than_s: Option<u64>,
    /// Only these wallets (repeatable); every wallet by default.
    #[arg(long = "wallet")]
    wallets: Vec<Uuid>,
}

#[derive(clap::Args)]
pub struct NudgeArgs {
    /// The payment to nudge.
    #[arg(required_unless_present = "all_stranded", conflicts_with = "all_stranded")]
    payment_id: Option<Uuid>,
    /// Nudge every stranded reservation (as `stranded` lists them, at most 1000 per run).
    #[arg(long)]
    all_stranded: bool,
    /// With `--all-stranded`: only payments accepted longer ago than this, in seconds.
    #[arg(long, requires = "all_stranded")]
    older_than_s: Option<u64>,
}

fn older_than(older_than_s: Option<u64>) -> Duration {
    older_than_s.map_or(Duration::from_millis(STRANDED_AFTER_MS), Duration::from_secs)
}

pub async fn run(settings: &StackSettings, command: Command) -> anyhow::Result<()> {
    let db = postgres::connect(&settings.wallet_db_url, DB_CONNECT_TIMEOUT).await?;
    match command {
        Command::Stranded(args) => {
            let older_than = older_than(args.older_than_s);
            let scope = if args.wallets.is_empty() { Scope::All } else { Scope::Wallets(&args.wallets) };
            let found = stranded::list(&db, older_than, scope, LIST_ROWS_MAX).await.context("listing")?;
            print!("{}", table(&found, older_than));
            Ok(())
        }
        Command::Nudge(args) => {
            let codec = EventCodec::new(&settings.schema_registry_url)?;
            let payments = match args.payment_id {
                Some(payment_id) => vec![payment_id],
                None => {
                    let found =
                        stranded::list(&db, older_than(args.older_than_s), Scope::All, LIST_ROWS_MAX).await?;
                    found.into_iter().map(|s| s.payment_id).collect()
                }
            };
            nudge(&db, &codec, &payments, args.all_stranded).await
        }
    }
}

/// Nudges each payment; with `tolerate_settled` (the `--all-stranded` list may be stale), one
/// that settled in the meantime is skipped rather than an error.
async fn nudge(
    db: &sqlx::PgPool,
    codec: &EventCodec,
    payments: &[Uuid],
    tolerate_settled: bool,
) -> anyhow::Result<()> {
    let (mut nudged, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    for &payment_id in payments {
        match outbox::republish_payment_initiated(db, codec, payment_id, topics::PAYMENTS_INITIATED).await {
            Ok(event) => {
                nudged += 1;
                println!(
                    "nudged {payment_id}: PaymentInitiated {} ({} {} from wallet {}) is in the outbox",
                    event.event_id, event.amount, event.currency, event.wallet_id
                );
            }
            Err(error @ NudgeError::NotPending { .. }) if tolerate_settled => {
                skipped += 1;
                println!("skipped {payment_id}: {error}");
            }
            Err(error) if payments.len() == 1 => return Err(error.into()),
            Err(error) => {
                failed += 1;
                eprintln!("failed {payment_id}: {error}");
            }
        }
    }
    println!("{nudged} nudged, {skipped} skipped, {failed} failed; `paystream reservations stranded` shows what remains once the saga and settlement have run");
    anyhow::ensure!(failed == 0, "{failed} payments could not be nudged");
    Ok(())
}

/// The table `stranded` prints: paymentId, wallet, amount, accepted at, age; then a summary.
fn table(found: &[StrandedReservation], older_than: Duration) -> String {
    let mut out = String::new();
    let header = ["paymentId", "wallet", "amount", "accepted at (UTC)", "age"];
    let rows: Vec<[String; 5]> = found
        .iter()
        .map(|s| {
            [
                s.payment_id.to_string(),
                s.wallet_id.to_string(),
                format!("{} {}", s.amount, s.currency),
                s.accepted_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                age(s.age),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            // The amount is right-aligned, like every column of numbers.
            if i == 2 {
                let _ = write!(text, "{cell:>width$}  ");
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        text.trim_end().to_owned()
    };
    if !rows.is_empty() {
        let _ = writeln!(out, "{}", line(header));
        for row in &rows {
            let _ = writeln!(out, "{}", line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
        }
    }
    let limited = if found.len() as i64 >= LIST_ROWS_MAX {
        format!(" (the first {LIST_ROWS_MAX})")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{} stranded reservation(s){limited}: PENDING and accepted more than {} s ago",
        found.len(),
        older_than.as_secs()
    );
    if !found.is_empty() {
        let _ = writeln!(
            out,
            "resolve one with `paystream reservations nudge <paymentId>`, all with `--all-stranded`"
        );
    }
    out
}

/// `1h 02m 03s`, `4m 05s`, `6s`.
fn age(age: Duration) -> String {
    let s = age.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_durations() {
        assert_eq!(age(Duration::from_millis(6_900)), "6s");
        assert_eq!(age(Duration::from_secs(245)), "4m 05s");
        assert_eq!(age(Duration::from_secs(3_723)), "1h 02m 03s");
        assert_eq!(age(Duration::from_secs(90_000)), "25h 00m 00s");
    }

    #[test]
    fn the_table_has_a_row_per_reservation_and_a_summary() {
        let reservation = StrandedReservation {
            payment_id: Uuid::nil(),
            wallet_id: Uuid::max(),
            amount: paystream_schemas::Amount::from_minor(4_200).unwrap().to_decimal(),
            currency: "RUB".into(),
            accepted_at: chrono::DateTime::from_timestamp_millis(1_800_000_000_000).unwrap(),
            age: Duration::from_secs(600),
        };
        let text = table(&[reservation], Duration::from_secs(170));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().next(), Some("paymentId"), "{text}");
        assert!(lines[1].starts_with("00000000-0000-0000-0000-000000000000  ffffffff-"), "{text}");
        assert!(lines[1].contains("42.00 RUB") && lines[1].contains("2027-01-15T08:00:00.000Z"), "{text}");
        assert!(lines[1].ends_with("10m 00s"), "{text}");
        assert!(
            lines[2].starts_with("1 stranded reservation(s): PENDING and accepted more than 170 s ago"),
            "{text}"
        );
        assert_eq!(table(&[], Duration::from_secs(170)).lines().count(), 1, "no table, one summary line");
    }
}
