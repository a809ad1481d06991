//! Payments by state, the stuck ones, and Debezium's replication slots, from the databases.
//!
//! The wallet database is the system of record of every accepted payment (`wallet_transactions`:
//! PENDING until settlement applies its result), so "how many payments ended how, lately" and
//! "which are stuck" are questions for it, not for any one process's counters.

use std::collections::BTreeMap;
use std::time::Duration;

use paystream_processors::settlement::stranded::{self, Scope, Summary, STRANDED_AFTER_MS};
use sqlx::PgPool;

/// How far back "recent payments" look: long enough to span a payment's timeout and its
/// verification, short enough to show what is happening now.
pub const RECENT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// A payment is stuck when it is still PENDING this long after it was accepted: its timeout, the
/// verification margin and a slack, settlement's threshold for a stranded reservation.
pub const STUCK_AFTER: Duration = Duration::from_millis(STRANDED_AFTER_MS);
/// Longest reason label kept: result reasons are free text with details; the label is their
/// first clause, so that its values stay few.
const REASON_LABEL_CHARS_MAX: usize = 48;

/// The first clause of a result reason ("declined by the simulated provider", "no verdict from
/// the provider in time"), without the detail after `;`, `:` or `(`.
pub fn reason_class(reason: &str) -> String {
    let head = reason.split([';', ':', '(']).next().unwrap_or("").trim();
    let class: String = head.chars().take(REASON_LABEL_CHARS_MAX).collect();
    if class.is_empty() {
        "-".to_owned()
    } else {
        class
    }
}

/// Payments accepted within `window`, counted by state (PENDING, or the result's status:
/// COMPLETED, FAILED, FAILED_TIMEOUT) and reason class.
pub async fn recent(db: &PgPool, window: Duration) -> Result<BTreeMap<(String, String), u64>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT COALESCE(result_status, status), result_reason, count(*)
         FROM wallet_transactions
         WHERE accepted_at > now() - $1::bigint * interval '1 millisecond'
         GROUP BY 1, 2",
    )
    .bind(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
    .fetch_all(db)
    .await?;
    let mut counts = BTreeMap::new();
    for (state, reason, count) in rows {
        *counts.entry((state, reason_class(reason.as_deref().unwrap_or("")))).or_default() +=
            u64::try_from(count).unwrap_or(0);
    }
    Ok(counts)
}

/// PENDING payments past [`STUCK_AFTER`] (settlement's stranded-reservation query).
pub async fn stuck(db: &PgPool) -> Result<Summary, sqlx::Error> {
    stranded::summary(db, STUCK_AFTER, Scope::All).await
}

/// The oldest stuck payments, for the status table.
pub async fn stuck_examples(
    db: &PgPool,
    rows_max: i64,
) -> Result<Vec<stranded::StrandedReservation>, sqlx::Error> {
    stranded::list(db, STUCK_AFTER, Scope::All, rows_max).await
}

/// One logical replication slot: Debezium's read position in the WAL.
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: String,
    pub active: bool,
    /// WAL bytes written since the slot's confirmed position: a source connector's lag.
    pub lag_bytes: i64,
}

/// Every replication slot of the cluster `db` is on (any role may read `pg_replication_slots`).
pub async fn slots(db: &PgPool) -> Result<Vec<Slot>, sqlx::Error> {
    let rows: Vec<(String, bool, Option<i64>)> = sqlx::query_as(
        "SELECT slot_name::text, active,
                pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
         FROM pg_replication_slots ORDER BY slot_name",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, active, lag)| Slot { name, active, lag_bytes: lag.unwrap_or(0) })
        .collect())
}

/// POST→settled durations (accepted_at to settled_at) of the payments settled in
/// `(after, until]`, with their status; `until` is the database's now minus `grace`, so a row
/// whose transaction commits a little after its settled_at is still seen by the next call.
pub async fn settled_between(
    db: &PgPool,
    after: Option<chrono::DateTime<chrono::Utc>>,
    grace: Duration,
) -> Result<(Vec<(String, f64)>, Option<chrono::DateTime<chrono::Utc>>), sqlx::Error> {
    let until: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now() - $1::bigint * interval '1 millisecond'")
            .bind(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX))
            .fetch_one(db)
            .await?;
    let Some(after) = after else { return Ok((Vec::new(), Some(until))) };
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT result_status, EXTRACT(EPOCH FROM settled_at - accepted_at)::float8
         FROM wallet_transactions
         WHERE settled_at > $1 AND settled_at <= $2 AND result_status IS NOT NULL",
    )
    .bind(after)
    .bind(until)
    .fetch_all(db)
    .await?;
    Ok((rows, Some(until)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_class_is_its_first_clause() {
        assert_eq!(reason_class("declined by the simulated provider"), "declined by the simulated provider");
        assert_eq!(
            reason_class("no verdict from the provider in time; the provider holds no charge (VOIDED)"),
            "no verdict from the provider in time"
        );
        assert_eq!(
            reason_class("no acceptance after 4 attempts (uncertain: the provider may hold it)"),
            "no acceptance after 4 attempts"
        );
        assert_eq!(reason_class(""), "-");
        assert!(reason_class(&"x".repeat(200)).chars().count() <= REASON_LABEL_CHARS_MAX);
    }
}
