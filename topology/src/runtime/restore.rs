//! Restoration: bring one store of one task up to the end of its changelog partition before the
//! task processes anything.
//!
//! The restore consumer reads `read_committed`, so aborted changelog writes are never restored,
//! and stops at the partition's end (librdkafka's partition-EOF event, which under
//! `read_committed` comes at the last stable offset). Records are applied in batches.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics::StreamsMetrics;
use crate::store::StoreBackend;

/// Records per RocksDB write batch while restoring.
pub const RESTORE_BATCH_RECORDS: usize = 10_000;
/// How long restoration may go without a record or the end before it is declared stuck.
pub const RESTORE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of the watermark lookup.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Log progress at most this often.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(2);

/// Why a restoration failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Kafka refused (watermarks, assignment, fetch).
    #[error("restoring {topic}-{partition}: {source}")]
    Kafka {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
    /// No progress for [`RESTORE_STALL_TIMEOUT`].
    #[error("restoring {topic}-{partition}: no progress for {:?} at offset {offset}", RESTORE_STALL_TIMEOUT)]
    Stalled {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Where it stopped.
        offset: i64,
    },
    /// The store refused a batch.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What a restoration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Records applied.
    pub records: u64,
    /// Next changelog offset (the checkpoint to write).
    pub next_offset: i64,
}

/// Where restoration of one store starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The checkpointed offset is valid: continue from it.
    Checkpoint(i64),
    /// No usable local state: the caller has wiped the store; start at the beginning.
    Beginning,
}

/// Where to start given a checkpoint and the changelog's watermarks; `Beginning` also when the
/// checkpoint is beyond the changelog's end (the topic was recreated: the local state is foreign).
pub fn start_from(checkpoint: Option<i64>, low: i64, high: i64) -> StartFrom {
    match checkpoint {
        Some(offset) if offset <= high => StartFrom::Checkpoint(offset.max(low)),
        _ => StartFrom::Beginning,
    }
}

/// The changelog's low and high watermarks.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), RestoreError> {
    consumer.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT).map_err(|source| RestoreError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    })
}

/// Restores `backend` from `topic`-`partition` starting at `from`, up to the partition's end.
#[allow(clippy::too_many_arguments)]
pub fn restore<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    from: i64,
    high: i64,
    store: &str,
    backend: &dyn StoreBackend,
    metrics: &StreamsMetrics,
) -> Result<Restored, RestoreError> {
    let kafka = |source| RestoreError::Kafka { topic: topic.to_string(), partition, source };
    let started = Instant::now();
    let remaining_gauge = metrics.restore_remaining.with_label_values(&[store, &partition.to_string()]);
    remaining_gauge.set(high - from);
    if from >= high {
        remaining_gauge.set(0);
        return Ok(Restored { records: 0, next_offset: from });
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from)).map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    // The batch holds librdkafka's messages themselves (no copy of keys and values): RocksDB's
    // write batch copies them once, straight from the fetch buffers.
    let mut batch: Vec<rdkafka::message::BorrowedMessage<'_>> = Vec::with_capacity(RESTORE_BATCH_RECORDS);
    let mut records = 0u64;
    let mut next_offset = from;
    let mut last_progress = Instant::now();
    let mut last_log = Instant::now();
    let flush = |batch: &mut Vec<rdkafka::message::BorrowedMessage<'_>>| -> Result<(), RestoreError> {
        backend.restore_batch(&mut batch.iter().filter_map(|m| m.key().map(|k| (k, m.payload()))))?;
        batch.clear();
        Ok(())
    };
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                next_offset = message.offset() + 1;
                if message.key().is_some() {
                    batch.push(message);
                    records += 1;
                }
                if batch.len() >= RESTORE_BATCH_RECORDS {
                    flush(&mut batch)?;
                    remaining_gauge.set((high - next_offset).max(0));
                }
                last_progress = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(source)) => return Err(kafka(source)),
            None if last_progress.elapsed() > RESTORE_STALL_TIMEOUT => {
                return Err(RestoreError::Stalled {
                    topic: topic.to_string(),
                    partition,
                    offset: next_offset,
                })
            }
            None => {}
        }
        if last_log.elapsed() > PROGRESS_LOG_INTERVAL {
            tracing::info!(%topic, partition, restored = records, at = next_offset, end = high, "restoring");
            last_log = Instant::now();
        }
    }
    flush(&mut batch)?;
    backend.finish_restore()?;
    // Under read_committed the end may sit past the last record (transaction markers): the
    // consumer's position is the truth.
    if let Ok(position) = consumer.position() {
        if let Some(Offset::Offset(p)) = position.find_partition(topic, partition).map(|e| e.offset()) {
            next_offset = next_offset.max(p);
        }
    }
    consumer.unassign().map_err(kafka)?;
    remaining_gauge.set(0);
    metrics.restore_records.with_label_values(&[store]).inc_by(records);
    metrics.restore_duration.with_label_values(&[store]).observe(started.elapsed().as_secs_f64());
    tracing::info!(%topic, partition, records, next_offset, elapsed_ms = started.elapsed().as_millis() as u64, "restored");
    Ok(Restored { records, next_offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_offsets() {
        assert_eq!(start_from(None, 0, 10), StartFrom::Beginning);
        assert_eq!(start_from(Some(4), 0, 10), StartFrom::Checkpoint(4));
        assert_eq!(start_from(Some(10), 0, 10), StartFrom::Checkpoint(10));
        assert_eq!(start_from(Some(2), 5, 10), StartFrom::Checkpoint(5));
        assert_eq!(start_from(Some(11), 0, 10), StartFrom::Beginning, "a checkpoint past the end is foreign");
    }
}
