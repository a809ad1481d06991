//! Start-up checks and changelog topics, through the admin API.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigResource, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::{StreamsConfig, StreamsError};

/// Timeout of metadata and admin requests at start.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a topic created just before start may take to appear in the metadata.
const METADATA_PROPAGATION: Duration = Duration::from_secs(3);
/// How long an altered topic configuration may take to show in a broker's description (KRaft
/// applies it through the metadata log, a moment after the alter returns).
const CONFIG_PROPAGATION: Duration = Duration::from_secs(10);
/// Pause between two looks at a configuration that is still propagating.
const CONFIG_PROPAGATION_POLL: Duration = Duration::from_millis(100);
/// `delete.retention.ms` of the changelogs the runtime creates, and what a too-short one is
/// raised to: a day, Kafka's default, so tombstones outlive any restore and any short outage.
pub const CHANGELOG_DELETE_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest `delete.retention.ms` an existing changelog may keep. A restore from the
/// beginning must read a tombstone before the cleaner may drop it (Kafka's documentation of
/// `delete.retention.ms`), and a checkpoint is trusted only for half of it (see
/// [`checkpoint_outlived_tombstones`]): an hour leaves half an hour for both.
pub const MIN_CHANGELOG_DELETE_RETENTION: Duration = Duration::from_secs(60 * 60);

/// Changelog topic → its `delete.retention.ms`, as checked (or raised) at start.
pub type ChangelogRetention = BTreeMap<String, Duration>;

/// Partition counts of `topics`; an absent topic is an error naming it.
pub fn partition_counts(
    config: &StreamsConfig,
    topics: &[String],
) -> Result<BTreeMap<String, i32>, StreamsError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .create()
        .map_err(StreamsError::kafka("creating the metadata client"))?;
    let mut counts = BTreeMap::new();
    for topic in topics {
        // A topic created a moment ago may not be in the metadata yet: look again, boundedly.
        let deadline = std::time::Instant::now() + METADATA_PROPAGATION;
        loop {
            let metadata = consumer
                .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
                .map_err(StreamsError::kafka("reading topic metadata"))?;
            let found = metadata.topics().iter().find(|t| t.name() == topic);
            match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    counts.insert(topic.clone(), t.partitions().len() as i32);
                    break;
                }
                _ if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                _ => return Err(StreamsError::MissingTopic(topic.clone())),
            }
        }
    }
    Ok(counts)
}

/// The common partition count of the source topics, or the error naming every count.
pub fn copartitioned(counts: &BTreeMap<String, i32>) -> Result<i32, StreamsError> {
    let mut distinct: Vec<i32> = counts.values().copied().collect();
    distinct.sort();
    distinct.dedup();
    match distinct.as_slice() {
        [one] => Ok(*one),
        _ => Err(StreamsError::NotCopartitioned(counts.clone())),
    }
}

/// Creates the compacted changelog topics, checks an existing one has the task count of
/// partitions and a changelog's configuration (see [`check_changelog_config`]: a delete policy is
/// refused, a too-short tombstone retention is raised), and returns each changelog's
/// `delete.retention.ms`, which decides how old a checkpoint may be.
pub fn ensure_changelogs(
    config: &StreamsConfig,
    topics: &[String],
    partitions: i32,
) -> Result<ChangelogRetention, StreamsError> {
    if topics.is_empty() {
        return Ok(ChangelogRetention::new());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .create()
        .map_err(StreamsError::kafka("creating the admin client"))?;
    let retention_ms = CHANGELOG_DELETE_RETENTION.as_millis().to_string();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(t, partitions, TopicReplication::Fixed(config.changelog_replication_factor))
                .set("cleanup.policy", "compact")
                // Tombstones must outlive the slowest restore that could need them.
                .set("delete.retention.ms", &retention_ms)
                .set("min.compaction.lag.ms", "0")
                .set("segment.bytes", "67108864")
        })
        .collect();
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = futures_block_on(admin.create_topics(new.iter(), &options))
        .map_err(StreamsError::kafka("creating changelog topics"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "created changelog topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(StreamsError::Changelog { topic, reason: code.to_string() }),
        }
    }
    let counts = partition_counts(config, topics)?;
    for (topic, count) in counts {
        if count != partitions {
            return Err(StreamsError::Changelog {
                topic,
                reason: format!("has {count} partitions, the sources have {partitions}"),
            });
        }
    }
    let mut retention = ChangelogRetention::new();
    for topic in topics {
        retention.insert(topic.clone(), ensure_changelog_config(&admin, topic)?);
    }
    Ok(retention)
}

/// What is wrong with a changelog's configuration, and whether the runtime may mend it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigVerdict {
    /// Fit for a changelog; its `delete.retention.ms`.
    Fit(Duration),
    /// Tombstones may vanish too soon; raising `delete.retention.ms` loses nothing, so the
    /// runtime does it.
    RaiseRetention {
        /// What the topic has.
        found: Duration,
    },
    /// Not a compacted-only topic: records may have been deleted by retention already, which no
    /// configuration change brings back. Start refuses it.
    Refuse(String),
}

/// Judges a changelog's `cleanup.policy` and `delete.retention.ms` (as the broker describes them).
///
/// `min.compaction.lag.ms` and `max.compaction.lag.ms` are not judged: compaction only ever drops
/// a record that a later record of the same key supersedes, and never moves offsets, so neither
/// can make a restore wrong; only the tombstones' own retention can.
pub fn check_changelog_config(
    cleanup_policy: Option<&str>,
    delete_retention_ms: Option<&str>,
) -> ConfigVerdict {
    let policies: Vec<&str> =
        cleanup_policy.unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if !policies.contains(&"compact") || policies.contains(&"delete") {
        return ConfigVerdict::Refuse(format!(
            "cleanup.policy is {:?}, a changelog must be \"compact\" only: under \"delete\" old records \
             expire, and a restore would miss the keys they held. Delete the topic (its state is lost) \
             or set cleanup.policy=compact if no segment has been deleted yet",
            cleanup_policy.unwrap_or("")
        ));
    }
    let retention =
        delete_retention_ms.and_then(|ms| ms.trim().parse::<u64>().ok()).map(Duration::from_millis);
    match retention {
        Some(found) if found < MIN_CHANGELOG_DELETE_RETENTION => ConfigVerdict::RaiseRetention { found },
        Some(found) => ConfigVerdict::Fit(found),
        None => ConfigVerdict::Refuse(format!(
            "delete.retention.ms is {delete_retention_ms:?}, not a number of milliseconds"
        )),
    }
}

/// Whether a checkpoint written `age` ago may be behind a tombstone the cleaner has dropped since:
/// then restoring from it could bring a deleted key back, and the store must be rebuilt from the
/// changelog's beginning instead. A checkpoint is trusted for half of `delete.retention.ms`; the
/// other half is the restore's own time to read the tombstones.
pub fn checkpoint_outlived_tombstones(age: Duration, delete_retention: Duration) -> bool {
    age >= delete_retention / 2
}

/// The checkpointed offset of a store if it may be restored from: not when the checkpoint was
/// written `age` ago, longer than its changelog's `delete.retention.ms` allows (see
/// [`checkpoint_outlived_tombstones`]). `None` makes the caller wipe the store and restore it from
/// the changelog's beginning.
pub fn trusted_checkpoint(
    checkpoint: Option<i64>,
    age: Option<Duration>,
    delete_retention: Option<Duration>,
) -> Option<i64> {
    let offset = checkpoint?;
    match (age, delete_retention) {
        (Some(age), Some(retention)) if checkpoint_outlived_tombstones(age, retention) => {
            tracing::warn!(age_s = age.as_secs(), retention_s = retention.as_secs(), offset,
                "checkpoint older than half the changelog's delete.retention.ms: a tombstone after it may be gone; rebuilding the store from the changelog's beginning");
            None
        }
        _ => Some(offset),
    }
}

/// How long ago `path` was last written, if it exists.
pub fn file_age(path: &std::path::Path) -> Option<Duration> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|written| written.elapsed().ok())
}

/// Describes one changelog, refuses or mends it, and returns its `delete.retention.ms`.
fn ensure_changelog_config(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<Duration, StreamsError> {
    let described = describe_topic_config(admin, topic)?;
    let value = |name: &str| described.get(name).and_then(|e| e.value.clone());
    match check_changelog_config(value("cleanup.policy").as_deref(), value("delete.retention.ms").as_deref())
    {
        ConfigVerdict::Fit(retention) => Ok(retention),
        ConfigVerdict::Refuse(reason) => Err(StreamsError::Changelog { topic: topic.to_string(), reason }),
        ConfigVerdict::RaiseRetention { found } => {
            tracing::warn!(%topic, found_ms = found.as_millis() as u64,
                set_ms = CHANGELOG_DELETE_RETENTION.as_millis() as u64,
                "changelog keeps tombstones too briefly for a safe restore; raising delete.retention.ms");
            raise_retention(admin, topic, &described)?;
            // Read it back: the broker, not our request, says what holds now.
            let deadline = std::time::Instant::now() + CONFIG_PROPAGATION;
            loop {
                let after = describe_topic_config(admin, topic)?;
                let after_value = after.get("delete.retention.ms").and_then(|e| e.value.clone());
                match check_changelog_config(value("cleanup.policy").as_deref(), after_value.as_deref()) {
                    ConfigVerdict::Fit(retention) => return Ok(retention),
                    _ if std::time::Instant::now() < deadline => std::thread::sleep(CONFIG_PROPAGATION_POLL),
                    other => {
                        return Err(StreamsError::Changelog {
                            topic: topic.to_string(),
                            reason: format!(
                                "delete.retention.ms was not raised within {CONFIG_PROPAGATION:?} (still {after_value:?}): {other:?}"
                            ),
                        })
                    }
                }
            }
        }
    }
}

fn describe_topic_config(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<ConfigResource, StreamsError> {
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let specifier = ResourceSpecifier::Topic(topic);
    let mut results = futures_block_on(admin.describe_configs([&specifier], &options))
        .map_err(StreamsError::kafka("describing a changelog's configuration"))?;
    match results.pop() {
        Some(Ok(resource)) => Ok(resource),
        Some(Err(code)) => Err(StreamsError::Changelog {
            topic: topic.to_string(),
            reason: format!("describing its configuration: {code}"),
        }),
        None => Err(StreamsError::Changelog {
            topic: topic.to_string(),
            reason: "the broker described no configuration".to_string(),
        }),
    }
}

/// Sets `delete.retention.ms` to [`CHANGELOG_DELETE_RETENTION`]. AlterConfigs (the only alter rdkafka
/// wraps) replaces a topic's whole dynamic configuration, so every setting the topic has of its
/// own is sent again with the one changed.
fn raise_retention(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    described: &ConfigResource,
) -> Result<(), StreamsError> {
    let retention_ms = CHANGELOG_DELETE_RETENTION.as_millis().to_string();
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for entry in &described.entries {
        if entry.source == ConfigSource::DynamicTopic && !entry.is_sensitive {
            if let Some(value) = &entry.value {
                alter = alter.set(&entry.name, value);
            }
        }
    }
    alter = alter.set("delete.retention.ms", &retention_ms);
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = futures_block_on(admin.alter_configs([&alter], &options))
        .map_err(StreamsError::kafka("altering a changelog's configuration"))?;
    for result in results {
        if let Err((_, code)) = result {
            return Err(StreamsError::Changelog {
                topic: topic.to_string(),
                reason: format!("raising delete.retention.ms: {code}"),
            });
        }
    }
    Ok(())
}

/// Runs an admin future to completion on this (non-async) thread. rdkafka's admin futures are
/// completed by a background thread of their own, so no executor is needed.
fn futures_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copartitioning_is_checked() {
        let ok: BTreeMap<String, i32> = [("a".to_string(), 4), ("b".to_string(), 4)].into();
        assert_eq!(copartitioned(&ok).unwrap(), 4);
        let bad: BTreeMap<String, i32> = [("a".to_string(), 4), ("b".to_string(), 2)].into();
        let error = copartitioned(&bad).unwrap_err().to_string();
        assert!(error.contains("a") && error.contains("4") && error.contains("2"), "{error}");
    }

    #[test]
    fn a_changelog_must_be_compacted_only_and_keep_tombstones_long_enough() {
        let day = "86400000";
        assert_eq!(
            check_changelog_config(Some("compact"), Some(day)),
            ConfigVerdict::Fit(CHANGELOG_DELETE_RETENTION)
        );
        for refused in [Some("delete"), Some("compact,delete"), Some("delete, compact"), Some(""), None] {
            let verdict = check_changelog_config(refused, Some(day));
            assert!(
                matches!(&verdict, ConfigVerdict::Refuse(r) if r.contains("cleanup.policy")),
                "{refused:?}: {verdict:?}"
            );
        }
        assert_eq!(
            check_changelog_config(Some("compact"), Some("1000")),
            ConfigVerdict::RaiseRetention { found: Duration::from_secs(1) }
        );
        assert_eq!(
            check_changelog_config(Some("compact"), Some("3600000")),
            ConfigVerdict::Fit(MIN_CHANGELOG_DELETE_RETENTION),
            "the minimum itself is fit"
        );
        assert!(matches!(check_changelog_config(Some("compact"), Some("soon")), ConfigVerdict::Refuse(_)));
    }

    #[test]
    fn a_checkpoint_is_trusted_for_half_the_tombstone_retention() {
        let retention = Duration::from_secs(3600);
        assert!(!checkpoint_outlived_tombstones(Duration::from_secs(1799), retention));
        assert!(checkpoint_outlived_tombstones(Duration::from_secs(1800), retention));
        assert!(checkpoint_outlived_tombstones(Duration::from_secs(7200), retention));
        let hour = Some(retention);
        assert_eq!(trusted_checkpoint(Some(42), Some(Duration::from_secs(60)), hour), Some(42));
        assert_eq!(trusted_checkpoint(Some(42), Some(Duration::from_secs(1800)), hour), None);
        assert_eq!(trusted_checkpoint(None, Some(Duration::from_secs(60)), hour), None);
        assert_eq!(trusted_checkpoint(Some(42), None, hour), Some(42), "no file time: the offset decides");
    }
}
