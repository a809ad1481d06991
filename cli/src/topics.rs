//! `paystream topics`: create the payment flow's topics and the CDC topics (idempotent).

use std::time::Duration;

use paystream_stack::kafka::{self, DEFAULT_PARTITIONS};
use paystream_stack::StackSettings;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create every topic of the payment flow and of the wallet CDC that does not exist yet.
    Create {
        /// Partitions of each co-partitioned topic.
        #[arg(long, default_value_t = DEFAULT_PARTITIONS)]
        partitions: i32,
        /// How long to wait for the broker.
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
    },
}

pub async fn run(settings: &StackSettings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create { partitions, timeout_s } => {
            kafka::wait_until_ready(&settings.kafka_bootstrap, Duration::from_secs(timeout_s)).await?;
            let mut topics = kafka::payment_topics(partitions);
            topics.extend(kafka::cdc_topics(partitions));
            kafka::ensure_topics(&settings.kafka_bootstrap, &topics).await?;
            for topic in &topics {
                tracing::info!(topic = %topic.name, partitions = topic.partitions, "topic ready");
            }
            Ok(())
        }
    }
}
