//! The wallet outbox: the one way a `PaymentInitiated` leaves the wallet database.
//!
//! Both writers go through here: `POST /api/v1/payment` ([`crate::payments`]) when it accepts a
//! payment, and `paystream reservations nudge` ([`republish_payment_initiated`]) when an operator
//! resolves a stranded reservation. So the saga sees a nudged payment exactly as it saw (or should
//! have seen) the first time: the registered Avro contract in the Confluent wire format, routed by
//! Debezium's Outbox Event Router to `payments.initiated`, keyed by the paymentId, with the event
//! id and the trace context as headers. Nothing here talks to Kafka, and nothing moves money.
//!
//! The row is deleted in the transaction that wrote it: the WAL still carries the insert to
//! Debezium, the router drops the delete, and the table stays empty.

use chrono::{DateTime, Utc};
use paystream_schemas::codec::EncodeError;
use paystream_schemas::events::{topics, PaymentInitiated};
use paystream_schemas::money::AmountError;
use paystream_schemas::{Amount, EventCodec};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The outbox `type` of a payment's event (the Kafka header `eventType`).
pub const PAYMENT_INITIATED_TYPE: &str = "PaymentInitiated";

/// An event encoded for the outbox, ready to be written in a transaction.
///
/// Encoding is separate from writing so that the registry round trip (on a codec's first use
/// of the contract) happens before the caller's transaction takes its locks.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// The outbox row's id: the Kafka header `id`, by which consumers deduplicate.
    pub event_id: Uuid,
    /// The topic the router sends it to (`aggregatetype`): `payments.initiated`.
    pub topic: String,
    /// The Kafka record key (the paymentId): one partition per payment, in order.
    pub payment_id: Uuid,
    /// The event in the Confluent Avro wire format, passed through by Debezium byte for byte.
    pub payload: Vec<u8>,
    /// The W3C trace context, carried as the header `traceparent`.
    pub traceparent: String,
}

impl OutboxEvent {
    /// `event` encoded in its registered contract (registering or looking it up on first use).
    pub async fn payment_initiated(
        codec: &EventCodec,
        event: &PaymentInitiated,
        traceparent: String,
    ) -> Result<Self, EncodeError> {
        Ok(Self {
            event_id: event.event_id,
            topic: topics::PAYMENTS_INITIATED.to_owned(),
            payment_id: event.payment_id,
            payload: codec.encode(event).await?,
            traceparent,
        })
    }

    /// Writes the event into the outbox in `tx` and deletes it again; it leaves when `tx` commits.
    pub async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        let key = self.payment_id.to_string();
        paystream_wallet::outbox::write(
            tx,
            &paystream_wallet::outbox::OutboxRow {
                id: self.event_id,
                topic: &self.topic,
                key: &key,
                event_type: PAYMENT_INITIATED_TYPE,
                payload: &self.payload,
                traceparent: &self.traceparent,
            },
        )
        .await
    }
}

/// A new W3C trace context (version 00, sampled), for an event no request's context came with.
pub fn new_traceparent() -> String {
    paystream_wallet::outbox::new_traceparent()
}

/// Why a payment's event was not published again.
#[derive(Debug, thiserror::Error)]
pub enum NudgeError {
    /// No payment with this id was ever accepted.
    #[error("no payment {0} was accepted")]
    UnknownPayment(Uuid),
    /// The payment is settled: its result was applied, nothing is stranded.
    #[error(
        "payment {payment_id} is {status}, not PENDING: its result is applied, there is nothing to resolve"
    )]
    NotPending { payment_id: Uuid, status: String },
    /// The row holds an amount the contract cannot carry (a broken row; nothing was written).
    #[error("payment {payment_id}: amount {amount}: {source}")]
    Amount {
        payment_id: Uuid,
        amount: Decimal,
        #[source]
        source: AmountError,
    },
    /// The registry refused the contract or could not be reached; nothing was written.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The wallet database failed; nothing was written.
    #[error("wallet database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Publishes a PENDING payment's `PaymentInitiated` again, through the outbox, for a stranded
/// reservation: the event never reached the saga, or its result was never applied. Returns the
/// event written.
///
/// The event is the payment as the API accepted it — paymentId, wallet, amount, currency, kind,
/// description, `requestedAt`, and `initiatedAt` = the acceptance time — read from its row, with
/// a new event id (so Debezium's consumers do not take it for a redelivery of the first). The
/// saga then does what it does with any PaymentInitiated: a payment it never saw starts now; one
/// in flight is a duplicate and changes nothing; one with a result re-forwards that result
/// (same id), which settlement applies once. So the reservation is resolved by the saga and
/// settlement, never by an edit of balances here. Refused unless the row is PENDING, checked
/// again in the transaction that writes the event.
///
/// `topic` is where the router sends it: [`topics::PAYMENTS_INITIATED`], or the input of a saga
/// of its own on a shared cluster (a test's, as `SagaTopics::prefixed` makes them).
pub async fn republish_payment_initiated(
    db: &PgPool,
    codec: &EventCodec,
    payment_id: Uuid,
    topic: &str,
) -> Result<PaymentInitiated, NudgeError> {
    type Row = (Uuid, Decimal, String, String, DateTime<Utc>, DateTime<Utc>, String, String);
    let row: Option<Row> = sqlx::query_as(
        "SELECT t.wallet_id, t.amount, t.kind, t.description, t.requested_at, t.accepted_at, t.status,
                w.currency
         FROM wallet_transactions t JOIN wallets w ON w.wallet_id = t.wallet_id
         WHERE t.payment_id = $1",
    )
    .bind(payment_id)
    .fetch_optional(db)
    .await?;
    let Some((wallet_id, amount, kind, description, requested_at, accepted_at, status, currency)) = row
    else {
        return Err(NudgeError::UnknownPayment(payment_id));
    };
    if status != "PENDING" {
        return Err(NudgeError::NotPending { payment_id, status });
    }
    let event = PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id,
        wallet_id,
        amount: Amount::try_from_decimal(amount).map_err(|source| NudgeError::Amount {
            payment_id,
            amount,
            source,
        })?,
        currency,
        kind,
        description,
        requested_at,
        initiated_at: accepted_at,
    };
    let mut outbox = OutboxEvent::payment_initiated(codec, &event, new_traceparent()).await?;
    outbox.topic = topic.to_owned();

    let mut tx = db.begin().await?;
    // FOR SHARE: settlement's FOR UPDATE waits for this commit, so the row cannot settle
    // between the check and the write (had it settled just before, the saga's re-forward
    // would be a no-op anyway).
    let status: String =
        sqlx::query_scalar("SELECT status FROM wallet_transactions WHERE payment_id = $1 FOR SHARE")
            .bind(payment_id)
            .fetch_one(&mut *tx)
            .await?;
    if status != "PENDING" {
        return Err(NudgeError::NotPending { payment_id, status });
    }
    outbox.write(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(%payment_id, event_id = %event.event_id, %wallet_id, "PaymentInitiated published again through the outbox");
    Ok(event)
}
