//! `paystream pay`: a person pays from a wallet by hand, and with `--follow` watches the payment
//! move until it is terminal.
//!
//! The payment is `POST /api/v1/payment` (seed 000's body; a token minted for `--user` in dev
//! mode). `--follow` polls the read side, `GET /api/v1/payments/{paymentId}` (the payment view),
//! and prints each state it sees with its time, until a terminal state (COMPLETED, FAILED,
//! FAILED_TIMEOUT, CANCELED, RECONCILED), then a one-line summary. Where the read side does not
//! know the payment (no view running, or it lags), the wallet's balance (`GET
//! /api/v1/accounts/{walletId}`) tells the reservation and its settlement: the payment is
//! settled once `reserved` is back to what it was before it, completed if `available` stayed
//! down, released otherwise. On a terminal the current state is a spinner's message and the
//! changes are printed above it (indicatif); otherwise each change is one plain line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::client::{self, ApiArgs, Client};
use crate::wallet::Balance;

/// The pause between two looks at the payment.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the spinner moves.
const SPINNER_TICK: Duration = Duration::from_millis(100);
/// The states after which nothing changes the payment's result.
pub const TERMINAL: &[&str] = &["COMPLETED", "FAILED", "FAILED_TIMEOUT", "CANCELED", "RECONCILED"];

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
    /// The payer (the token's subject).
    #[arg(long)]
    user: Uuid,
    /// The wallet paid from (the user's own).
    #[arg(long)]
    wallet: Uuid,
    /// A decimal with at most two places, e.g. 12.50.
    #[arg(long)]
    amount: String,
    /// One of purchase, transfer, mobile, utilities, subscription, other.
    #[arg(long, default_value = "purchase")]
    kind: String,
    #[arg(long, default_value = "paid by hand")]
    description: String,
    /// The payment's id (a new one if omitted; the same id again is the same payment).
    #[arg(long)]
    payment_id: Option<Uuid>,
    /// Watch the payment until it is terminal.
    #[arg(long)]
    follow: bool,
    /// How long `--follow` waits for a terminal state.
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let amount = client::amount(&args.amount)?;
    let client = Client::new(&args.api)?;
    let token = client.token(args.user, false)?;
    let before = balance(&client, &token, args.wallet).await?;
    let payment_id = args.payment_id.unwrap_or_else(Uuid::new_v4);
    let now = chrono::Utc::now().format("%Y%m%d-%H:%M:%S:%6f");
    let body = format!(
        r#"{{"paymentId": "{payment_id}", "wallet": "{}", "amount": {amount}, "kind": {}, "description": {}, "timestamp": "{now}"}}"#,
        args.wallet,
        serde_json::to_string(&args.kind)?,
        serde_json::to_string(&args.description)?,
    );
    let started = Instant::now();
    let accepted =
        client.call(Method::POST, "/api/v1/payment", &token, Some(body), None).await?.ok("paying")?;
    println!(
        "payment {payment_id} accepted at {}: {amount} {} from wallet {}",
        accepted.body["timestamp"].as_str().unwrap_or("?"),
        before.currency,
        args.wallet
    );
    if !args.follow {
        return Ok(());
    }
    let display = Display::new(std::io::stdout().is_terminal());
    let ending = follow(&client, &token, &args, payment_id, &before, &display).await;
    display.finish();
    let (status, reason) = ending?;
    let reason = reason.map(|r| format!(": {r}")).unwrap_or_default();
    println!(
        "payment {payment_id} {status} after {:.1} s ({amount} {}){reason}",
        started.elapsed().as_secs_f64(),
        before.currency
    );
    Ok(())
}

/// Polls until a terminal state; returns it and its reason.
async fn follow(
    client: &Client,
    token: &str,
    args: &Args,
    payment_id: Uuid,
    before: &Balance,
    display: &Display,
) -> anyhow::Result<(String, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let (available_before, reserved_before) = (money(&before.available)?, money(&before.reserved)?);
    let mut last = String::new();
    loop {
        let view =
            client.call(Method::GET, &format!("/api/v1/payments/{payment_id}"), token, None, None).await?;
        let (status, reason) = if view.status == StatusCode::OK {
            let status = view.body["status"].as_str().unwrap_or("UNKNOWN").to_owned();
            (status, view.body["reason"].as_str().map(str::to_owned))
        } else {
            // The read side does not know it (yet): the wallet's balance tells what it can.
            let now = balance(client, token, args.wallet).await?;
            let (available, reserved) = (money(&now.available)?, money(&now.reserved)?);
            let status = match (reserved > reserved_before, available < available_before) {
                (true, _) => format!("RESERVED (wallet: available {available}, reserved {reserved})"),
                (false, true) => "COMPLETED (from the wallet's balance)".to_owned(),
                (false, false) => "RELEASED (from the wallet's balance: failed or cancelled)".to_owned(),
            };
            (status, None)
        };
        if status != last {
            display.change(&status, reason.as_deref());
            last.clone_from(&status);
        }
        let word = status.split_whitespace().next().unwrap_or_default();
        if TERMINAL.contains(&word) || word == "RELEASED" {
            return Ok((status, reason));
        }
        if Instant::now() > deadline {
            bail!("payment {payment_id} is still {status} after {} s (--timeout-s)", args.timeout_s);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn balance(client: &Client, token: &str, wallet: Uuid) -> anyhow::Result<Balance> {
    let answer = client
        .call(Method::GET, &format!("/api/v1/accounts/{wallet}"), token, None, None)
        .await?
        .ok("reading the wallet")?;
    serde_json::from_str(&answer.text).context("reading the wallet's balance")
}

fn money(raw: &serde_json::value::RawValue) -> anyhow::Result<Decimal> {
    Decimal::from_str_exact(raw.get()).with_context(|| format!("amount {}", raw.get()))
}

/// A spinner on a terminal, plain lines otherwise.
enum Display {
    Spinner(ProgressBar, Instant),
    Plain(Instant),
}

impl Display {
    fn new(terminal: bool) -> Self {
        if !terminal {
            return Display::Plain(Instant::now());
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(SPINNER_TICK);
        Display::Spinner(bar, Instant::now())
    }

    /// Prints a state change with its time.
    fn change(&self, status: &str, reason: Option<&str>) {
        let at = chrono::Utc::now().format("%H:%M:%S%.3f");
        let reason = reason.map(|r| format!("  ({r})")).unwrap_or_default();
        match self {
            Display::Spinner(bar, started) => {
                bar.println(format!("{at}  +{:.1} s  {status}{reason}", started.elapsed().as_secs_f64()));
                bar.set_message(status.to_owned());
            }
            Display::Plain(started) => {
                println!("{at}  +{:.1} s  {status}{reason}", started.elapsed().as_secs_f64())
            }
        }
    }

    fn finish(&self) {
        if let Display::Spinner(bar, _) = self {
            bar.finish_and_clear();
        }
    }
}

/// `paystream cancel`: the owner cancels a payment (`POST /api/v1/payments/{paymentId}/cancel`)
/// and, with `--follow`, reads the cancel's `Location` until it is decided.
#[derive(clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The payment's owner.
    #[arg(long)]
    user: Uuid,
    #[arg(long)]
    payment_id: Uuid,
    /// Wait until the cancel is decided (CANCELED or REFUSED).
    #[arg(long)]
    follow: bool,
    /// How long `--follow` waits.
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.api)?;
    let token = client.token(args.user, false)?;
    let path = format!("/api/v1/payments/{}/cancel", args.payment_id);
    let answer = client.call(Method::POST, &path, &token, None, None).await?;
    let answer = answer.ok("cancelling")?;
    println!(
        "{}: {}",
        answer.body["status"].as_str().unwrap_or("?"),
        answer.body["detail"].as_str().unwrap_or("")
    );
    let Some(location) = answer.location.filter(|_| args.follow && answer.status == StatusCode::ACCEPTED)
    else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    loop {
        let state =
            client.call(Method::GET, &location, &token, None, None).await?.ok("reading the cancel")?;
        let status = state.body["status"].as_str().unwrap_or("?");
        if status != "PENDING" {
            println!(
                "{status} (payment {}): {}",
                state.body["paymentStatus"].as_str().unwrap_or("?"),
                state.body["detail"].as_str().unwrap_or("")
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the cancel of {} is still pending after {} s (--timeout-s)",
                args.payment_id,
                args.timeout_s
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
