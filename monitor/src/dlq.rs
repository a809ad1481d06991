//! Dead letters in `payments.dlq`, counted by where they came from and why.
//!
//! Each process counts the letters it writes (`*_dead_lettered_total`), but only since it
//! started and only its own; the topic holds all of them. A [`DlqCounter`] reads the topic once
//! from the beginning and then only what was added, grouping by the `dlq.*` headers every writer
//! sets (`paystream_processors::dlq`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paystream_processors::dlq::{HEADER_PROCESSOR, HEADER_REASON, HEADER_SOURCE_TOPIC};
use paystream_stack::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::lag::{READER_GROUP, REQUEST_TIMEOUT};

/// How long one catch-up may read before it returns what it has counted (the next one goes on
/// from there).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a letter is counted by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DlqKey {
    pub source_topic: String,
    pub reason: String,
    pub processor: String,
}

/// Reads the DLQ topic incrementally and keeps the counts.
pub struct DlqCounter {
    topic: String,
    consumer: BaseConsumer,
    /// Next offset to count per partition (the end once an end-of-partition event was seen).
    progress: BTreeMap<i32, i64>,
    counts: BTreeMap<DlqKey, u64>,
}

fn header(message: &impl Message, name: &str) -> String {
    message
        .headers()
        .and_then(|headers| {
            headers
                .iter()
                .filter(|h| h.key == name)
                .last()
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

impl DlqCounter {
    /// A counter of `topic` (normally [`paystream_processors::dlq::DEFAULT_TOPIC`]) from its
    /// beginning.
    pub fn new(bootstrap: &str, topic: &str) -> Result<Self, KafkaError> {
        let mut config = kafka::base_config(bootstrap);
        config
            .set("group.id", READER_GROUP)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        let mut assignment = TopicPartitionList::new();
        let mut progress = BTreeMap::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
            progress.insert(partition.id(), 0);
        }
        consumer.assign(&assignment)?;
        Ok(Self { topic: topic.to_owned(), consumer, progress, counts: BTreeMap::new() })
    }

    /// Counts what was added since the last call, for at most [`CATCH_UP_TIMEOUT`].
    pub fn catch_up(&mut self) -> Result<(), KafkaError> {
        let mut ends = BTreeMap::new();
        for partition in self.progress.keys() {
            let (_, high) = self.consumer.fetch_watermarks(&self.topic, *partition, REQUEST_TIMEOUT)?;
            ends.insert(*partition, high);
        }
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        while ends.iter().any(|(p, end)| self.progress.get(p).is_some_and(|next| next < end)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::debug!(topic = self.topic, "DLQ catch-up stopped at its time bound");
                break;
            }
            match self.consumer.poll(left) {
                Some(Ok(message)) => {
                    let key = DlqKey {
                        source_topic: header(&message, HEADER_SOURCE_TOPIC),
                        reason: header(&message, HEADER_REASON),
                        processor: header(&message, HEADER_PROCESSOR),
                    };
                    *self.counts.entry(key).or_default() += 1;
                    self.progress.insert(message.partition(), message.offset() + 1);
                }
                // At the end: the consumer's position there is past any transaction markers, which
                // are never delivered. (Not the end fetched above: this event may be an old one,
                // from before the letters that the end now counts.)
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    let position = self.consumer.position()?;
                    if let Some(Offset::Offset(at)) =
                        position.find_partition(&self.topic, partition).map(|p| p.offset())
                    {
                        let next = self.progress.entry(partition).or_default();
                        *next = (*next).max(at);
                    }
                }
                Some(Err(error)) => return Err(error),
                None => {}
            }
        }
        Ok(())
    }

    /// Letters counted so far.
    pub fn counts(&self) -> &BTreeMap<DlqKey, u64> {
        &self.counts
    }
}
