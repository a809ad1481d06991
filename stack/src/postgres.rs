//! Connection pools and embedded migrations for paystream's databases.
//!
//! - `wallet`: the source of truth for balances; the payment outbox.
//! - `ledger`: the transaction database of provider callbacks; the callback outbox.
//! - `query`: the read database, fed only from Kafka (the JDBC sink connectors in `connect/`);
//!   the API's query endpoints read it. Its schema is migrated here like the others, before
//!   the connectors write into it.
//!
//! Migrations are SQL files in `migrations/<db>/`, embedded into the binary by
//! `sqlx::migrate!` and applied at start by `paystream migrate` and by every service
//! that owns the database. sqlx records each applied file with its checksum, so an
//! edited, already-applied migration is refused instead of silently diverging.

use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::wait::{self, NotReady};

/// Migrations of the wallet database.
pub static WALLET_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/wallet");
/// Migrations of the ledger database.
pub static LEDGER_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/ledger");
/// Migrations of the read database.
pub static QUERY_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/query");

/// Connections per pool: Postgres runs with max_connections=200 shared by all services.
pub const POOL_CONNECTIONS_MAX: u32 = 16;
/// How long a request may wait for a pooled connection.
pub const ACQUIRE_TIMEOUT_MS: u64 = 5_000;

/// Errors of the database layer at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error("migrating the {db} database: {source}")]
    Migrate { db: &'static str, source: MigrateError },
}

/// Opens a pool, waiting at most `timeout` for the database to accept connections.
pub async fn connect(url: &str, timeout: Duration) -> Result<PgPool, NotReady> {
    let what = format!("PostgreSQL at {}", redact(url));
    wait::until_ready(what, timeout, || {
        PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
            .connect(url)
    })
    .await
}

/// Applies the wallet migrations.
pub async fn migrate_wallet(pool: &PgPool) -> Result<(), DbError> {
    WALLET_MIGRATIONS.run(pool).await.map_err(|source| DbError::Migrate { db: "wallet", source })
}

/// Applies the ledger migrations.
pub async fn migrate_ledger(pool: &PgPool) -> Result<(), DbError> {
    LEDGER_MIGRATIONS.run(pool).await.map_err(|source| DbError::Migrate { db: "ledger", source })
}

/// Applies the read database's migrations.
pub async fn migrate_query(pool: &PgPool) -> Result<(), DbError> {
    QUERY_MIGRATIONS.run(pool).await.map_err(|source| DbError::Migrate { db: "query", source })
}

/// A database URL with its password replaced, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _password)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

// Which database errors are worth retrying: written once for settlement, the pay.order inbox
// and the API (which answers them 503, "try again", instead of 500).

/// A database error that says nothing about the data: the connection or the server was
/// away, or Postgres aborted the transaction to resolve contention.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| sqlstate_is_transient(&code)),
        _ => false,
    }
}

/// SQLSTATEs worth retrying: class 08 (connection exception), 40001 (serialization
/// failure), 40P01 (deadlock), class 53 (insufficient resources, e.g. too many
/// connections), 55P03 (lock not available), 57014 (statement timeout), 57P01–57P03 (the
/// server is shutting down or starting).
pub fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("postgres://wallet:secret@h:5432/wallet"), "postgres://wallet:***@h:5432/wallet");
        assert_eq!(redact("postgres://h/wallet"), "postgres://h/wallet");
        assert_eq!(redact("postgres://wallet@h/wallet"), "postgres://wallet@h/wallet");
    }
}
