//! Addresses of the infrastructure, from the environment.
//!
//! The defaults are the local stack that `dev/up` starts, so `cargo test` and the
//! binaries work on a developer machine without any configuration; production sets
//! every variable explicitly.

use std::env;

/// Where each dependency of paystream lives.
#[derive(Clone, Debug)]
pub struct StackSettings {
    /// Kafka bootstrap servers (`PAYSTREAM_KAFKA_BOOTSTRAP`).
    pub kafka_bootstrap: String,
    /// Base URL of the Kafka Connect REST API (`PAYSTREAM_CONNECT_URL`).
    pub connect_url: String,
    /// Base URL of the Confluent-compatible Schema Registry API (`PAYSTREAM_SCHEMA_REGISTRY_URL`).
    pub schema_registry_url: String,
    /// The wallet database: balances, reservations, the payment outbox (`PAYSTREAM_WALLET_DB_URL`).
    pub wallet_db_url: String,
    /// The ledger (transaction) database: provider callbacks and their outbox (`PAYSTREAM_LEDGER_DB_URL`).
    pub ledger_db_url: String,
    /// The read database, fed only from Kafka by the JDBC sink connectors; the API's query
    /// endpoints read it (`PAYSTREAM_QUERY_DB_URL`).
    pub query_db_url: String,
}

/// Default addresses of the stack `dev/up` starts.
pub const LOCAL_KAFKA_BOOTSTRAP: &str = "127.0.0.1:9092";
pub const LOCAL_CONNECT_URL: &str = "http://127.0.0.1:8083";
/// Apicurio serves the Confluent API under `/apis/ccompat/v7`; no trailing slash.
pub const LOCAL_SCHEMA_REGISTRY_URL: &str = "http://127.0.0.1:8081/apis/ccompat/v7";
pub const LOCAL_WALLET_DB_URL: &str = "postgres://wallet:wallet@127.0.0.1:5432/wallet";
pub const LOCAL_LEDGER_DB_URL: &str = "postgres://ledger:ledger@127.0.0.1:5432/ledger";
pub const LOCAL_QUERY_DB_URL: &str = "postgres://query:query@127.0.0.1:5432/query";

impl StackSettings {
    /// Reads every address from its variable, falling back to the local stack.
    pub fn from_env() -> Self {
        Self {
            kafka_bootstrap: var_or("PAYSTREAM_KAFKA_BOOTSTRAP", LOCAL_KAFKA_BOOTSTRAP),
            connect_url: var_or("PAYSTREAM_CONNECT_URL", LOCAL_CONNECT_URL),
            schema_registry_url: var_or("PAYSTREAM_SCHEMA_REGISTRY_URL", LOCAL_SCHEMA_REGISTRY_URL),
            wallet_db_url: var_or("PAYSTREAM_WALLET_DB_URL", LOCAL_WALLET_DB_URL),
            ledger_db_url: var_or("PAYSTREAM_LEDGER_DB_URL", LOCAL_LEDGER_DB_URL),
            query_db_url: var_or("PAYSTREAM_QUERY_DB_URL", LOCAL_QUERY_DB_URL),
        }
    }
}

fn var_or(name: &str, default: &str) -> String {
    match env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => default.to_owned(),
    }
}
