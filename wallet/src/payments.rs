//! Opening a payment: the reservation and the payment's `wallet_transactions` row (PENDING),
//! in the caller's transaction. Both doors open payments here — `POST /api/v1/payment` and the
//! `pay.order` inbox — so a payment is the same thing whichever door it came through, and a
//! paymentId can be opened once.

use chrono::{DateTime, Utc};
use paystream_schemas::Amount;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Moved, WalletError};

/// A payment to open.
#[derive(Clone, Copy, Debug)]
pub struct NewPayment<'a> {
    /// The idempotency key: one row per paymentId, whichever door.
    pub payment_id: Uuid,
    /// The wallet the amount is reserved in.
    pub wallet_id: Uuid,
    pub amount: Amount,
    /// What it is for (the API's closed list; `purchase` for an order).
    pub kind: &'a str,
    pub description: &'a str,
    /// The client's time of the request.
    pub requested_at: DateTime<Utc>,
    /// When it was accepted (repeated verbatim to an idempotent replay).
    pub accepted_at: DateTime<Utc>,
}

/// What [`open`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The amount is reserved and the row PENDING; the caller writes its event and commits.
    Reserved(Moved),
    /// A row with this paymentId was committed by someone else first. The reservation above
    /// it was made in the caller's transaction, which must now be rolled back (dropping it
    /// does); the caller then answers with what the existing row says.
    PaymentIdTaken,
}

const INSERT_PAYMENT: &str = "
    INSERT INTO wallet_transactions
           (payment_id, wallet_id, amount, kind, description, requested_at, accepted_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (payment_id) DO NOTHING";

/// Reserves the payment's amount (by [`crate::reserve`]: judged first, so the balance decides
/// before any row is written) and inserts its PENDING row, in `tx`.
///
/// Errors are [`crate::reserve`]'s: after [`WalletError::Refused`] or [`WalletError::Missing`]
/// nothing was written and `tx` is still usable.
pub async fn open(
    tx: &mut Transaction<'_, Postgres>,
    payment: &NewPayment<'_>,
) -> Result<Opened, WalletError> {
    let moved = crate::reserve(tx, payment.wallet_id, payment.amount).await?;
    let inserted = sqlx::query(INSERT_PAYMENT)
        .bind(payment.payment_id)
        .bind(payment.wallet_id)
        .bind(payment.amount.to_decimal())
        .bind(payment.kind)
        .bind(payment.description)
        .bind(payment.requested_at)
        .bind(payment.accepted_at)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(if inserted == 1 { Opened::Reserved(moved) } else { Opened::PaymentIdTaken })
}
