//! `paystream schemas`: check the contracts in `schemas/avro/` against the registry, and
//! register them.
//!
//! `check` is what CI and `dev/up` run before `register`: a contract change that the
//! subject's compatibility rule refuses fails here, with the registry's reasons, before
//! any producer tries to write with it.

use anyhow::{bail, Context};
use paystream_schemas::registry::{
    catalog, CheckOutcome, Compatibility, RegistryClient, CONTRACT_COMPATIBILITY,
};
use paystream_stack::StackSettings;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Test every contract against the latest registered version of its subject.
    Check,
    /// Register every contract (idempotent: an unchanged contract keeps its id).
    Register,
}

pub async fn run(settings: &StackSettings, command: Command) -> anyhow::Result<()> {
    let registry = RegistryClient::new(&settings.schema_registry_url)?;
    let level = registry
        .global_compatibility()
        .await
        .with_context(|| format!("reading the compatibility rule of {}", settings.schema_registry_url))?;
    if level == Compatibility::None {
        bail!("the registry enforces no compatibility (global rule NONE); set it to BACKWARD or stricter");
    }
    match command {
        Command::Check => check(&registry).await,
        Command::Register => register(&registry).await,
    }
}

async fn check(registry: &RegistryClient) -> anyhow::Result<()> {
    let mut incompatible = Vec::new();
    for contract in catalog() {
        let level = registry.compatibility(&contract.subject).await?;
        match registry.check(&contract.subject, contract.schema).await? {
            CheckOutcome::NewSubject => println!("new           {}", contract.subject),
            CheckOutcome::Compatible => println!("compatible    {}", contract.subject),
            CheckOutcome::Incompatible { messages } => {
                println!("INCOMPATIBLE  {} under {level:?} ({})", contract.subject, messages.join("; "));
                incompatible.push(contract.subject);
            }
        }
    }
    if !incompatible.is_empty() {
        bail!(
            "{} contract(s) break their subject's compatibility rule: {}. Evolve them compatibly \
             (README: \"Evolving a contract\") or register them under a new subject",
            incompatible.len(),
            incompatible.join(", ")
        );
    }
    Ok(())
}

async fn register(registry: &RegistryClient) -> anyhow::Result<()> {
    for contract in catalog() {
        let id = registry
            .register_with_rule(&contract.subject, contract.schema, CONTRACT_COMPATIBILITY)
            .await
            .with_context(|| format!("registering {} under {}", contract.name, contract.subject))?;
        tracing::info!(subject = %contract.subject, id, rule = ?CONTRACT_COMPATIBILITY, "registered");
    }
    Ok(())
}
