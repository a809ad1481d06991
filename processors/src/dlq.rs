//! The dead-letter producer every processor shares.
//!
//! A record a processor cannot use (it does not decode, or it contradicts the database)
//! is written to the DLQ topic exactly as it arrived, key, value and headers byte for
//! byte, with the reason appended in `dlq.*` headers; the processor then commits past it
//! and carries on. The DLQ
//! has no contract of its own: whoever repairs a record reads the original bytes with
//! the original contract.
//!
//! [`DeadLetterQueue::send`] returns only once the broker has acknowledged the record
//! (`acks=all`, idempotent), so a processor that commits its source offset after it
//! never loses a record between the two topics.

use paystream_topology::dlq::truncate;
use std::time::Duration;

use paystream_stack::kafka;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// The DLQ topic of the payment flow (created by `paystream topics create`).
pub const DEFAULT_TOPIC: &str = "payments.dlq";

/// The `dlq.*` headers: one vocabulary for every dead letter of paystream, whether a plain
/// consumer (settlement, dispatcher) or the topology runtime (saga, timers) wrote it.
pub use paystream_topology::dlq::{
    DETAIL_MAX_BYTES, HEADER_DETAIL, HEADER_PROCESSOR, HEADER_REASON, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};

/// How long one dead letter may wait for the broker's acknowledgement
/// (`message.timeout.ms`) before the send fails and the caller retries it.
pub const DELIVERY_TIMEOUT_MS: u64 = 30_000;
/// How long a send may wait for room in the producer's local queue.
pub const ENQUEUE_TIMEOUT_MS: u64 = 5_000;

/// Where a record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A record on its way to the DLQ.
#[derive(Clone, Debug)]
pub struct DeadLetter<'a> {
    /// Where the record was read.
    pub source: &'a SourceRecord,
    /// The original key, unchanged.
    pub key: Option<&'a [u8]>,
    /// The original value, unchanged.
    pub value: Option<&'a [u8]>,
    /// The original headers (`traceparent`, the event id, ...), written first and
    /// unchanged, so the letter can be traced and replayed as the record it was.
    pub headers: Option<&'a OwnedHeaders>,
    /// A short, stable reason (header `dlq.reason`).
    pub reason: &'a str,
    /// The reason in words (header `dlq.detail`).
    pub detail: &'a str,
}

/// Where a dead letter was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Writes dead letters for one processor.
pub struct DeadLetterQueue {
    /// Idempotent, `acks=all`: a retried send cannot duplicate or lose a letter.
    producer: FutureProducer,
    /// The DLQ topic.
    topic: String,
    /// Written into `dlq.processor`.
    processor: &'static str,
}

impl DeadLetterQueue {
    /// A DLQ writer for `processor`, writing to `topic`.
    pub fn new(bootstrap: &str, topic: &str, processor: &'static str) -> Result<Self, KafkaError> {
        let mut config = kafka::idempotent_producer(bootstrap);
        config
            .set("client.id", format!("paystream-{processor}-dlq"))
            // A failed delivery is reported within this bound, and the caller retries it
            // with its own back-off instead of the producer waiting its default 5 minutes.
            .set("message.timeout.ms", DELIVERY_TIMEOUT_MS.to_string());
        Ok(Self { producer: config.create()?, topic: topic.to_owned(), processor })
    }

    /// The DLQ topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `letter` and waits for the broker's acknowledgement.
    pub async fn send(&self, letter: &DeadLetter<'_>) -> Result<Delivered, KafkaError> {
        let original = letter.headers.cloned().unwrap_or_else(OwnedHeaders::new);
        let headers = headers(letter, self.processor)
            .iter()
            .fold(original, |all, (key, value)| all.insert(Header { key, value: Some(value) }));
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(value) = letter.value {
            record = record.payload(value);
        }
        match self.producer.send(record, Timeout::After(Duration::from_millis(ENQUEUE_TIMEOUT_MS))).await {
            Ok(delivery) => Ok(Delivered { partition: delivery.partition, offset: delivery.offset }),
            Err((error, _unsent)) => Err(error),
        }
    }
}

/// The `dlq.*` headers of a dead letter, in the order they are written after the
/// original's own.
pub fn headers(letter: &DeadLetter<'_>, processor: &str) -> Vec<(&'static str, String)> {
    vec![
        (HEADER_REASON, letter.reason.to_owned()),
        (HEADER_DETAIL, truncate(letter.detail, DETAIL_MAX_BYTES).to_owned()),
        (HEADER_SOURCE_TOPIC, letter.source.topic.clone()),
        (HEADER_SOURCE_PARTITION, letter.source.partition.to_string()),
        (HEADER_SOURCE_OFFSET, letter.source.offset.to_string()),
        (HEADER_PROCESSOR, processor.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_reason_source_and_processor() {
        let source = SourceRecord { topic: "payments.results".into(), partition: 4, offset: 1_234_567 };
        let letter = DeadLetter {
            source: &source,
            key: Some(b"k"),
            value: Some(b"v"),
            headers: None,
            reason: "unknown-payment",
            detail: "no payment 42",
        };
        assert_eq!(
            headers(&letter, "settlement"),
            [
                ("dlq.reason", "unknown-payment".to_owned()),
                ("dlq.detail", "no payment 42".to_owned()),
                ("dlq.source.topic", "payments.results".to_owned()),
                ("dlq.source.partition", "4".to_owned()),
                ("dlq.source.offset", "1234567".to_owned()),
                ("dlq.processor", "settlement".to_owned()),
            ]
        );
    }

    #[test]
    fn long_details_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let long = "ё".repeat(DETAIL_MAX_BYTES); // two bytes per character
        let cut = truncate(&long, 5);
        assert_eq!(cut, "ёё");
        assert!(truncate(&long, DETAIL_MAX_BYTES).len() <= DETAIL_MAX_BYTES);
    }
}
