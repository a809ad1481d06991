//! Kafka clients with their delivery-critical settings spelled out, and topic admin.
//!
//! Every client paystream builds starts from one of these functions, so that
//! `isolation.level`, `enable.auto.commit`, `enable.idempotence` and friends are decided
//! here once, with a reason, instead of drifting between processes.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::wait::{self, NotReady};

/// How long an admin request may take before we call it failed.
pub const ADMIN_TIMEOUT_MS: u64 = 30_000;

/// Partitions of every co-partitioned paystream topic. The partition is the unit of
/// scale (DESIGN.md): more instances than partitions sit idle.
pub const DEFAULT_PARTITIONS: i32 = 6;

/// Errors of the topic admin.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    #[error("deleting topic {topic}: {code}")]
    DeleteTopic { topic: String, code: RDKafkaErrorCode },
    #[error("topic {topic} exists with {actual} partitions, {expected} expected; co-partitioned topics must agree")]
    PartitionMismatch { topic: String, expected: i32, actual: i32 },
}

/// The settings every client shares.
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // A broker that is away is an operating condition, not a reason to hang forever.
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4");
    config
}

/// A consumer that sees only committed transactional records and never commits on its
/// own: offsets are committed by the caller after the output they cover is durable.
pub fn read_committed_consumer(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut config = base_config(bootstrap);
    config
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config
}

/// A transactional producer. One per processor instance with a stable
/// `transactional.id` (EOS v2): a restarted instance fences its predecessor.
pub fn transactional_producer(bootstrap: &str, transactional_id: &str) -> ClientConfig {
    let mut config = base_config(bootstrap);
    config
        .set("transactional.id", transactional_id)
        // Implied by transactional.id; spelled out because exactly-once depends on it.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A transaction left open by a crashed instance is aborted by the broker after
        // this long; the next instance with the same id fences it sooner.
        .set("transaction.timeout.ms", "60000")
        .set("linger.ms", "5")
        // Kafka's (Java's) murmur2 partitioner, so a key lands on the partition Debezium and
        // the Java clients would choose (librdkafka's default, CRC32, differs).
        .set("partitioner", "murmur2_random");
    config
}

/// An idempotent (non-transactional) producer: no duplicates from retries, `acks=all`.
pub fn idempotent_producer(bootstrap: &str) -> ClientConfig {
    let mut config = base_config(bootstrap);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // Same partitioner as Java's clients and Debezium: co-partitioning depends on it.
        .set("partitioner", "murmur2_random");
    config
}

/// A topic paystream needs, with its partitions and topic-level configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count; topics joined by key must have the same.
    pub partitions: i32,
    /// Topic-level settings such as `cleanup.policy`.
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    /// A delete-policy topic with `partitions` partitions.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self { name: name.into(), partitions, config: Vec::new() }
    }

    /// Adds a topic-level setting.
    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// The topics of the payment flow (DESIGN.md, "Topics"). All are keyed by paymentId and
/// co-partitioned; results and the DLQ are kept longer because they are audited.
pub fn payment_topics(partitions: i32) -> Vec<TopicSpec> {
    const WEEK_MS: &str = "604800000";
    const MONTH_MS: &str = "2592000000";
    vec![
        TopicSpec::new("payments.initiated", partitions).with_config("retention.ms", WEEK_MS),
        TopicSpec::new("payments.callbacks", partitions).with_config("retention.ms", WEEK_MS),
        TopicSpec::new("payments.provider-commands", partitions).with_config("retention.ms", WEEK_MS),
        TopicSpec::new("payments.dispatch-outcomes", partitions).with_config("retention.ms", WEEK_MS),
        TopicSpec::new("payments.timers", partitions).with_config("retention.ms", WEEK_MS),
        TopicSpec::new("payments.results", partitions).with_config("retention.ms", MONTH_MS),
        TopicSpec::new("payments.dlq", partitions).with_config("retention.ms", MONTH_MS),
        TopicSpec::new("payments.provider-requests", partitions).with_config("retention.ms", WEEK_MS),
        // Audited like the results: every discrepancy with the provider's ledger.
        TopicSpec::new("payments.reconciliation", partitions).with_config("retention.ms", MONTH_MS),
        // The read side: the latest view of every payment (compacted, so a new read database
        // can be filled from the beginning) and every payment's history, upserted by (paymentId, seq).
        TopicSpec::new("payments.view", partitions).with_config("cleanup.policy", "compact"),
        TopicSpec::new("payments.timeline", partitions).with_config("retention.ms", MONTH_MS),
        // Owners' cancel requests, a saga input like payments.initiated.
        TopicSpec::new("payments.cancel-requests", partitions).with_config("retention.ms", WEEK_MS),
        // Seed 004's Kafka door, keyed by orderId (not by paymentId: the orders service's key).
        // A month, like the results: the commands and their answers are audited.
        TopicSpec::new("pay.order", partitions).with_config("retention.ms", MONTH_MS),
        TopicSpec::new("order.paid", partitions).with_config("retention.ms", MONTH_MS),
        TopicSpec::new("order.payment_failed", partitions).with_config("retention.ms", MONTH_MS),
    ]
}

/// Debezium's change topics of the wallet database (`connect/wallet-cdc.json`), keyed by
/// the row's primary key. Compacted: the latest state of every user and wallet is kept
/// for as long as the row exists, so a new payment view can rebuild from the beginning.
pub fn cdc_topics(partitions: i32) -> Vec<TopicSpec> {
    ["wallet.public.users", "wallet.public.wallets"]
        .into_iter()
        .map(|name| TopicSpec::new(name, partitions).with_config("cleanup.policy", "compact"))
        .collect()
}

/// An admin client.
pub fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    base_config(bootstrap).create()
}

/// How long a newly created topic may take to appear in the metadata.
pub const METADATA_PROPAGATION_MS: u64 = 10_000;

/// Creates every topic that does not exist yet; an existing topic is accepted when its
/// partition count matches (a mismatch breaks co-partitioning and is an error).
pub async fn ensure_topics(bootstrap: &str, topics: &[TopicSpec]) -> Result<(), AdminError> {
    let admin = admin(bootstrap)?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|spec| {
            spec.config.iter().fold(
                NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(1)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_millis(ADMIN_TIMEOUT_MS)));
    for result in admin.create_topics(new_topics.iter(), &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::CreateTopic { topic, code }),
        }
    }
    for spec in topics {
        // A topic just created can be missing from the metadata for a moment (0 partitions):
        // wait for it, boundedly, before judging its partition count.
        let mut actual = partition_count(bootstrap, &spec.name).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(METADATA_PROPAGATION_MS);
        while actual == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            actual = partition_count(bootstrap, &spec.name).await?;
        }
        if actual != spec.partitions {
            return Err(AdminError::PartitionMismatch {
                topic: spec.name.clone(),
                expected: spec.partitions,
                actual,
            });
        }
    }
    Ok(())
}

/// Deletes topics; unknown ones are ignored (used by tests to clean up after themselves).
pub async fn delete_topics(bootstrap: &str, names: &[&str]) -> Result<(), AdminError> {
    let admin = admin(bootstrap)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_millis(ADMIN_TIMEOUT_MS)));
    for result in admin.delete_topics(names, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(AdminError::DeleteTopic { topic, code }),
        }
    }
    Ok(())
}

/// The number of partitions of `topic`, from cluster metadata.
pub async fn partition_count(bootstrap: &str, topic: &str) -> Result<i32, KafkaError> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    // Metadata requests block; keep them off the async runtime.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = base_config(&bootstrap).create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_millis(ADMIN_TIMEOUT_MS))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
    })
    .await
    // The blocking task only panics on a bug in librdkafka's binding; report it as a failed
    // metadata request rather than taking the caller down.
    .unwrap_or(Err(KafkaError::MetadataFetch(RDKafkaErrorCode::Fail)))
}

/// Waits until a broker answers a metadata request.
pub async fn wait_until_ready(bootstrap: &str, timeout: Duration) -> Result<(), NotReady> {
    let what = format!("Kafka at {bootstrap}");
    wait::until_ready(what, timeout, || {
        let bootstrap = bootstrap.to_owned();
        async move {
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let consumer: BaseConsumer = base_config(&bootstrap).create().map_err(|e| e.to_string())?;
                let metadata =
                    consumer.fetch_metadata(None, Duration::from_secs(2)).map_err(|e| e.to_string())?;
                if metadata.brokers().is_empty() {
                    return Err("metadata lists no broker".to_owned());
                }
                Ok(())
            })
            .await
            .map_err(|join| join.to_string())?
        }
    })
    .await
}

/// A consumer context for readers that ask to be told when they reach the end of a partition
/// (`enable.partition.eof`): librdkafka also reports that end as a client error, which the
/// default context logs at error level. This one logs every other error as the default does.
pub struct EndOfPartitionIsNoError;

impl rdkafka::ClientContext for EndOfPartitionIsNoError {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition =
            matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF));
        if !end_of_partition {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndOfPartitionIsNoError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_topics_are_co_partitioned_and_unique() {
        let topics = payment_topics(DEFAULT_PARTITIONS);
        assert!(topics.iter().all(|t| t.partitions == DEFAULT_PARTITIONS));
        let mut names: Vec<_> = topics.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), topics.len());
        assert!(names.contains(&"payments.results"));
        assert!(names.contains(&"payments.dlq"));
    }

    #[test]
    fn consumer_config_never_auto_commits_and_reads_committed() {
        let config = read_committed_consumer("b:9092", "g");
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        let producer = transactional_producer("b:9092", "t-1");
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
    }
}
