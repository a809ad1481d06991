//! `paystream wallet create|deposit|show`: the rest of a manual session with `paystream pay`,
//! through the API (`POST /api/v1/accounts`, `POST /api/v1/accounts/{walletId}/deposits` with an
//! operator's token, `GET /api/v1/accounts[/{walletId}]`).

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::client::{self, ApiArgs, Client};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Creates the user's wallet in a currency (or names the one the user has); prints its id.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// The user (the token's subject).
        #[arg(long)]
        user: Uuid,
        /// ISO 4217 code.
        #[arg(long, default_value = "RUB")]
        currency: String,
        /// The user's name.
        #[arg(long, default_value = "Test User")]
        name: String,
    },
    /// Deposits into a wallet, as an operator (the same --key again adds nothing).
    Deposit {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        wallet: Uuid,
        /// A decimal with at most two places, e.g. 100.00.
        #[arg(long)]
        amount: String,
        /// The deposit's idempotency key (a new one if omitted).
        #[arg(long)]
        key: Option<String>,
    },
    /// Shows the user's wallets, or one of them.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        user: Uuid,
        #[arg(long)]
        wallet: Option<Uuid>,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create { api, user, currency, name } => {
            let client = Client::new(&api)?;
            let token = client.token(user, false)?;
            let body = serde_json::json!({"name": name, "currency": currency}).to_string();
            let answer = client.call(Method::POST, "/api/v1/accounts", &token, Some(body), None).await?;
            if answer.status == StatusCode::CONFLICT && answer.body["walletId"].is_string() {
                println!("{}", answer.body["walletId"].as_str().unwrap_or_default());
                eprintln!("the user already has a {currency} wallet");
                return Ok(());
            }
            let wallet = answer.ok("creating the wallet")?;
            println!("{}", wallet.body["walletId"].as_str().context("the answer has no walletId")?);
            Ok(())
        }
        Command::Deposit { api, wallet, amount, key } => {
            let amount = client::amount(&amount)?;
            let client = Client::new(&api)?;
            let token = client.token(Uuid::new_v4(), true)?;
            let key = key.unwrap_or_else(|| Uuid::new_v4().to_string());
            let path = format!("/api/v1/accounts/{wallet}/deposits");
            let body = format!(r#"{{"amount": {amount}}}"#);
            let answer =
                client.call(Method::POST, &path, &token, Some(body), Some(&key)).await?.ok("depositing")?;
            print_balance(&serde_json::from_str(&answer.text).context("reading the balance")?);
            Ok(())
        }
        Command::Show { api, user, wallet } => {
            let client = Client::new(&api)?;
            let token = client.token(user, false)?;
            let path = match wallet {
                Some(wallet) => format!("/api/v1/accounts/{wallet}"),
                None => "/api/v1/accounts".to_owned(),
            };
            let answer = client.call(Method::GET, &path, &token, None, None).await?.ok("reading wallets")?;
            match answer.body.is_array() {
                true => serde_json::from_str::<Vec<Balance>>(&answer.text)
                    .context("reading the wallets")?
                    .iter()
                    .for_each(print_balance),
                false => print_balance(&serde_json::from_str(&answer.text).context("reading the balance")?),
            }
            Ok(())
        }
    }
}

/// A wallet's balance as the API prints it: the amounts exactly as written (two places).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    pub wallet_id: Uuid,
    pub currency: String,
    pub available: Box<RawValue>,
    pub reserved: Box<RawValue>,
}

/// One line per wallet: id, currency, available, reserved.
fn print_balance(wallet: &Balance) {
    println!(
        "{}  {}  available {}  reserved {}",
        wallet.wallet_id,
        wallet.currency,
        wallet.available.get(),
        wallet.reserved.get()
    );
}
