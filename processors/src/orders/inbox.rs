//! One `PayOrder` command, handled in ONE wallet-database transaction.
//!
//! 1. The command is judged against its wallet ([`judge`], pure): a command that can never
//!    succeed (invalid amount or description, no such wallet, someone else's wallet, another
//!    currency) is refused before any money moves.
//! 2. The events are encoded (a registry round trip on first use), before any lock is taken.
//! 3. In one transaction: the inbox row is inserted (`ON CONFLICT DO NOTHING`: a command already
//!    recorded, by its id or its order's, changes nothing — [`Recorded::Duplicate`]); then either
//!    the payment is opened exactly as the HTTP door opens one (`paystream_wallet::payments::open`:
//!    reservation + PENDING `wallet_transactions` row) with `PaymentInitiated` in the outbox, or,
//!    for a refusal or insufficient funds, `OrderPaymentFailed` goes into the outbox and the row
//!    is marked answered. The consumer loop commits the offset only after this commits.
//!
//! The payment's id is UUIDv5 of the order id ([`PayOrder::payment_id_for`]), so the HTTP door
//! and this one cannot open two payments for one order, and a retried transaction opens the
//! same one.

use paystream_schemas::codec::EncodeError;
use paystream_schemas::events::{OrderFailureReason, PayOrder, PaymentInitiated};
use paystream_schemas::{time, Amount, EventCodec};
use paystream_wallet::outbox::{self, OutboxRow};
use paystream_wallet::{self as wallet, NewPayment, Opened, Refusal, WalletError};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::answer::{Answer, OrderRef};
use super::OrderTopics;

/// The payment kind an order's payment gets (one of the API's `PAYMENT_KINDS`).
pub const ORDER_PAYMENT_KIND: &str = "purchase";
/// The longest description accepted, in characters (the HTTP door's bound).
pub const DESCRIPTION_CHARS_MAX: usize = 500;
/// The outbox `type` of the event that opens the saga.
const PAYMENT_INITIATED_TYPE: &str = "PaymentInitiated";

/// The wallet a command names, as the database has it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct WalletFacts {
    pub wallet_id: Uuid,
    pub user_id: Uuid,
    pub currency: String,
}

/// What a command deserves, before the balance is looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Reserve `amount` in `wallet`.
    Open { wallet: WalletFacts, amount: Amount },
    /// It can never succeed: answer with `OrderPaymentFailed` at once.
    Refuse(Refused),
}

/// A refusal and what is known of the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: OrderFailureReason,
    pub detail: String,
    /// The wallet, when one was found.
    pub wallet_id: Option<Uuid>,
    /// The amount, when it was valid.
    pub amount: Option<Amount>,
}

/// Judges `command` against the wallet it names (`None`: no such wallet). Pure.
pub fn judge(command: &PayOrder, wallet: Option<WalletFacts>) -> Judgement {
    let refuse = |reason, detail: String, wallet_id, amount| {
        Judgement::Refuse(Refused { reason, detail, wallet_id, amount })
    };
    let amount = match command.amount.amount() {
        Ok(amount) => amount,
        Err(error) => {
            return refuse(OrderFailureReason::InvalidAmount, error.to_string(), None, None);
        }
    };
    if command.description.contains('\0') || command.description.chars().count() > DESCRIPTION_CHARS_MAX {
        let detail =
            format!("the description must be at most {DESCRIPTION_CHARS_MAX} characters, without NUL");
        return refuse(OrderFailureReason::InvalidCommand, detail, None, Some(amount));
    }
    let Some(wallet) = wallet else {
        let detail = match command.wallet_id {
            Some(id) => format!("no wallet {id}"),
            None => format!("user {} has no {} wallet", command.user_id, command.currency),
        };
        return refuse(OrderFailureReason::UnknownWallet, detail, None, Some(amount));
    };
    if wallet.user_id != command.user_id {
        let detail = format!("wallet {} is not user {}'s", wallet.wallet_id, command.user_id);
        return refuse(OrderFailureReason::WalletNotOwned, detail, None, Some(amount));
    }
    if wallet.currency != command.currency {
        let detail = format!(
            "wallet {} holds {}, the order is in {}",
            wallet.wallet_id, wallet.currency, command.currency
        );
        return refuse(OrderFailureReason::CurrencyMismatch, detail, Some(wallet.wallet_id), Some(amount));
    }
    Judgement::Open { wallet, amount }
}

/// What became of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The payment was opened (reserved, PENDING, `PaymentInitiated` in the outbox).
    Reserved { payment_id: Uuid },
    /// Answered with `OrderPaymentFailed` at once; nothing reserved.
    Refused(OrderFailureReason),
    /// The command, or another command for its order, was recorded before: nothing changed.
    /// `first_command` is the one that was.
    Duplicate { first_command: Uuid },
}

/// Why a command could not be handled now.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The database failed; [`InboxError::is_retriable`] says whether to retry.
    #[error("wallet database: {0}")]
    Database(#[from] sqlx::Error),
    /// The registry refused a contract or was away.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The wallet's books are wrong (a row other than the rules predicted): stop.
    #[error("wallet invariant: {0}")]
    Invariant(WalletError),
}

impl InboxError {
    /// Retrying the same command may succeed (the database or the registry was away).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Database(error) => crate::settlement::apply::is_transient(error),
            Self::Encode(error) => error.is_retriable(),
            Self::Invariant(_) => false,
        }
    }

    /// The SQLSTATE of a database error.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db.code().map(|code| code.into_owned()),
            _ => None,
        }
    }
}

impl From<WalletError> for InboxError {
    fn from(error: WalletError) -> Self {
        match error {
            WalletError::Database(error) => Self::Database(error),
            other => Self::Invariant(other),
        }
    }
}

const SELECT_RECORDED: &str =
    "SELECT command_id FROM order_inbox WHERE order_id = $1 OR command_id = $2 LIMIT 1";
const SELECT_WALLET_BY_ID: &str = "SELECT wallet_id, user_id, currency FROM wallets WHERE wallet_id = $1";
const SELECT_WALLET_OF_USER: &str =
    "SELECT wallet_id, user_id, currency FROM wallets WHERE user_id = $1 AND currency = $2";
const INSERT_INBOX: &str = "
    INSERT INTO order_inbox
           (order_id, command_id, payment_id, user_id, wallet_id, amount, outcome,
            failure_reason, failure_detail, paid_topic, failed_topic, answer, answered_at, ordered_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
            CASE WHEN $12::text IS NULL THEN NULL ELSE now() END, $13)
    ON CONFLICT DO NOTHING";
const MARK_REFUSED: &str = "
    UPDATE order_inbox SET outcome = 'REFUSED', failure_reason = $2, failure_detail = $3,
                           answer = 'FAILED', answered_at = now()
     WHERE order_id = $1";

/// Handles `command` (whose order id the caller checked) in one transaction of `pool`.
pub async fn handle(
    pool: &PgPool,
    codec: &EventCodec,
    topics: &OrderTopics,
    command: &PayOrder,
) -> Result<Recorded, InboxError> {
    // A redelivery is the common duplicate: answer it without a transaction. The insert
    // below decides races.
    if let Some(first_command) = recorded(pool, command).await? {
        return Ok(Recorded::Duplicate { first_command });
    }
    let wallet = match command.wallet_id {
        Some(id) => sqlx::query_as(SELECT_WALLET_BY_ID).bind(id).fetch_optional(pool).await?,
        None => {
            sqlx::query_as(SELECT_WALLET_OF_USER)
                .bind(command.user_id)
                .bind(&command.currency)
                .fetch_optional(pool)
                .await?
        }
    };
    let payment_id = PayOrder::payment_id_for(&command.order_id);
    match judge(command, wallet) {
        Judgement::Refuse(refused) => refuse(pool, codec, topics, command, &refused).await,
        Judgement::Open { wallet, amount } => {
            let opened = open(pool, codec, topics, command, &wallet, amount).await?;
            match opened {
                Some(recorded) => Ok(recorded),
                // The paymentId was opened through the HTTP door: this order cannot be paid
                // with it. The first transaction rolled back (and its reservation); refuse.
                None => {
                    let refused = Refused {
                        reason: OrderFailureReason::PaymentIdTaken,
                        detail: format!("payment {payment_id} exists already (opened through the HTTP door)"),
                        wallet_id: Some(wallet.wallet_id),
                        amount: Some(amount),
                    };
                    refuse(pool, codec, topics, command, &refused).await
                }
            }
        }
    }
}

/// The command already recorded for this command id or order, if any.
async fn recorded(pool: &PgPool, command: &PayOrder) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(SELECT_RECORDED)
        .bind(&command.order_id)
        .bind(command.command_id)
        .fetch_optional(pool)
        .await
}

/// The encoded `OrderPaymentFailed` of `command` for `refused`.
async fn failure_answer(
    codec: &EventCodec,
    topics: &OrderTopics,
    command: &PayOrder,
    refused: &Refused,
) -> Result<Answer, EncodeError> {
    let (order, detail) = (OrderRef::of(command), refused.detail.clone());
    Answer::failed(codec, order, refused.amount, refused.reason, detail, &topics.failed).await
}

/// Inserts the inbox row; false when the command or its order was recorded first.
async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    topics: &OrderTopics,
    command: &PayOrder,
    wallet_id: Option<Uuid>,
    amount: Option<Amount>,
    refused: Option<&Refused>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(INSERT_INBOX)
        .bind(&command.order_id)
        .bind(command.command_id)
        .bind(PayOrder::payment_id_for(&command.order_id))
        .bind(command.user_id)
        .bind(wallet_id)
        .bind(amount.map(Amount::to_decimal))
        .bind(if refused.is_some() { "REFUSED" } else { "RESERVED" })
        .bind(refused.map(|r| r.reason.symbol()))
        .bind(refused.map(|r| r.detail.as_str()))
        .bind(&topics.paid)
        .bind(&topics.failed)
        .bind(refused.map(|_| "FAILED"))
        .bind(command.ordered_at)
        .execute(&mut **tx)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Records a refused command and its answer.
async fn refuse(
    pool: &PgPool,
    codec: &EventCodec,
    topics: &OrderTopics,
    command: &PayOrder,
    refused: &Refused,
) -> Result<Recorded, InboxError> {
    let failure = failure_answer(codec, topics, command, refused).await?;
    let mut tx = pool.begin().await?;
    if !insert(&mut tx, topics, command, refused.wallet_id, refused.amount, Some(refused)).await? {
        tx.rollback().await?;
        return duplicate(pool, command).await;
    }
    failure.write_event(&mut tx).await?;
    tx.commit().await?;
    Ok(Recorded::Refused(refused.reason))
}

/// The duplicate answer, naming the command recorded first.
async fn duplicate(pool: &PgPool, command: &PayOrder) -> Result<Recorded, InboxError> {
    // The row that made the insert do nothing was committed, so it is there.
    let first_command = recorded(pool, command).await?.unwrap_or(command.command_id);
    Ok(Recorded::Duplicate { first_command })
}

/// Opens the order's payment, or answers insufficient funds; `None` when the paymentId was
/// taken by the HTTP door (nothing committed).
async fn open(
    pool: &PgPool,
    codec: &EventCodec,
    topics: &OrderTopics,
    command: &PayOrder,
    wallet: &WalletFacts,
    amount: Amount,
) -> Result<Option<Recorded>, InboxError> {
    let payment_id = PayOrder::payment_id_for(&command.order_id);
    let accepted_at = time::now();
    let initiated = PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id,
        wallet_id: wallet.wallet_id,
        amount,
        currency: wallet.currency.clone(),
        kind: ORDER_PAYMENT_KIND.to_owned(),
        description: command.description.clone(),
        requested_at: command.ordered_at,
        initiated_at: accepted_at,
    };
    let initiated_payload = codec.encode(&initiated).await?;

    let mut tx = pool.begin().await?;
    if !insert(&mut tx, topics, command, Some(wallet.wallet_id), Some(amount), None).await? {
        tx.rollback().await?;
        return duplicate(pool, command).await.map(Some);
    }
    let new_payment = NewPayment {
        payment_id,
        wallet_id: wallet.wallet_id,
        amount,
        kind: ORDER_PAYMENT_KIND,
        description: &command.description,
        requested_at: command.ordered_at,
        accepted_at,
    };
    match wallet::payments::open(&mut tx, &new_payment).await {
        Ok(Opened::Reserved(_)) => {}
        // Dropping the transaction rolls back the inbox row and the reservation.
        Ok(Opened::PaymentIdTaken) => return Ok(None),
        Err(WalletError::Refused(Refusal::InsufficientFunds { available, amount })) => {
            // Nothing was written by the refused reservation; the transaction goes on.
            let refused = Refused {
                reason: OrderFailureReason::InsufficientFunds,
                detail: format!("insufficient funds: {available} available, {amount} asked"),
                wallet_id: Some(wallet.wallet_id),
                amount: Some(amount),
            };
            let failure = failure_answer(codec, topics, command, &refused).await?;
            sqlx::query(MARK_REFUSED)
                .bind(&command.order_id)
                .bind(refused.reason.symbol())
                .bind(&refused.detail)
                .execute(&mut *tx)
                .await?;
            failure.write_event(&mut tx).await?;
            tx.commit().await?;
            return Ok(Some(Recorded::Refused(refused.reason)));
        }
        Err(error) => return Err(error.into()),
    }
    // The payment continues the command's trace: the inbox record's span (under the `traceparent`
    // header of `pay.order`, if it had one); a fresh context when traces are not exported.
    let traceparent = paystream_stack::trace::traceparent_of(&tracing::Span::current())
        .unwrap_or_else(outbox::new_traceparent);
    let key = payment_id.to_string();
    outbox::write(
        &mut tx,
        &OutboxRow {
            id: initiated.event_id,
            topic: &topics.initiated,
            key: &key,
            event_type: PAYMENT_INITIATED_TYPE,
            payload: &initiated_payload,
            traceparent: &traceparent,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Recorded::Reserved { payment_id }))
}

#[cfg(test)]
mod tests {
    use paystream_schemas::events::PayOrder;

    use super::*;

    fn command(wallet_id: Option<Uuid>) -> PayOrder {
        PayOrder {
            command_id: Uuid::new_v4(),
            order_id: "order-1".into(),
            user_id: Uuid::new_v4(),
            wallet_id,
            amount: Amount::from_minor(1_000).unwrap().into(),
            currency: "RUB".into(),
            description: "an order".into(),
            ordered_at: time::now(),
        }
    }

    fn wallet_of(command: &PayOrder) -> WalletFacts {
        WalletFacts {
            wallet_id: Uuid::new_v4(),
            user_id: command.user_id,
            currency: command.currency.clone(),
        }
    }

    fn reason(judgement: Judgement) -> Option<OrderFailureReason> {
        match judgement {
            Judgement::Refuse(refused) => Some(refused.reason),
            Judgement::Open { .. } => None,
        }
    }

    #[test]
    fn a_valid_command_on_the_users_wallet_opens_a_payment() {
        let c = command(None);
        let wallet = wallet_of(&c);
        assert_eq!(
            judge(&c, Some(wallet.clone())),
            Judgement::Open { wallet, amount: Amount::from_minor(1_000).unwrap() }
        );
    }

    #[test]
    fn commands_that_can_never_succeed_are_refused_with_their_reason() {
        let c = command(None);
        let wallet = wallet_of(&c);
        assert_eq!(reason(judge(&c, None)), Some(OrderFailureReason::UnknownWallet));
        let someone_elses = WalletFacts { user_id: Uuid::new_v4(), ..wallet.clone() };
        assert_eq!(reason(judge(&c, Some(someone_elses))), Some(OrderFailureReason::WalletNotOwned));
        let dollars = WalletFacts { currency: "USD".into(), ..wallet.clone() };
        assert_eq!(reason(judge(&c, Some(dollars))), Some(OrderFailureReason::CurrencyMismatch));
        for bytes in [vec![0x00], vec![0xFF], vec![0x17, 0x48, 0x76, 0xE8, 0x00], vec![]] {
            let bad = PayOrder {
                amount: paystream_schemas::events::CommandAmount::from_avro_bytes(bytes),
                ..c.clone()
            };
            assert_eq!(reason(judge(&bad, Some(wallet.clone()))), Some(OrderFailureReason::InvalidAmount));
        }
        for description in ["a\0b".to_owned(), "x".repeat(DESCRIPTION_CHARS_MAX + 1)] {
            let bad = PayOrder { description, ..c.clone() };
            assert_eq!(reason(judge(&bad, Some(wallet.clone()))), Some(OrderFailureReason::InvalidCommand));
        }
        let longest = PayOrder { description: "я".repeat(DESCRIPTION_CHARS_MAX), ..c.clone() };
        assert_eq!(reason(judge(&longest, Some(wallet))), None);
    }

    #[test]
    fn a_database_or_registry_away_is_retried_and_a_broken_invariant_is_not() {
        assert!(InboxError::Database(sqlx::Error::PoolTimedOut).is_retriable());
        assert!(InboxError::Database(sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()))
            .is_retriable());
        assert!(!InboxError::Database(sqlx::Error::RowNotFound).is_retriable());
        let breach = WalletError::Refused(Refusal::ReservationShort {
            reserved: rust_decimal::Decimal::ZERO,
            amount: Amount::from_minor(1).unwrap(),
        });
        assert!(!InboxError::from(breach).is_retriable());
        assert!(matches!(
            InboxError::from(WalletError::Database(sqlx::Error::PoolTimedOut)),
            InboxError::Database(_)
        ));
    }

    #[test]
    fn an_invalid_amount_is_not_carried_into_the_answer() {
        let c = PayOrder {
            amount: paystream_schemas::events::CommandAmount::from_avro_bytes(vec![0xFF]),
            ..command(None)
        };
        match judge(&c, None) {
            Judgement::Refuse(refused) => assert_eq!(refused.amount, None),
            other => panic!("{other:?}"),
        }
    }
}
