//! The one place where wallet money moves.
//!
//! The API deposits and reserves, settlement confirms and compensates; all four go through
//! [`apply`] here, so the rule that keeps the books right is written once:
//!
//! > `available + reserved = deposits − confirmed`, and `reserved` = the sum of the
//! > pending payments (DESIGN.md invariant 1), with both non-negative and their sum at
//! > most [`MAX_BALANCE`].
//!
//! Each movement locks the wallet row, asks the pure [`rules`] whether it is allowed, and
//! runs one `UPDATE wallets … RETURNING` (bumping `version`) whose result is checked
//! against what the rules predicted. It runs inside the caller's transaction: idempotency,
//! the payment's row and the outbox stay with the caller and commit or roll back with the
//! money.
//!
//! # Layout
//! - [`rules`]: the pure model: what each [`Movement`] does to a [`Balance`] and when it
//!   is [`Refusal`]-ed (property-tested for conservation).
//! - [`payments`]: opening a payment (reservation + PENDING row), for both doors (HTTP and
//!   `pay.order`).
//! - [`outbox`]: the outbox row every wallet-database event leaves by.
//! - this module: the SQL, [`Moved`] and [`WalletError`].

pub mod outbox;
pub mod payments;
pub mod rules;

use paystream_schemas::Amount;
use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub use payments::{NewPayment, Opened};
pub use rules::{Balance, Movement, Refusal, MAX_BALANCE, RESERVED_CHECK};

/// A wallet after a movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    /// The balances the `UPDATE` returned (equal to what the rules predicted).
    pub balance: Balance,
    /// The row's `version` after the bump.
    pub version: i64,
}

/// Why a movement did not happen. After [`WalletError::Refused`] or [`WalletError::Missing`]
/// nothing was written and the caller's transaction is still usable; after the others the
/// caller must roll it back (dropping it does).
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The rules refuse it: insufficient funds, over the balance cap, or a reservation
    /// smaller than the amount (an invariant breach, see [`WalletError::is_invariant_breach`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No wallet has this id.
    #[error("wallet {0} does not exist")]
    Missing(Uuid),
    /// The row the `UPDATE` returned is not the one the rules predicted for the locked row:
    /// something else writes the wallet (a trigger, a rule) or this code is wrong.
    #[error("wallet {wallet_id}: {movement} wrote {written:?}, the rules predicted {expected:?}")]
    Diverged { wallet_id: Uuid, movement: &'static str, expected: Balance, written: Balance },
    /// The database failed or refused the statement; the `sqlx::Error` is kept whole so
    /// callers classify it (transient, a data error, a constraint) by its SQLSTATE.
    #[error("wallet database: {0}")]
    Database(#[from] sqlx::Error),
}

impl WalletError {
    /// The books were already wrong, or this code is: a caller must not carry on as if a
    /// client had made a mistake.
    pub fn is_invariant_breach(&self) -> bool {
        matches!(self, Self::Refused(Refusal::ReservationShort { .. }) | Self::Diverged { .. })
    }

    /// The SQLSTATE of a database error (`22003`, `40001`, …).
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db.code().map(|code| code.into_owned()),
            _ => None,
        }
    }
}

/// Locks the wallet for the rest of the caller's transaction: the decision and the write
/// see the same row, so concurrent movements on one wallet are serialised.
const LOCK_WALLET: &str = "SELECT available, reserved FROM wallets WHERE wallet_id = $1 FOR UPDATE";

const MOVE_MONEY: &str = "
    UPDATE wallets
       SET available = available + $2,
           reserved = reserved + $3,
           version = version + 1,
           updated_at = now()
     WHERE wallet_id = $1
 RETURNING available, reserved, version";

/// Money enters the wallet: `available += amount`, unless the balance would pass
/// [`MAX_BALANCE`].
pub async fn deposit(
    tx: &mut Transaction<'_, Postgres>,
    wallet_id: Uuid,
    amount: Amount,
) -> Result<Moved, WalletError> {
    apply(tx, wallet_id, Movement::Deposit(amount)).await
}

/// A payment is accepted: `available → reserved`, unless `available` is smaller.
pub async fn reserve(
    tx: &mut Transaction<'_, Postgres>,
    wallet_id: Uuid,
    amount: Amount,
) -> Result<Moved, WalletError> {
    apply(tx, wallet_id, Movement::Reserve(amount)).await
}

/// A payment completed: its reservation leaves the wallet (`reserved −= amount`).
pub async fn confirm(
    tx: &mut Transaction<'_, Postgres>,
    wallet_id: Uuid,
    amount: Amount,
) -> Result<Moved, WalletError> {
    apply(tx, wallet_id, Movement::Confirm(amount)).await
}

/// A payment failed or was cancelled: its reservation returns (`reserved → available`).
pub async fn compensate(
    tx: &mut Transaction<'_, Postgres>,
    wallet_id: Uuid,
    amount: Amount,
) -> Result<Moved, WalletError> {
    apply(tx, wallet_id, Movement::Compensate(amount)).await
}

/// Moves money in `wallet_id` inside `tx`: lock, judge by [`Balance::after`], update,
/// check the returned row against the prediction.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    wallet_id: Uuid,
    movement: Movement,
) -> Result<Moved, WalletError> {
    let locked: Option<(Decimal, Decimal)> =
        sqlx::query_as(LOCK_WALLET).bind(wallet_id).fetch_optional(&mut **tx).await?;
    let (available, reserved) = locked.ok_or(WalletError::Missing(wallet_id))?;
    let expected = Balance { available, reserved }.after(movement)?;
    let (available_delta, reserved_delta) = movement.deltas();
    let written: Option<(Decimal, Decimal, i64)> = sqlx::query_as(MOVE_MONEY)
        .bind(wallet_id)
        .bind(available_delta)
        .bind(reserved_delta)
        .fetch_optional(&mut **tx)
        .await?;
    // The row is locked by this transaction, so it cannot have gone since the SELECT.
    let (available, reserved, version) = written.ok_or(WalletError::Missing(wallet_id))?;
    let written = Balance { available, reserved };
    if written != expected {
        return Err(WalletError::Diverged { wallet_id, movement: movement.name(), expected, written });
    }
    Ok(Moved { balance: written, version })
}
