//! The run's records on the flow's topics, read back after the run with their Kafka
//! timestamps: from the run's start (found with `offsets_for_times`) to each partition's end,
//! keeping only the run's payments (every topic of the flow is keyed by paymentId).
//!
//! Read after the run rather than tailed during it, so that reading costs the pipeline no
//! CPU while it is measured. Committed records only (`read_committed`): an aborted saga
//! transaction's output never happened.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

/// Budget of one metadata, watermark or offsets-for-times request.
pub const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest reading one topic's part of the run may take.
pub const TOPIC_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// One poll's wait.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);

/// One record of a run's payment.
#[derive(Clone, Debug)]
pub struct Stamped {
    pub payment_id: Uuid,
    /// The record's Kafka timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The value, when the caller asked for values.
    pub value: Option<Vec<u8>>,
}

/// Reads `topic` from the first record at or after `since_ms` to the end of every partition,
/// keeping the records keyed by one of `payments`, on a blocking thread.
pub async fn read_since(
    bootstrap: &str,
    topic: &str,
    since_ms: i64,
    payments: Arc<HashSet<Uuid>>,
    with_values: bool,
) -> anyhow::Result<Vec<Stamped>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_blocking(&bootstrap, &topic, since_ms, &payments, with_values))
        .await
        .context("the topic reader panicked")?
}

fn read_blocking(
    bootstrap: &str,
    topic: &str,
    since_ms: i64,
    payments: &HashSet<Uuid>,
    with_values: bool,
) -> anyhow::Result<Vec<Stamped>> {
    let context = || format!("reading {topic} at {bootstrap}");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Partitions are assigned by hand and nothing is committed: the group is only a name.
        .set("group.id", "paystream-load-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .create()
        .with_context(context)?;
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_REQUEST_TIMEOUT).with_context(context)?;
    let partitions: Vec<i32> =
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    if partitions.is_empty() {
        bail!("{topic} has no partitions (is it created? `paystream topics create`)");
    }
    let mut wanted = TopicPartitionList::new();
    for &partition in &partitions {
        wanted.add_partition_offset(topic, partition, Offset::Offset(since_ms)).with_context(context)?;
    }
    let starts = consumer.offsets_for_times(wanted, KAFKA_REQUEST_TIMEOUT).with_context(context)?;
    let mut assignment = TopicPartitionList::new();
    // Each partition's end when the read starts: the run's records are all before it (the
    // run is over), and a record appended since is not the run's.
    let mut ends = HashMap::new();
    for element in starts.elements() {
        // No record at or after `since_ms`: nothing of the run is in that partition.
        let Offset::Offset(start) = element.offset() else { continue };
        let (_, high) = consumer
            .fetch_watermarks(topic, element.partition(), KAFKA_REQUEST_TIMEOUT)
            .with_context(context)?;
        if start < high {
            assignment
                .add_partition_offset(topic, element.partition(), Offset::Offset(start))
                .with_context(context)?;
            ends.insert(element.partition(), high);
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment).with_context(context)?;
    let started = Instant::now();
    while !ends.is_empty() {
        if started.elapsed() > TOPIC_READ_TIMEOUT {
            let left: Vec<_> = ends.keys().collect();
            bail!("reading {topic} took longer than {TOPIC_READ_TIMEOUT:?}; partitions {left:?} did not reach their end");
        }
        if let Some(message) = consumer.poll(POLL_TIMEOUT) {
            let message = message.with_context(context)?;
            if let Some(record) = keep(&message, payments, with_values) {
                records.push(record);
            }
        }
        // The position, not the last record's offset: it also moves past transaction markers,
        // which read_committed never delivers and which often are a partition's last offset.
        let positions = consumer.position().with_context(context)?;
        ends.retain(|&partition, &mut end| {
            match positions.find_partition(topic, partition).map(|p| p.offset()) {
                Some(Offset::Offset(position)) => position < end,
                _ => true,
            }
        });
    }
    Ok(records)
}

/// The record, if it is one of the run's payments' and has a timestamp (one without cannot
/// be placed on the timeline).
fn keep(message: &impl Message, payments: &HashSet<Uuid>, with_values: bool) -> Option<Stamped> {
    let payment_id = message.key().and_then(payment_key).filter(|id| payments.contains(id))?;
    let timestamp_ms = message.timestamp().to_millis()?;
    let value = if with_values { message.payload().map(<[u8]>::to_vec) } else { None };
    Some(Stamped { payment_id, timestamp_ms, value })
}

/// A record key as the flow writes it: the paymentId as UTF-8 text.
pub fn payment_key(key: &[u8]) -> Option<Uuid> {
    Uuid::parse_str(std::str::from_utf8(key).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_payment_ids_as_text() {
        let id = Uuid::new_v4();
        assert_eq!(payment_key(id.to_string().as_bytes()), Some(id));
        assert_eq!(payment_key(id.as_bytes()), None, "raw bytes are not the flow's key");
        assert_eq!(payment_key(b"\xff"), None);
    }
}
