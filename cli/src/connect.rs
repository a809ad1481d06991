//! `paystream connect`: apply the connector definitions in `connect/` and report their state.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use paystream_stack::connect::{ConnectClient, ConnectorDefinition};
use paystream_stack::StackSettings;

/// How long a restarted connector may keep showing its old FAILED state.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create or update every connector defined in DIR, restart any part of it that had
    /// FAILED, then wait until each runs.
    Apply {
        #[arg(long, default_value = "connect")]
        dir: PathBuf,
        /// How long to wait for Connect and for each connector to reach RUNNING.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Print the state of every connector and its tasks; fails if any is not RUNNING.
    Status,
}

pub async fn run(settings: &StackSettings, command: Command) -> anyhow::Result<()> {
    let client = ConnectClient::new(&settings.connect_url)?;
    match command {
        Command::Apply { dir, timeout_s } => {
            let timeout = Duration::from_secs(timeout_s);
            client.wait_until_ready(timeout).await?;
            let definitions = ConnectorDefinition::load_dir(&dir)
                .with_context(|| format!("loading connectors from {}", dir.display()))?;
            for definition in &definitions {
                client.apply(definition).await?;
                if client.status(&definition.name).await.is_ok_and(|s| s.failure().is_some()) {
                    tracing::warn!(connector = %definition.name, "FAILED before this apply: restarting its failed parts once");
                    client.restart_failed(&definition.name, RESTART_TIMEOUT).await?;
                }
                let status = client.wait_until_running(&definition.name, timeout).await?;
                tracing::info!(connector = %status.name, tasks = status.tasks.len(), "running");
            }
            Ok(())
        }
        Command::Status => {
            let mut all_running = true;
            for name in client.list().await? {
                let status = client.status(&name).await?;
                let tasks: Vec<_> = status.tasks.iter().map(|t| format!("{}:{}", t.id, t.state)).collect();
                println!("{:<24} {:<10} tasks {}", status.name, status.connector.state, tasks.join(" "));
                all_running &= status.is_running();
            }
            anyhow::ensure!(all_running, "not every connector is RUNNING");
            Ok(())
        }
    }
}
