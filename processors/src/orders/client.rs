//! The orders service's side of the door, for `paystream orders pay`, the tests and the load:
//! a `PayOrder` command produced on `pay.order` the way an orders service would (Avro in the
//! registered contract, keyed by the order id, idempotent producer, acknowledged by the broker).

use std::time::Duration;

use paystream_schemas::codec::EncodeError;
use paystream_schemas::events::PayOrder;
use paystream_schemas::EventCodec;
use paystream_stack::kafka;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// How long one command may wait for the broker's acknowledgement.
pub const DELIVERY_TIMEOUT_MS: u64 = 30_000;

/// Why a command was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Sends commands.
pub struct OrdersClient {
    producer: FutureProducer,
    codec: EventCodec,
}

impl OrdersClient {
    pub fn new(kafka_bootstrap: &str, codec: EventCodec) -> Result<Self, KafkaError> {
        let mut config = kafka::idempotent_producer(kafka_bootstrap);
        config.set("message.timeout.ms", DELIVERY_TIMEOUT_MS.to_string());
        Ok(Self { producer: config.create()?, codec })
    }

    /// Encodes `command` and produces it to `topic`, keyed by its order id, with its command id
    /// as the header `id`; returns once the broker has it.
    pub async fn send(&self, topic: &str, command: &PayOrder) -> Result<(), SendError> {
        let payload = self.codec.encode(command).await?;
        self.send_raw(topic, command.order_id.as_bytes(), &payload, &command.command_id.to_string()).await
    }

    /// [`OrdersClient::send`] with a W3C `traceparent` header: the inbox consumer's span continues
    /// the caller's trace, and so does the payment (the trace test).
    pub async fn send_traced(
        &self,
        topic: &str,
        command: &PayOrder,
        traceparent: &str,
    ) -> Result<(), SendError> {
        let payload = self.codec.encode(command).await?;
        let id = command.command_id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "id", value: Some(&id) })
            .insert(Header { key: paystream_stack::trace::TRACEPARENT, value: Some(traceparent) });
        self.produce(topic, command.order_id.as_bytes(), &payload, headers).await
    }

    /// Produces `payload` as it is (the tests' poison commands).
    pub async fn send_raw(&self, topic: &str, key: &[u8], payload: &[u8], id: &str) -> Result<(), SendError> {
        let headers = OwnedHeaders::new().insert(Header { key: "id", value: Some(id) });
        self.produce(topic, key, payload, headers).await
    }

    async fn produce(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), SendError> {
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        self.producer
            .send(record, Timeout::After(Duration::from_millis(DELIVERY_TIMEOUT_MS)))
            .await
            .map_err(|(error, _)| error)?;
        Ok(())
    }
}
