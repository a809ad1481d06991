//! The answer to an order whose payment was opened: settlement applies the payment's result and,
//! in the same transaction, writes the order's `OrderPaid` or `OrderPaymentFailed` into the
//! wallet outbox (Debezium's Outbox Event Router sends it to the topic the inbox row names).
//!
//! Exactly one answer per order, whatever is redelivered or replayed:
//! - settlement writes the answer only in the transaction that applies the result, and a
//!   result applies once (its PaymentResultId on the payment's row);
//! - the inbox row's `answer` is set in that transaction, and only while it is NULL
//!   ([`Answer::write`] writes nothing when it is already set);
//! - the event id is UUIDv5 of the order ([`OrderPaid::id_for`], [`OrderPaymentFailed::id_for`]),
//!   so a copy Debezium redelivers carries the id the orders service deduplicates by.
//!
//! The event is encoded before settlement's transaction takes its locks (a registry round trip
//! on first use), from the result and the inbox row; both are fixed by then. The inbox's own
//! at-once refusals ([`super::inbox`]) are built and written by the same [`Answer::failed`] and
//! [`Answer::write_event`].

use paystream_schemas::codec::EncodeError;
use paystream_schemas::events::{OrderFailureReason, OrderPaid, OrderPaymentFailed, PayOrder, PaymentResult};
use paystream_schemas::{time, Amount, Event, EventCodec};
use paystream_wallet::outbox::{self, OutboxRow};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The outbox `type` (header `eventType`) of the answers.
pub const ORDER_PAID_TYPE: &str = "OrderPaid";
pub const ORDER_PAYMENT_FAILED_TYPE: &str = "OrderPaymentFailed";

/// An order's answer, encoded, for the transaction that applies its payment's result.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The order (the record key).
    pub order_id: String,
    /// `PAID` or `FAILED`: the inbox row's `answer`.
    pub answer: &'static str,
    /// The event id (deterministic per order and answer).
    pub event_id: Uuid,
    /// Where the router sends it: the inbox row's `paid_topic` or `failed_topic`.
    pub topic: String,
    /// `OrderPaid` or `OrderPaymentFailed`.
    pub event_type: &'static str,
    /// The event in the Confluent wire format.
    pub payload: Vec<u8>,
}

/// Why an answer could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Reading the inbox row failed.
    #[error("wallet database: {0}")]
    Database(#[from] sqlx::Error),
    /// The registry refused the contract or was away.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl AnswerError {
    /// Retrying may succeed (the database or the registry was away).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Database(error) => crate::settlement::apply::is_transient(error),
            Self::Encode(error) => error.is_retriable(),
        }
    }
}

/// What settlement needs of an order: its inbox row, with the wallet's currency.
#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    order_id: String,
    command_id: Uuid,
    paid_topic: String,
    failed_topic: String,
    currency: String,
}

const SELECT_ORDER: &str = "
    SELECT i.order_id, i.command_id, i.paid_topic, i.failed_topic, w.currency
      FROM order_inbox i JOIN wallets w ON w.wallet_id = i.wallet_id
     WHERE i.payment_id = $1 AND i.outcome = 'RESERVED'";

/// The order an answer is for: its id (the record key), the command that opened it and the
/// payment.
#[derive(Clone, Copy, Debug)]
pub struct OrderRef<'a> {
    pub order_id: &'a str,
    pub command_id: Uuid,
    pub payment_id: Uuid,
}

impl<'a> OrderRef<'a> {
    /// The order `command` opens (its payment id derived from the order id).
    pub fn of(command: &'a PayOrder) -> Self {
        let payment_id = PayOrder::payment_id_for(&command.order_id);
        Self { order_id: &command.order_id, command_id: command.command_id, payment_id }
    }
}

impl Answer {
    /// The order's `OrderPaid`, encoded, for `topic`.
    pub async fn paid(
        codec: &EventCodec,
        order: OrderRef<'_>,
        wallet_id: Uuid,
        amount: Amount,
        currency: String,
        topic: &str,
    ) -> Result<Self, EncodeError> {
        let event = OrderPaid {
            event_id: OrderPaid::id_for(order.order_id),
            order_id: order.order_id.to_owned(),
            command_id: order.command_id,
            payment_id: order.payment_id,
            wallet_id,
            amount,
            currency,
            paid_at: time::now(),
        };
        Self::encoded(codec, &event, event.event_id, order, topic, "PAID").await
    }

    /// The order's `OrderPaymentFailed`, encoded, for `topic`: the one way a failure is written,
    /// whether the inbox refuses the command at once or settlement applies a failed payment.
    pub async fn failed(
        codec: &EventCodec,
        order: OrderRef<'_>,
        amount: Option<Amount>,
        reason: OrderFailureReason,
        detail: String,
        topic: &str,
    ) -> Result<Self, EncodeError> {
        let event = OrderPaymentFailed {
            event_id: OrderPaymentFailed::id_for(order.order_id),
            order_id: order.order_id.to_owned(),
            command_id: order.command_id,
            payment_id: order.payment_id,
            amount,
            reason,
            detail,
            failed_at: time::now(),
        };
        Self::encoded(codec, &event, event.event_id, order, topic, "FAILED").await
    }

    async fn encoded<E: Event>(
        codec: &EventCodec,
        event: &E,
        event_id: Uuid,
        order: OrderRef<'_>,
        topic: &str,
        answer: &'static str,
    ) -> Result<Self, EncodeError> {
        let event_type = if answer == "PAID" { ORDER_PAID_TYPE } else { ORDER_PAYMENT_FAILED_TYPE };
        Ok(Self {
            order_id: order.order_id.to_owned(),
            answer,
            event_id,
            topic: topic.to_owned(),
            event_type,
            payload: codec.encode(event).await?,
        })
    }
}

/// Prepares the answers of orders for settlement.
pub struct Answers {
    pool: PgPool,
    codec: EventCodec,
}

impl Answers {
    pub fn new(pool: PgPool, codec: EventCodec) -> Self {
        Self { pool, codec }
    }

    /// The answer `result` gives, if its payment came from an order (an inbox row names it);
    /// `None` for a payment of the HTTP door, and for a status that settles nothing.
    pub async fn for_result(&self, result: &PaymentResult) -> Result<Option<Answer>, AnswerError> {
        let row: Option<OrderRow> =
            sqlx::query_as(SELECT_ORDER).bind(result.payment_id).fetch_optional(&self.pool).await?;
        let Some(order) = row else { return Ok(None) };
        let to = OrderRef {
            order_id: &order.order_id,
            command_id: order.command_id,
            payment_id: result.payment_id,
        };
        // By symbol, so that a status added to PaymentResult later answers as a failure only
        // once it is named here (until then: no answer, and settlement's own rules apply).
        let reason = match result.status.symbol() {
            "COMPLETED" => {
                let (wallet, amount, topic) = (result.wallet_id, result.amount, &order.paid_topic);
                return Ok(Some(Answer::paid(&self.codec, to, wallet, amount, order.currency, topic).await?));
            }
            "FAILED" => OrderFailureReason::PaymentFailed,
            "FAILED_TIMEOUT" => OrderFailureReason::PaymentTimedOut,
            "CANCELED" => OrderFailureReason::PaymentCanceled,
            _ => return Ok(None),
        };
        let (amount, detail, topic) = (Some(result.amount), result.reason.clone(), &order.failed_topic);
        Ok(Some(Answer::failed(&self.codec, to, amount, reason, detail, topic).await?))
    }
}

const MARK_ANSWERED: &str = "
    UPDATE order_inbox SET answer = $2, answered_at = now()
     WHERE order_id = $1 AND answer IS NULL";

impl Answer {
    /// Marks the order answered and writes the event into the outbox, in `tx`; writes nothing
    /// (and returns false) if the order was already answered.
    pub async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<bool, sqlx::Error> {
        let marked =
            sqlx::query(MARK_ANSWERED).bind(&self.order_id).bind(self.answer).execute(&mut **tx).await?;
        if marked.rows_affected() == 0 {
            tracing::warn!(order_id = %self.order_id, "order already answered; no second answer written");
            return Ok(false);
        }
        self.write_event(tx).await?;
        Ok(true)
    }

    /// Writes the event into the outbox, in `tx` (the caller has marked the order answered).
    pub async fn write_event(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        // The answer joins the trace of the work that writes it (the inbox record's span for a
        // refusal, settlement's for a result); a fresh context when traces are not exported.
        let traceparent = paystream_stack::trace::traceparent_of(&tracing::Span::current())
            .unwrap_or_else(outbox::new_traceparent);
        outbox::write(
            tx,
            &OutboxRow {
                id: self.event_id,
                topic: &self.topic,
                key: &self.order_id,
                event_type: self.event_type,
                payload: &self.payload,
                traceparent: &traceparent,
            },
        )
        .await
    }
}
