//! The wallet outbox (`wallet_outbox`, read by Debezium's Outbox Event Router,
//! `connect/wallet-outbox.json`): the one way an event leaves the wallet database.
//!
//! Every writer — the API's `PaymentInitiated`, the `pay.order` inbox, settlement's answers to
//! orders — writes its row here, in the transaction of the change it describes. The row is
//! deleted in the same transaction: the WAL still carries the insert to Debezium, the router
//! drops the delete, and the table stays empty.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// One event for the outbox, already encoded.
#[derive(Clone, Copy, Debug)]
pub struct OutboxRow<'a> {
    /// The row's id: the Kafka header `id`, by which consumers deduplicate (Debezium
    /// delivers at least once).
    pub id: Uuid,
    /// The topic the router sends it to (`aggregatetype`).
    pub topic: &'a str,
    /// The Kafka record key (`aggregateid`): the paymentId, or the orderId of an order's answer.
    pub key: &'a str,
    /// The event type, the header `eventType`.
    pub event_type: &'a str,
    /// The event in the Confluent Avro wire format, passed through by Debezium byte for byte.
    pub payload: &'a [u8],
    /// The W3C trace context, the header `traceparent`.
    pub traceparent: &'a str,
}

/// Writes `row` into the outbox in `tx` and deletes it again; it leaves when `tx` commits.
pub async fn write(tx: &mut Transaction<'_, Postgres>, row: &OutboxRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO wallet_outbox (id, aggregatetype, aggregateid, type, payload, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(row.id)
    .bind(row.topic)
    .bind(row.key)
    .bind(row.event_type)
    .bind(row.payload)
    .bind(row.traceparent)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM wallet_outbox WHERE id = $1").bind(row.id).execute(&mut **tx).await?;
    Ok(())
}

/// A new W3C trace context (version 00, sampled), for an event no request's context came with.
pub fn new_traceparent() -> String {
    let trace_id = Uuid::new_v4().simple().to_string();
    let span_id = &Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace_id}-{span_id}-01")
}
