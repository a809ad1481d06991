//! Start-up checks and changelog topics, through the admin API.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::{StreamsConfig, StreamsError};

/// Timeout of metadata and admin requests at start.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a topic created just before start may take to appear in the metadata.
const METADATA_PROPAGATION: Duration = Duration::from_secs(3);

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

/// Creates the compacted changelog topics (or leaves them as they are if they exist) and checks
/// an existing one has the task count of partitions.
pub fn ensure_changelogs(
    config: &StreamsConfig,
    topics: &[String],
    partitions: i32,
) -> Result<(), StreamsError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .create()
        .map_err(StreamsError::kafka("creating the admin client"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(t, partitions, TopicReplication::Fixed(config.changelog_replication_factor))
                .set("cleanup.policy", "compact")
                // Tombstones must outlive the slowest restore that could need them.
                .set("delete.retention.ms", "86400000")
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
}
