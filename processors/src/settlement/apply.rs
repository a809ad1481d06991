//! Applying one `PaymentResult` to the wallet database, in one transaction.
//!
//! The payment's `wallet_transactions` row is locked (`FOR UPDATE`), the result is judged
//! against it by [`decide`] (pure, unit-tested), and a result that settles the payment
//! moves the wallet's money (through `paystream_wallet`, the one place money moves) and
//! marks the row settled in the same transaction:
//!
//! | result | wallet | row |
//! |---|---|---|
//! | COMPLETED | [`paystream_wallet::confirm`]: `reserved −= amount` | `COMPLETED` |
//! | FAILED, FAILED_TIMEOUT, CANCELED | [`paystream_wallet::compensate`]: `available += amount`, `reserved −= amount` | `CANCELLED`, with the reason (`result_status` tells an owner's cancel from a failure) |
//!
//! The row's `payment_result_id` is the dedup key: it is set in the same transaction that
//! moves the money, so a redelivered result finds it set and changes nothing. That also
//! makes an ambiguous commit (the connection dropped while committing) safe to retry.
//!
//! # What stops settlement and what is set aside
//!
//! A failure is one of three kinds, and each is handled differently:
//!
//! | kind | examples | handling |
//! |---|---|---|
//! | transient ([`ApplyError::is_transient`]) | connection lost, serialization failure, deadlock, statement timeout | the same record is retried |
//! | invariant breach ([`ApplyError::Invariant`]) | the wallet's reservation does not cover a pending payment ([`paystream_wallet::Refusal::ReservationShort`]), or a CHECK in [`INVARIANT_CONSTRAINTS`] refuses the change; the row written is not the one the wallet's rules predicted | settlement **stops**, the offset uncommitted: the books are already wrong or this code is, and applying more results on top would spread the damage |
//! | per-record data error ([`Rejection::Data`], [`Rejection::ResultIdMismatch`], and the other [`Rejection`]s) | a numeric overflow (SQLSTATE 22003), any other data exception (class 22), a constraint outside [`INVARIANT_CONSTRAINTS`] (class 23), a result that disagrees with its payment or whose id is not `PaymentResult::id_for(paymentId, status)` | the transaction rolls back (nothing half-applied), the record goes to the DLQ with a stable reason, the offset moves on |
//!
//! A per-record data error is confined to one record: the next result, even for the same
//! wallet, may apply. Halting on it would stop every wallet's settlement behind one bad
//! row (issue 11, scenario 3). Any other non-transient database error (an undefined
//! table, a permission refused) is about the deployment, not the record, would refuse
//! every record alike, and stops settlement too.
//!
//! # Balances cannot overflow
//!
//! The wallet's CHECK `wallets_balance_max` (migration `20261128000004`) caps
//! `available + reserved` at [`MAX_BALANCE`], the largest `numeric(14,2)`. A refund moves
//! money from `reserved` to `available` and a completion lowers `reserved`, so neither can
//! overflow a wallet that satisfies the cap; the deposit that would break it is refused by
//! the constraint. The overflow path above remains for rows the cap does not cover (the
//! `version` counter) and as defence in depth.

use std::fmt;

use paystream_schemas::events::{PaymentResult, PaymentResultStatus};
use paystream_schemas::Amount;
use paystream_wallet::WalletError;
use rust_decimal::Decimal;
use sqlx::error::ErrorKind;
use sqlx::PgPool;
use uuid::Uuid;

/// The unique constraint on `wallet_transactions.payment_result_id` (Postgres's default name).
pub const RESULT_ID_UNIQUE_CONSTRAINT: &str = "wallet_transactions_payment_result_id_key";

/// The largest balance (`available + reserved`) a wallet may hold: the largest
/// `numeric(14,2)`, enforced by the CHECK `wallets_balance_max`.
pub use paystream_wallet::MAX_BALANCE;

/// The CHECK constraints that encode money invariants. Settlement never moves money in a
/// way that could violate them on a consistent wallet, so a violation means the wallet was
/// already inconsistent (or this code is wrong): it stops settlement instead of being
/// dead-lettered.
pub const INVARIANT_CONSTRAINTS: &[&str] = &[
    // Settlement lowers `reserved` by the payment's amount, which the reservation covers.
    "wallets_reserved_check",
    // Settlement never lowers `available`.
    "wallets_available_check",
    // Settlement moves the sum only down (COMPLETED) or not at all (a refund).
    "wallets_balance_max",
    // Settlement writes every result column at once.
    "wallet_transactions_settled_consistently",
];

/// What settlement knows about a payment: its `wallet_transactions` row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentRow {
    /// The wallet the amount was reserved in.
    pub wallet_id: Uuid,
    /// The reserved amount (numeric(14,2)).
    pub amount: Decimal,
    /// The result already applied, if any.
    pub payment_result_id: Option<Uuid>,
}

/// Why a result is refused and sent to the DLQ. Each is a fact about the record, not
/// about the availability of anything: retrying would give the same answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No payment with this id was ever accepted (DESIGN.md invariant 4).
    UnknownPayment,
    /// The payment was already settled by another result: a payment has exactly one.
    ConflictingResult { settled_result_id: Uuid },
    /// The result's amount is not the amount that was reserved.
    AmountMismatch { reserved: Decimal, result: Amount },
    /// The result names another wallet than the one the amount was reserved in.
    WalletMismatch { reserved_in: Uuid, result: Uuid },
    /// The status is one this build does not know (read as `UNKNOWN`).
    UnknownStatus,
    /// The result's id already settled a different payment.
    ResultIdReused,
    /// The result's id is not `PaymentResult::id_for(paymentId, status)`: whoever wrote
    /// it did not follow the contract, so its dedup key cannot be trusted.
    ResultIdMismatch { expected: Uuid },
    /// The database refused this record's change for a reason of its own data (see the
    /// module doc): the transaction rolled back.
    Data(DataError),
}

/// A database refusal that concerns one record's data, not the database's availability
/// nor a money invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataError {
    /// Which kind; its [`DataErrorKind::as_str`] is the DLQ reason.
    pub kind: DataErrorKind,
    /// The SQLSTATE, e.g. `22003`.
    pub sqlstate: String,
    /// The constraint that refused it, if the database named one.
    pub constraint: Option<String>,
    /// The database's message.
    pub message: String,
}

/// The kinds of [`DataError`], each a stable DLQ reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataErrorKind {
    /// SQLSTATE 22003: a value does not fit its column (a balance, a counter).
    NumericOverflow,
    /// Any other data exception (SQLSTATE class 22: a string too long, a bad value).
    DataException,
    /// SQLSTATE 23514 on a constraint outside [`INVARIANT_CONSTRAINTS`].
    CheckViolation,
    /// Any other integrity constraint (class 23: not null, foreign key, unique).
    ConstraintViolation,
}

impl DataErrorKind {
    /// The kind of a non-transient SQLSTATE that is about the record's data; `None` for
    /// any other code.
    pub fn of_sqlstate(code: &str) -> Option<Self> {
        match code {
            "22003" => Some(Self::NumericOverflow),
            "23514" => Some(Self::CheckViolation),
            _ if code.starts_with("22") => Some(Self::DataException),
            _ if code.starts_with("23") => Some(Self::ConstraintViolation),
            _ => None,
        }
    }

    /// The DLQ's `dlq.reason` and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NumericOverflow => "numeric-overflow",
            Self::DataException => "data-exception",
            Self::CheckViolation => "check-violation",
            Self::ConstraintViolation => "constraint-violation",
        }
    }
}

impl Rejection {
    /// A short, stable name: the DLQ's `dlq.reason` and a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownPayment => "unknown-payment",
            Self::ConflictingResult { .. } => "conflicting-result",
            Self::AmountMismatch { .. } => "amount-mismatch",
            Self::WalletMismatch { .. } => "wallet-mismatch",
            Self::UnknownStatus => "unknown-status",
            Self::ResultIdReused => "result-id-reused",
            Self::ResultIdMismatch { .. } => "result-id-mismatch",
            Self::Data(data) => data.kind.as_str(),
        }
    }

    /// Every kind, for pre-registering metric labels.
    pub const KINDS: &'static [&'static str] = &[
        "unknown-payment",
        "conflicting-result",
        "amount-mismatch",
        "wallet-mismatch",
        "unknown-status",
        "result-id-reused",
        "result-id-mismatch",
        "numeric-overflow",
        "data-exception",
        "check-violation",
        "constraint-violation",
    ];
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPayment => write!(f, "no payment with this id was accepted"),
            Self::ConflictingResult { settled_result_id } => {
                write!(f, "the payment was already settled by result {settled_result_id}")
            }
            Self::AmountMismatch { reserved, result } => {
                write!(f, "the result's amount {result} differs from the reserved {reserved}")
            }
            Self::WalletMismatch { reserved_in, result } => {
                write!(f, "the result names wallet {result}, the amount was reserved in {reserved_in}")
            }
            Self::UnknownStatus => write!(f, "the result's status is UNKNOWN to this build"),
            Self::ResultIdReused => write!(f, "the result id already settled another payment"),
            Self::ResultIdMismatch { expected } => {
                write!(f, "the result id is not the one its payment and status give ({expected})")
            }
            Self::Data(data) => write!(
                f,
                "the database refused the change (SQLSTATE {}{}): {}; rolled back",
                data.sqlstate,
                data.constraint.as_deref().map(|c| format!(", constraint {c}")).unwrap_or_default(),
                data.message
            ),
        }
    }
}

/// The row status a settled payment gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettledStatus {
    /// The reservation was consumed: the money left the wallet.
    Completed,
    /// The reservation was returned to `available`.
    Cancelled,
}

impl SettledStatus {
    /// The `wallet_transactions.status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// What a result does: the wallet's movement and the row's new status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Movement {
    /// The money moved: a confirmation or a compensation of the reservation.
    pub money: paystream_wallet::Movement,
    /// The row's new status.
    pub settled: SettledStatus,
}

impl Movement {
    /// What `status` does with `amount`; `None` for a status settlement cannot apply.
    pub fn for_result(status: PaymentResultStatus, amount: Amount) -> Option<Self> {
        use paystream_wallet::Movement::{Compensate, Confirm};
        match status {
            PaymentResultStatus::Completed => {
                Some(Self { money: Confirm(amount), settled: SettledStatus::Completed })
            }
            PaymentResultStatus::Failed
            | PaymentResultStatus::FailedTimeout
            | PaymentResultStatus::Canceled => {
                Some(Self { money: Compensate(amount), settled: SettledStatus::Cancelled })
            }
            PaymentResultStatus::Unknown => None,
        }
    }
}

/// What to do with a result, given the payment's row (`None`: no such payment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Apply(Movement),
    Duplicate,
    Reject(Rejection),
}

/// Judges `result` against the payment's row.
///
/// The id is checked first, against the contract alone. The wallet and amount are
/// checked before the dedup: a result that disagrees with the
/// payment it names is suspect whether or not the payment is settled, and a genuine
/// redelivery always agrees, so checking first costs a true duplicate nothing.
pub fn decide(row: Option<&PaymentRow>, result: &PaymentResult) -> Decision {
    // The id is the dedup key; one that does not follow from the payment and status would
    // let a second result for the same outcome slip past the dedup.
    let expected = PaymentResult::id_for(result.payment_id, result.status);
    if result.payment_result_id != expected {
        return Decision::Reject(Rejection::ResultIdMismatch { expected });
    }
    let Some(row) = row else {
        return Decision::Reject(Rejection::UnknownPayment);
    };
    if row.wallet_id != result.wallet_id {
        return Decision::Reject(Rejection::WalletMismatch {
            reserved_in: row.wallet_id,
            result: result.wallet_id,
        });
    }
    // Decimal equality is numeric (10.0 == 10.00), so the column's scale does not matter.
    if row.amount != result.amount.to_decimal() {
        return Decision::Reject(Rejection::AmountMismatch { reserved: row.amount, result: result.amount });
    }
    match row.payment_result_id {
        Some(settled) if settled == result.payment_result_id => return Decision::Duplicate,
        Some(settled) => {
            return Decision::Reject(Rejection::ConflictingResult { settled_result_id: settled })
        }
        None => {}
    }
    match Movement::for_result(result.status, result.amount) {
        Some(movement) => Decision::Apply(movement),
        None => Decision::Reject(Rejection::UnknownStatus),
    }
}

/// The wallet after a result was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The status applied.
    pub status: PaymentResultStatus,
    /// The wallet's `available` after the change.
    pub available: Decimal,
    /// The wallet's `reserved` after the change.
    pub reserved: Decimal,
    /// The wallet's `version` after the change.
    pub wallet_version: i64,
}

/// The outcome of one result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The result settled its payment.
    Applied(Applied),
    /// This result had already been applied; nothing changed.
    Duplicate,
    /// The result cannot be applied; nothing changed. It goes to the DLQ.
    Rejected(Rejection),
}

/// Why a result could not be applied now.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database failed; [`ApplyError::is_transient`] says whether to retry.
    #[error("wallet database: {0}")]
    Database(#[source] sqlx::Error),
    /// A CHECK constraint or a post-condition refused the change: the wallet data was
    /// inconsistent before, or this code is wrong. Never retried, never dead-lettered.
    #[error("invariant violated: {0}")]
    Invariant(String),
}

impl ApplyError {
    /// Retrying the same result may succeed (the database was away or aborted us).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(error) => is_transient(error),
            Self::Invariant(_) => false,
        }
    }
}

pub use paystream_stack::postgres::{is_transient, sqlstate_is_transient};

const SELECT_PAYMENT: &str = "
    SELECT wallet_id, amount, payment_result_id
      FROM wallet_transactions
     WHERE payment_id = $1
       FOR UPDATE";

const SETTLE_PAYMENT: &str = "
    UPDATE wallet_transactions
       SET status = $2,
           payment_result_id = $3,
           result_status = $4,
           result_reason = $5,
           settled_at = now(),
           updated_at = now()
     WHERE payment_id = $1
       AND payment_result_id IS NULL";

/// Applies `result` in one transaction of the wallet database.
pub async fn apply(pool: &PgPool, result: &PaymentResult) -> Result<Outcome, ApplyError> {
    apply_answering(pool, result, None).await
}

/// [`apply`], and when the result settles the payment, `answer` (its order's `OrderPaid` or
/// `OrderPaymentFailed`, [`crate::orders::answer`]) is written into the outbox in the same
/// transaction: a duplicate or rejected result writes none, so an order is answered once.
pub async fn apply_answering(
    pool: &PgPool,
    result: &PaymentResult,
    answer: Option<&crate::orders::answer::Answer>,
) -> Result<Outcome, ApplyError> {
    let mut tx = pool.begin().await.map_err(ApplyError::Database)?;
    let row: Option<PaymentRow> = sqlx::query_as(SELECT_PAYMENT)
        .bind(result.payment_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApplyError::Database)?;
    let movement = match decide(row.as_ref(), result) {
        Decision::Apply(movement) => movement,
        Decision::Duplicate => return finish_unchanged(tx, Outcome::Duplicate).await,
        Decision::Reject(rejection) => return finish_unchanged(tx, Outcome::Rejected(rejection)).await,
    };
    // The row was found above and is locked, so its wallet exists (foreign key).
    let moved = match paystream_wallet::apply(&mut tx, result.wallet_id, movement.money).await {
        Ok(moved) => moved,
        Err(WalletError::Database(error)) => return refused(tx, error, result).await,
        // A reservation that does not cover its pending payment, a missing wallet, a row
        // other than the rules predicted: the books are wrong, whatever this record says.
        Err(error) => {
            return Err(ApplyError::Invariant(format!(
                "applying result {} ({}) of payment {} to wallet {}: {error}",
                result.payment_result_id,
                result.status.symbol(),
                result.payment_id,
                result.wallet_id
            )))
        }
    };

    let settled = sqlx::query(SETTLE_PAYMENT)
        .bind(result.payment_id)
        .bind(movement.settled.as_str())
        .bind(result.payment_result_id)
        .bind(result.status.symbol())
        .bind(&result.reason)
        .execute(&mut *tx)
        .await;
    match settled {
        Ok(done) if done.rows_affected() == 1 => {}
        Ok(done) => {
            return Err(ApplyError::Invariant(format!(
                "settling payment {} updated {} rows; the locked row was pending",
                result.payment_id,
                done.rows_affected()
            )))
        }
        Err(error) if is_unique_violation(&error, RESULT_ID_UNIQUE_CONSTRAINT) => {
            return finish_unchanged(tx, Outcome::Rejected(Rejection::ResultIdReused)).await;
        }
        Err(error) => return refused(tx, error, result).await,
    }

    if let Some(answer) = answer {
        answer.write(&mut tx).await.map_err(ApplyError::Database)?;
    }
    tx.commit().await.map_err(ApplyError::Database)?;
    Ok(Outcome::Applied(Applied {
        status: result.status,
        available: moved.balance.available,
        reserved: moved.balance.reserved,
        wallet_version: moved.version,
    }))
}

/// Ends a transaction that changed nothing and returns `outcome`.
async fn finish_unchanged(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    outcome: Outcome,
) -> Result<Outcome, ApplyError> {
    tx.rollback().await.map_err(ApplyError::Database)?;
    Ok(outcome)
}

fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.kind() == ErrorKind::UniqueViolation && db.constraint() == Some(constraint))
}

/// How a database error that ended a write is handled (see the module doc).
#[derive(Debug)]
enum Refusal {
    /// About this record's data: roll back and dead-letter it.
    Data(DataError),
    /// Transient, or about the deployment: an [`ApplyError`].
    Error(ApplyError),
}

/// Sorts a database error into an invariant breach (a constraint in
/// [`INVARIANT_CONSTRAINTS`]), a per-record data error (SQLSTATE class 22 or 23), or a
/// plain database error (transient or not, [`ApplyError::is_transient`] decides).
fn classify_refusal(error: sqlx::Error, result: &PaymentResult) -> Refusal {
    let sqlx::Error::Database(db) = &error else {
        return Refusal::Error(ApplyError::Database(error));
    };
    let constraint = db.constraint().map(str::to_owned);
    if db.kind() == ErrorKind::CheckViolation
        && constraint.as_deref().is_some_and(|c| INVARIANT_CONSTRAINTS.contains(&c))
    {
        return Refusal::Error(ApplyError::Invariant(format!(
            "applying result {} ({}) of payment {} to wallet {}: constraint {} refused it: {}",
            result.payment_result_id,
            result.status.symbol(),
            result.payment_id,
            result.wallet_id,
            constraint.as_deref().unwrap_or("?"),
            db.message()
        )));
    }
    let code = db.code().map(|code| code.into_owned()).unwrap_or_default();
    match DataErrorKind::of_sqlstate(&code) {
        Some(kind) => {
            Refusal::Data(DataError { kind, sqlstate: code, constraint, message: db.message().to_owned() })
        }
        None => Refusal::Error(ApplyError::Database(error)),
    }
}

/// Ends the transaction a write failed in: a per-record data error rolls it back and
/// rejects the record; anything else is returned as an error (the transaction is rolled
/// back when dropped).
async fn refused(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    error: sqlx::Error,
    result: &PaymentResult,
) -> Result<Outcome, ApplyError> {
    match classify_refusal(error, result) {
        Refusal::Data(data) => finish_unchanged(tx, Outcome::Rejected(Rejection::Data(data))).await,
        Refusal::Error(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use paystream_schemas::time;

    use super::*;

    fn result(status: PaymentResultStatus, amount_minor: i64) -> PaymentResult {
        let payment_id = Uuid::new_v4();
        PaymentResult {
            payment_result_id: PaymentResult::id_for(payment_id, status),
            payment_id,
            wallet_id: Uuid::new_v4(),
            amount: Amount::from_minor(amount_minor).unwrap(),
            status,
            reason: "because".into(),
            decided_at: time::now(),
        }
    }

    fn pending_row(result: &PaymentResult) -> PaymentRow {
        PaymentRow {
            wallet_id: result.wallet_id,
            amount: result.amount.to_decimal(),
            payment_result_id: None,
        }
    }

    #[test]
    fn completed_consumes_the_reservation() {
        let r = result(PaymentResultStatus::Completed, 1_050);
        assert_eq!(
            decide(Some(&pending_row(&r)), &r),
            Decision::Apply(Movement {
                money: paystream_wallet::Movement::Confirm(r.amount),
                settled: SettledStatus::Completed,
            })
        );
    }

    #[test]
    fn failures_return_the_reservation() {
        for status in [PaymentResultStatus::Failed, PaymentResultStatus::FailedTimeout] {
            let r = result(status, 99_999_999_999);
            assert_eq!(
                decide(Some(&pending_row(&r)), &r),
                Decision::Apply(Movement {
                    money: paystream_wallet::Movement::Compensate(r.amount),
                    settled: SettledStatus::Cancelled,
                })
            );
        }
    }

    #[test]
    fn every_movement_conserves_money() {
        // available + reserved changes by minus the amount for COMPLETED (it left the
        // wallet) and by nothing for a failure.
        let amount = Amount::from_minor(12_345).unwrap();
        let completed = Movement::for_result(PaymentResultStatus::Completed, amount).unwrap();
        let (available_delta, reserved_delta) = completed.money.deltas();
        assert_eq!(available_delta + reserved_delta, -amount.to_decimal());
        for status in [PaymentResultStatus::Failed, PaymentResultStatus::FailedTimeout] {
            let (available_delta, reserved_delta) =
                Movement::for_result(status, amount).unwrap().money.deltas();
            assert_eq!(available_delta + reserved_delta, Decimal::ZERO);
            assert!(reserved_delta < Decimal::ZERO && available_delta > Decimal::ZERO);
        }
        assert_eq!(Movement::for_result(PaymentResultStatus::Unknown, amount), None);
    }

    #[test]
    fn the_same_result_again_is_a_duplicate_and_another_one_a_conflict() {
        let r = result(PaymentResultStatus::Completed, 500);
        let settled = PaymentRow { payment_result_id: Some(r.payment_result_id), ..pending_row(&r) };
        assert_eq!(decide(Some(&settled), &r), Decision::Duplicate);

        let other = PaymentResult {
            payment_result_id: PaymentResult::id_for(r.payment_id, PaymentResultStatus::FailedTimeout),
            status: PaymentResultStatus::FailedTimeout,
            ..r.clone()
        };
        assert_eq!(
            decide(Some(&settled), &other),
            Decision::Reject(Rejection::ConflictingResult { settled_result_id: r.payment_result_id })
        );
    }

    #[test]
    fn results_that_disagree_with_the_payment_are_rejected() {
        let r = result(PaymentResultStatus::Completed, 500);
        assert_eq!(decide(None, &r), Decision::Reject(Rejection::UnknownPayment));

        let row = PaymentRow { amount: Decimal::new(501, 2), ..pending_row(&r) };
        assert_eq!(
            decide(Some(&row), &r),
            Decision::Reject(Rejection::AmountMismatch { reserved: Decimal::new(501, 2), result: r.amount })
        );
        // Scale does not matter, the number does: 5.0 is 5.00.
        let row = PaymentRow { amount: Decimal::new(50, 1), ..pending_row(&r) };
        assert!(matches!(decide(Some(&row), &r), Decision::Apply(_)));

        let elsewhere = Uuid::new_v4();
        let row = PaymentRow { wallet_id: elsewhere, ..pending_row(&r) };
        assert_eq!(
            decide(Some(&row), &r),
            Decision::Reject(Rejection::WalletMismatch { reserved_in: elsewhere, result: r.wallet_id })
        );

        // A settled payment and a result with a different amount: suspect, not a duplicate.
        let row = PaymentRow {
            amount: Decimal::new(400, 2),
            payment_result_id: Some(r.payment_result_id),
            ..pending_row(&r)
        };
        assert!(matches!(decide(Some(&row), &r), Decision::Reject(Rejection::AmountMismatch { .. })));

        let unknown = PaymentResult {
            status: PaymentResultStatus::Unknown,
            payment_result_id: PaymentResult::id_for(r.payment_id, PaymentResultStatus::Unknown),
            ..r.clone()
        };
        assert_eq!(
            decide(Some(&pending_row(&unknown)), &unknown),
            Decision::Reject(Rejection::UnknownStatus)
        );
    }

    #[test]
    fn rejection_kinds_are_stable_and_listed() {
        let all = [
            Rejection::UnknownPayment,
            Rejection::ConflictingResult { settled_result_id: Uuid::nil() },
            Rejection::AmountMismatch { reserved: Decimal::ONE, result: Amount::from_minor(1).unwrap() },
            Rejection::WalletMismatch { reserved_in: Uuid::nil(), result: Uuid::nil() },
            Rejection::UnknownStatus,
            Rejection::ResultIdReused,
            Rejection::ResultIdMismatch { expected: Uuid::nil() },
            data(DataErrorKind::NumericOverflow),
            data(DataErrorKind::DataException),
            data(DataErrorKind::CheckViolation),
            data(DataErrorKind::ConstraintViolation),
        ];
        let kinds: Vec<_> = all.iter().map(Rejection::kind).collect();
        assert_eq!(kinds, Rejection::KINDS);
        assert!(all.iter().all(|r| !r.to_string().is_empty()));
    }

    fn data(kind: DataErrorKind) -> Rejection {
        Rejection::Data(DataError {
            kind,
            sqlstate: "22003".into(),
            constraint: None,
            message: "out of range".into(),
        })
    }

    #[test]
    fn a_result_id_that_does_not_follow_from_payment_and_status_is_rejected_first() {
        let r = result(PaymentResultStatus::Completed, 500);
        let forged = PaymentResult { payment_result_id: Uuid::new_v4(), ..r.clone() };
        let expected = PaymentResult::id_for(r.payment_id, PaymentResultStatus::Completed);
        // Whatever the row says, even "no such payment" or "already settled by this id".
        for row in [None, Some(pending_row(&r))] {
            assert_eq!(
                decide(row.as_ref(), &forged),
                Decision::Reject(Rejection::ResultIdMismatch { expected })
            );
        }
        // The id of another status of the same payment does not fit this status either.
        let swapped = PaymentResult {
            payment_result_id: PaymentResult::id_for(r.payment_id, PaymentResultStatus::Failed),
            ..r.clone()
        };
        assert!(matches!(
            decide(Some(&pending_row(&r)), &swapped),
            Decision::Reject(Rejection::ResultIdMismatch { .. })
        ));
    }

    #[test]
    fn data_sqlstates_are_per_record_and_others_are_not() {
        assert_eq!(DataErrorKind::of_sqlstate("22003"), Some(DataErrorKind::NumericOverflow));
        assert_eq!(DataErrorKind::of_sqlstate("22001"), Some(DataErrorKind::DataException));
        assert_eq!(DataErrorKind::of_sqlstate("23514"), Some(DataErrorKind::CheckViolation));
        assert_eq!(DataErrorKind::of_sqlstate("23502"), Some(DataErrorKind::ConstraintViolation));
        for code in ["42P01", "42501", "XX000", "08006", "40001", "25P02", ""] {
            assert_eq!(DataErrorKind::of_sqlstate(code), None, "{code}");
        }
    }

    #[test]
    fn the_balance_cap_is_the_largest_numeric_14_2() {
        assert_eq!(MAX_BALANCE, Decimal::from_str_exact("999999999999.99").unwrap());
        assert_eq!(MAX_BALANCE.scale(), 2);
    }

    #[test]
    fn transient_database_errors_are_told_apart_from_permanent_ones() {
        for code in ["08006", "08001", "40001", "40P01", "53300", "57P01", "57P03", "57014"] {
            assert!(sqlstate_is_transient(code), "{code}");
        }
        for code in ["23505", "23514", "42P01", "22003", "XX000"] {
            assert!(!sqlstate_is_transient(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        assert!(!ApplyError::Invariant("x".into()).is_transient());
    }
}
