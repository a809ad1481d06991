//! Bench wallets: one fresh user each, a large available balance, inserted straight into
//! the wallet database and removed at the end.
//!
//! Ids are deterministic so pgbench can address wallet n without a lookup table: every
//! id of a run starts with the run's tag and ends with n as 12 hex digits. Users are named
//! after the run, so `paystream-bench clean` can find what an interrupted run left.
//!
//! Each wallet also gets a deposit row for its balance, so the money invariant
//! (`available + reserved = deposits − completed payments`) holds for bench wallets too
//! while they exist.

use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::payment::CURRENCY;

/// Every bench user's name starts with this; nothing else in paystream uses it.
pub const USER_NAME_PREFIX: &str = "paystream-bench ";
/// Every bench deposit's Idempotency-Key starts with this.
pub const DEPOSIT_KEY_PREFIX: &str = "paystream-bench-";
/// The balance each wallet starts with: at 0.01 a payment, a million payments each, far
/// more than any run makes.
pub const SEED_BALANCE: &str = "10000.00";
/// Rows per INSERT while seeding, to keep statements and their arrays bounded.
pub const SEED_BATCH_ROWS: usize = 10_000;
/// The largest number of wallets a run may seed (ids have 12 hex digits for n; the bound
/// is what seeding and removing take in reasonable time).
pub const WALLETS_MAX: u32 = 1_000_000;

/// The middle groups of the ids: users and wallets of one run differ only here.
const USER_ID_INFIX: &str = "be0c-4000-8000";
const WALLET_ID_INFIX: &str = "be0c-4000-9000";

/// The wallets of one run.
#[derive(Clone, Debug)]
pub struct BenchWallets {
    /// Random per run, so runs never collide with each other's leftovers.
    tag: u32,
    /// Wallets are numbered 1..=count.
    count: u32,
}

impl BenchWallets {
    pub fn new(count: u32) -> Self {
        assert!((1..=WALLETS_MAX).contains(&count), "wallet count {count} out of 1..={WALLETS_MAX}");
        Self { tag: rand::random(), count }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The run's tag, as it appears in ids and names.
    pub fn tag(&self) -> String {
        format!("{:08x}", self.tag)
    }

    /// The first 24 characters of every wallet id of this run (pgbench appends n).
    pub fn wallet_id_prefix(&self) -> String {
        format!("{:08x}-{WALLET_ID_INFIX}-", self.tag)
    }

    pub fn wallet_id(&self, n: u32) -> Uuid {
        self.id(WALLET_ID_INFIX, n)
    }

    pub fn user_id(&self, n: u32) -> Uuid {
        self.id(USER_ID_INFIX, n)
    }

    /// The name of every user of this run.
    pub fn user_name(&self) -> String {
        format!("{USER_NAME_PREFIX}{:08x}", self.tag)
    }

    fn id(&self, infix: &str, n: u32) -> Uuid {
        assert!((1..=self.count).contains(&n), "wallet {n} out of 1..={}", self.count);
        // Always 36 characters of hex digits and hyphens in the 8-4-4-4-12 layout.
        Uuid::parse_str(&format!("{:08x}-{infix}-{n:012x}", self.tag)).expect("well-formed uuid")
    }
}

/// Inserts the run's users, wallets and deposits, in one transaction.
pub async fn insert(db: &PgPool, wallets: &BenchWallets) -> sqlx::Result<()> {
    // A constant decimal literal; parsing it cannot fail.
    let balance: Decimal = SEED_BALANCE.parse().expect("SEED_BALANCE is a decimal");
    let numbers: Vec<u32> = (1..=wallets.count()).collect();
    let mut tx = db.begin().await?;
    for batch in numbers.chunks(SEED_BATCH_ROWS) {
        let users: Vec<Uuid> = batch.iter().map(|&n| wallets.user_id(n)).collect();
        let ids: Vec<Uuid> = batch.iter().map(|&n| wallets.wallet_id(n)).collect();
        sqlx::query("INSERT INTO users (user_id, name) SELECT unnest($1::uuid[]), $2")
            .bind(&users)
            .bind(wallets.user_name())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO wallets (wallet_id, user_id, currency, available)
             SELECT wallet_id, user_id, $3, $4 FROM unnest($1::uuid[], $2::uuid[]) AS t (wallet_id, user_id)",
        )
        .bind(&ids)
        .bind(&users)
        .bind(CURRENCY)
        .bind(balance)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO deposits (idempotency_key, wallet_id, amount)
             SELECT $2 || wallet_id::text, wallet_id, $3 FROM unnest($1::uuid[]) AS t (wallet_id)",
        )
        .bind(&ids)
        .bind(DEPOSIT_KEY_PREFIX)
        .bind(balance)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// What a removal deleted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Removed {
    pub users: u64,
    pub wallets: u64,
    pub payments: u64,
    pub deposits: u64,
}

/// Removes the run's users and everything that hangs off them.
pub async fn remove(db: &PgPool, wallets: &BenchWallets) -> sqlx::Result<Removed> {
    remove_users_named(db, &wallets.user_name()).await
}

/// Removes the users of every bench run (`paystream-bench clean`).
pub async fn remove_all_runs(db: &PgPool) -> sqlx::Result<Removed> {
    remove_users_named(db, &format!("{USER_NAME_PREFIX}%")).await
}

/// Removes users whose name is LIKE `pattern`, their wallets, payments and deposits, in
/// one transaction (children first: the foreign keys have no cascades).
async fn remove_users_named(db: &PgPool, pattern: &str) -> sqlx::Result<Removed> {
    let mut tx = db.begin().await?;
    let wallet_ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT w.wallet_id FROM wallets w JOIN users u USING (user_id) WHERE u.name LIKE $1",
    )
    .bind(pattern)
    .fetch_all(&mut *tx)
    .await?;
    let payments = sqlx::query("DELETE FROM wallet_transactions WHERE wallet_id = ANY($1)")
        .bind(&wallet_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let deposits = sqlx::query("DELETE FROM deposits WHERE wallet_id = ANY($1)")
        .bind(&wallet_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let wallets = sqlx::query("DELETE FROM wallets WHERE wallet_id = ANY($1)")
        .bind(&wallet_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let users = sqlx::query("DELETE FROM users WHERE name LIKE $1")
        .bind(pattern)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Removed { users, wallets, payments, deposits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_prefixed_by_the_run() {
        let wallets = BenchWallets::new(1000);
        let id = wallets.wallet_id(1000);
        assert!(id.to_string().starts_with(&wallets.wallet_id_prefix()));
        assert!(id.to_string().ends_with("0000000003e8"), "{id}");
        assert_eq!(wallets.wallet_id_prefix().len(), 24);
        assert_ne!(wallets.user_id(7), wallets.wallet_id(7));
        assert_eq!(wallets.user_id(7), wallets.user_id(7));
        assert!(wallets.user_name().starts_with(USER_NAME_PREFIX));
        assert!(wallets.user_name().len() <= 200, "users.name is at most 200 characters");
    }

    #[test]
    #[should_panic(expected = "out of 1..=")]
    fn wallet_zero_does_not_exist() {
        BenchWallets::new(3).wallet_id(0);
    }
}
