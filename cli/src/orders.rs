//! `paystream orders`: seed 004's Kafka door. `run` is the `pay.order` inbox consumer (until
//! SIGTERM); `pay` sends one command as an orders service would; `show` prints an order's inbox
//! row (its outcome and whether it was answered).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use paystream_processors::orders::client::OrdersClient;
use paystream_processors::orders::{self, OrdersConfig, OrdersMetrics};
use paystream_schemas::events::{topics, PayOrder};
use paystream_schemas::{time, Amount, EventCodec};
use paystream_stack::{postgres, StackSettings};
use uuid::Uuid;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The inbox consumer: every PayOrder on pay.order, once, into the wallet database.
    Run {
        /// Where to serve Prometheus metrics (`/metrics`).
        #[arg(long, env = "PAYSTREAM_ORDERS_METRICS_LISTEN", default_value = "127.0.0.1:9109")]
        metrics_listen: SocketAddr,
    },
    /// Send one PayOrder command (as the orders service would) and print its order and payment ids.
    Pay {
        /// The paying user.
        #[arg(long)]
        user: Uuid,
        /// The amount, e.g. 12.50.
        #[arg(long)]
        amount: Amount,
        /// The wallet's currency.
        #[arg(long, default_value = "RUB")]
        currency: String,
        /// The wallet (default: the user's wallet in the currency).
        #[arg(long)]
        wallet: Option<Uuid>,
        /// The order's id (default: a new one). The same id again is the same order.
        #[arg(long)]
        order: Option<String>,
        #[arg(long, default_value = "an order paid through pay.order")]
        description: String,
    },
    /// Print an order's inbox row.
    Show {
        /// The order's id.
        #[arg(long)]
        order: String,
    },
}

/// How long `show` waits for the wallet database.
const DB_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(settings: &StackSettings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { metrics_listen } => consume(settings, metrics_listen).await,
        Command::Pay { user, amount, currency, wallet, order, description } => {
            let order_id = order.unwrap_or_else(|| format!("order-{}", Uuid::new_v4()));
            let command = PayOrder {
                command_id: Uuid::new_v4(),
                order_id: order_id.clone(),
                user_id: user,
                wallet_id: wallet,
                amount: amount.into(),
                currency,
                description,
                ordered_at: time::now(),
            };
            let codec = EventCodec::new(&settings.schema_registry_url)?;
            let client = OrdersClient::new(&settings.kafka_bootstrap, codec)?;
            client.send(topics::PAY_ORDER, &command).await.context("sending the command")?;
            println!("order {order_id}");
            println!("command {}", command.command_id);
            println!("payment {}", PayOrder::payment_id_for(&order_id));
            Ok(())
        }
        Command::Show { order } => show(settings, &order).await,
    }
}

async fn consume(settings: &StackSettings, metrics_listen: SocketAddr) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = OrdersMetrics::register(&registry)?;
    let metrics_server = crate::metrics_server::spawn(metrics_listen, registry).await?;
    let config = OrdersConfig::new(settings, metrics);
    tracing::info!(topic = %config.commands_topic, group = %config.group_id, "handling pay.order commands");
    let result = orders::run(config, crate::shutdown::token()).await;
    metrics_server.abort();
    result?;
    tracing::info!("pay.order inbox stopped");
    Ok(())
}

async fn show(settings: &StackSettings, order_id: &str) -> anyhow::Result<()> {
    let db = postgres::connect(&settings.wallet_db_url, DB_TIMEOUT).await?;
    type Row = (Uuid, Uuid, String, Option<String>, Option<String>, Option<String>, Option<String>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT i.command_id, i.payment_id, i.outcome, i.failure_reason, i.failure_detail, i.answer, t.status
         FROM order_inbox i LEFT JOIN wallet_transactions t ON t.payment_id = i.payment_id
         WHERE i.order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&db)
    .await?;
    let Some((command_id, payment_id, outcome, reason, detail, answer, status)) = row else {
        anyhow::bail!("no command for order {order_id} was recorded");
    };
    println!("order    {order_id}");
    println!("command  {command_id}");
    println!("payment  {payment_id} ({})", status.as_deref().unwrap_or("not opened"));
    println!(
        "outcome  {outcome}{}",
        reason.map(|r| format!(" {r}: {}", detail.unwrap_or_default())).unwrap_or_default()
    );
    println!("answer   {}", answer.as_deref().unwrap_or("not yet (the payment is in flight)"));
    Ok(())
}
