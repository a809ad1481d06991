//! `paystream audit`: DESIGN.md's invariants checked from the outside, against the wallet
//! database, the results and timers topics, and the provider's own ledger — in the spirit of
//! Jepsen's checkers: the system's claims are not taken, its records are compared.
//!
//! # Layout
//! - [`checks`]: the rules as pure functions of a [`Snapshot`], each unit-tested.
//! - [`snapshot`]: reading a snapshot (Postgres, Kafka read to its end, the provider over HTTP).
//! - [`report`]: the table, the offending ids and the one-line summary.

pub mod checks;
pub mod report;
pub mod snapshot;

pub use checks::{check, Findings, Rules, Snapshot, Violation};
pub use snapshot::{Scope, SnapshotError, Sources};

/// Reads a snapshot of `scope` and checks every rule on it.
pub async fn audit(
    db: &sqlx::PgPool,
    sources: &Sources,
    scope: &Scope,
    rules: &Rules,
) -> Result<Findings, SnapshotError> {
    let snapshot = snapshot::read(db, sources, scope).await?;
    Ok(check(&snapshot, rules))
}
