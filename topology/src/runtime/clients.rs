//! The runtime's Kafka clients, each built in one function with every delivery-critical setting
//! spelled out.

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::producer::{BaseProducer, ProducerContext};

use super::{ProcessingGuarantee, StreamsConfig};

fn base(config: &StreamsConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    for (key, value) in &config.kafka_overrides {
        client.set(key, value);
    }
    client
}

/// The main consumer: joins the group `application.id`, never commits by itself.
pub fn consumer<C: ConsumerContext>(config: &StreamsConfig, context: C) -> KafkaResult<BaseConsumer<C>> {
    let mut client = base(config);
    client
        .set("group.id", &config.application_id)
        .set("client.id", format!("{}-{}-consumer", config.application_id, config.instance()))
        // Offsets move only inside transactions (EOS) or by explicit commits after the outputs
        // are durable (at-least-once).
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never read output of aborted or open transactions.
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", &config.auto_offset_reset)
        // Range assigns partition N of every co-partitioned topic to the same member, which is
        // what makes one task per partition number possible.
        .set("partition.assignment.strategy", "range")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
        .set("max.poll.interval.ms", "300000")
        // librdkafka pre-fetches up to 64 MiB by default; 16 MiB keeps a stream thread busy
        // for well over a commit interval at any rate this machine sustains, at a quarter of
        // the memory.
        .set("queued.max.messages.kbytes", "16384")
        // Feeds the consumer-lag gauge.
        .set("statistics.interval.ms", config.statistics_interval.as_millis().to_string());
    client.create_with_context(context)
}

/// The restore consumer: no group, assigned one changelog partition at a time, stops at the end.
pub fn restore_consumer<C: ConsumerContext>(
    config: &StreamsConfig,
    context: C,
) -> KafkaResult<BaseConsumer<C>> {
    let mut client = base(config);
    client
        .set("group.id", format!("{}-restore", config.application_id))
        .set("client.id", format!("{}-{}-restore", config.application_id, config.instance()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // A position the changelog no longer holds (truncated beyond it) must be an error, which
        // wipes the store and restores it from the beginning; librdkafka's default (`latest`)
        // would silently jump to the end, and the store would miss everything in between.
        .set("auto.offset.reset", "error")
        // The end-of-partition event comes only with a fetch response that starts at the end, and
        // the broker holds an empty fetch for up to this long: a changelog that ends in a commit
        // marker (every one under EOS) costs that wait once per restore. librdkafka's 500 ms
        // default made that half a second; while records flow, the broker answers at once anyway.
        .set("fetch.wait.max.ms", RESTORE_FETCH_WAIT.as_millis().to_string())
        // Bigger fetches than the default 1 MiB per partition: restoration is a bulk read.
        .set("fetch.max.bytes", "67108864")
        .set("max.partition.fetch.bytes", "16777216")
        // Each changelog partition has its own queue (read in batches, see `restore.rs`), and
        // these bounds apply per partition. librdkafka stops fetching a partition whose queue
        // holds `queued.min.messages` (100,000 by default: fewer than one 16 MiB fetch of small
        // records) and then waits `fetch.queue.backoff.ms` (1 s by default) before it looks
        // again, although restoration drains a fetch in a fraction of that: the restore sat idle
        // most of the time. The queue is bounded by bytes instead, and looked at again soon.
        .set("queued.min.messages", RESTORE_QUEUED_MIN_MESSAGES.to_string())
        .set("queued.max.messages.kbytes", RESTORE_QUEUED_MAX_KBYTES.to_string())
        .set("fetch.queue.backoff.ms", RESTORE_FETCH_QUEUE_BACKOFF.as_millis().to_string());
    client.create_with_context(context)
}

/// Records per changelog partition the restore consumer keeps fetched ahead at least: more
/// than `RESTORE_QUEUED_MAX_KBYTES` holds, so the byte bound is the one that applies.
const RESTORE_QUEUED_MIN_MESSAGES: u32 = 10_000_000;
/// Kibibytes per changelog partition the restore consumer fetches ahead at most (one more fetch
/// of `max.partition.fetch.bytes` may overshoot it): 16 MiB, as the main consumer's whole queue.
const RESTORE_QUEUED_MAX_KBYTES: u32 = 16_384;
/// How soon the restore consumer looks again at a partition whose queue was full.
const RESTORE_FETCH_QUEUE_BACKOFF: Duration = Duration::from_millis(10);

/// Longest time the broker holds a restore fetch that has no records yet.
pub const RESTORE_FETCH_WAIT: Duration = Duration::from_millis(10);

/// A client for metadata only: group descriptions (who owns a key) and high watermarks. It reads
/// `read_uncommitted` because librdkafka's end-offset lookups carry the client's isolation level:
/// a `read_committed` client is told the last stable offset instead of the high watermark.
pub fn watermark_client<C: ConsumerContext>(
    config: &StreamsConfig,
    context: C,
) -> KafkaResult<BaseConsumer<C>> {
    let mut client = base(config);
    client
        .set("client.id", format!("{}-{}-metadata", config.application_id, config.instance()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted");
    client.create_with_context(context)
}

/// The producer: transactional under EOS (one per instance, `transactional.id` stable per
/// instance so a restart fences its own zombie at once), idempotent under at-least-once.
pub fn producer<C: ProducerContext>(config: &StreamsConfig, context: C) -> KafkaResult<BaseProducer<C>> {
    let mut client = base(config);
    client
        .set("client.id", format!("{}-{}-producer", config.application_id, config.instance()))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Kafka's (Java's) partitioner: Debezium and the Java clients put a key on the same
        // partition as we do. librdkafka's default (CRC32) would break co-partitioning.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("compression.type", "lz4");
    if config.guarantee == ProcessingGuarantee::ExactlyOnceV2 {
        client
            .set("transactional.id", config.transactional_id())
            // A crashed instance's open transaction blocks read_committed readers of its
            // partitions until this expires; Kafka Streams uses 10 s under EOS too.
            .set("transaction.timeout.ms", config.transaction_timeout.as_millis().to_string());
    }
    client.create_with_context(context)
}

/// The restore consumer's context: reaching the end of a partition is how restoration knows it
/// is done, not an error worth an ERROR line (librdkafka reports it as one).
#[derive(Debug, Clone, Default)]
pub struct QuietContext;
impl ClientContext for QuietContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let end_of_partition =
            matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF));
        if !end_of_partition {
            tracing::error!(%error, reason, "restore consumer error");
        }
    }
}
impl ConsumerContext for QuietContext {}

/// librdkafka's timeouts for transactional calls.
pub const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(30);
