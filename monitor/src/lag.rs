//! Consumer lag of every consumer group in the cluster, from the broker's own bookkeeping.
//!
//! Processes report their own lag (the topology runtime's `paystream_topology_consumer_lag`),
//! but only while they run, and Kafka Connect's or an operator's groups report none. Here the
//! groups are listed (ListGroups/DescribeGroups), each one's committed offsets fetched
//! (OffsetFetch, without joining the group: the consumer used for it never subscribes), and
//! compared with the partitions' end (ListOffsets, read_committed: the last stable offset).
//!
//! Lag in seconds is the age of the first record the group has not consumed: the record at the
//! committed offset is read (read_committed, no group) and its timestamp subtracted from now. It
//! is a measurement, not an interpolation: a group that stopped an hour ago behind one record
//! shows an hour. A partition whose only records past the committed offset are transaction
//! markers (a transactional producer's topic, fully consumed) has nothing to read: 0 s.
//!
//! Everything here is blocking (librdkafka's calls are); callers run it off the async workers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paystream_stack::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// How long one metadata, group-list or offset request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading the first unconsumed record of one group's partitions of one topic may take
/// before its time lag is reported unknown.
pub const TIME_LAG_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// What one time-lag read fetches at most per partition: only the first record is wanted.
const TIME_LAG_PARTITION_FETCH_BYTES: &str = "65536";
/// The group id of the readers that assign partitions (librdkafka wants one for `assign`); they
/// never subscribe nor commit, so the coordinator never lists it.
pub const READER_GROUP: &str = "paystream-monitor-reader";

/// Errors of a lag collection.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the collection task failed: {0}")]
    Task(String),
}

/// One group's position on one partition.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset (the next record it will read).
    pub committed: i64,
    /// The partition's end for a read_committed reader (last stable offset).
    pub end: i64,
    /// `end - committed`, never negative.
    pub records: i64,
    /// Age of the first unconsumed record; 0 when there is none; `None` when it could not be
    /// read in time.
    pub seconds: Option<f64>,
}

/// One consumer group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupLag {
    pub group: String,
    /// `Stable`, `Empty`, `PreparingRebalance`, `Dead`, ... as the coordinator reports it.
    pub state: String,
    /// `consumer` for consumers, `connect` for Kafka Connect's worker group.
    pub protocol_type: String,
    pub members: usize,
    /// Partitions the group has committed offsets for, by topic and partition.
    pub partitions: Vec<PartitionLag>,
}

impl GroupLag {
    /// Records behind, summed over its partitions.
    pub fn total_records(&self) -> i64 {
        self.partitions.iter().map(|p| p.records).sum()
    }

    /// The oldest unconsumed record's age over its partitions (0 when caught up).
    pub fn max_seconds(&self) -> Option<f64> {
        self.partitions.iter().map(|p| p.seconds).try_fold(0.0_f64, |max, s| s.map(|s| max.max(s)))
    }
}

/// Internal topics (`__consumer_offsets`, `__transaction_state`) are not read by groups.
fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

fn consumer(bootstrap: &str, group: Option<&str>) -> Result<BaseConsumer, KafkaError> {
    let mut config = kafka::base_config(bootstrap);
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("max.partition.fetch.bytes", TIME_LAG_PARTITION_FETCH_BYTES)
        .set("group.id", group.unwrap_or(READER_GROUP));
    config.create()
}

/// Groups whose offsets and time lag are read at the same time (each read waits on the broker,
/// not on the CPU).
pub const PARALLEL_GROUPS: usize = 16;

/// What the group listing says of one group (owned: the listing's data is not `Sync`).
struct Listed {
    name: String,
    state: String,
    protocol_type: String,
    members: usize,
}

/// Lag of every group the coordinator knows, in group order.
pub fn collect(bootstrap: &str) -> Result<Vec<GroupLag>, LagError> {
    let admin = consumer(bootstrap, None)?;
    let metadata = admin.fetch_metadata(None, REQUEST_TIMEOUT)?;
    let mut all = TopicPartitionList::new();
    for topic in metadata.topics().iter().filter(|t| !is_internal(t.name())) {
        for partition in topic.partitions() {
            all.add_partition(topic.name(), partition.id());
        }
    }
    let listed: Vec<Listed> = admin
        .fetch_group_list(None, REQUEST_TIMEOUT)?
        .groups()
        .iter()
        .map(|info| Listed {
            name: info.name().to_owned(),
            state: info.state().to_owned(),
            protocol_type: info.protocol_type().to_owned(),
            members: info.members().len(),
        })
        .collect();
    let ends = Mutex::new(BTreeMap::new());
    let mut groups = Vec::with_capacity(listed.len());
    for chunk in listed.chunks(PARALLEL_GROUPS) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|info| scope.spawn(|| group_lag(bootstrap, &admin, &all, &ends, info)))
                .collect();
            for (info, handle) in chunk.iter().zip(handles) {
                let mut group = GroupLag {
                    group: info.name.clone(),
                    state: info.state.clone(),
                    protocol_type: info.protocol_type.clone(),
                    members: info.members,
                    partitions: Vec::new(),
                };
                match handle.join() {
                    Ok(Ok(partitions)) => group.partitions = partitions,
                    // One group's offsets unreadable (its coordinator moving) is that group's gap.
                    Ok(Err(error)) => tracing::warn!(group = info.name, %error, "offsets not read"),
                    Err(_) => tracing::warn!(group = info.name, "offset reader panicked"),
                }
                groups.push(group);
            }
        });
    }
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(groups)
}

/// One group's committed partitions, with their ends (cached in `ends` across groups) and time lag.
fn group_lag(
    bootstrap: &str,
    admin: &BaseConsumer,
    all: &TopicPartitionList,
    ends: &Mutex<BTreeMap<(String, i32), i64>>,
    info: &Listed,
) -> Result<Vec<PartitionLag>, LagError> {
    // Connect's worker group coordinates workers; it commits no offsets.
    if info.protocol_type == "connect" || all.count() == 0 {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let committed = consumer(bootstrap, Some(&info.name))?.committed_offsets(all.clone(), REQUEST_TIMEOUT)?;
    let fetched = started.elapsed();
    let mut partitions = Vec::new();
    for element in committed.elements() {
        let Offset::Offset(offset) = element.offset() else { continue };
        let key = (element.topic().to_owned(), element.partition());
        let cached = ends.lock().ok().and_then(|ends| ends.get(&key).copied());
        let end = match cached {
            Some(end) => end,
            None => {
                let (_, high) = admin.fetch_watermarks(&key.0, key.1, REQUEST_TIMEOUT)?;
                if let Ok(mut ends) = ends.lock() {
                    ends.insert(key.clone(), high);
                }
                high
            }
        };
        let records = (end - offset).max(0);
        partitions.push(PartitionLag {
            topic: key.0,
            partition: key.1,
            committed: offset,
            end,
            records,
            seconds: (records == 0).then_some(0.0),
        });
    }
    let ended = started.elapsed();
    read_time_lag(bootstrap, &mut partitions);
    tracing::debug!(group = info.name, ?fetched, ?ended, total = ?started.elapsed(), "group read");
    Ok(partitions)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Fills `seconds` of the partitions that are behind by reading the record at the committed
/// offset, one consumer per topic (the end-of-partition event names the partition, not the topic).
fn read_time_lag(bootstrap: &str, partitions: &mut [PartitionLag]) {
    let mut topics: Vec<String> =
        partitions.iter().filter(|p| p.seconds.is_none()).map(|p| p.topic.clone()).collect();
    topics.dedup();
    for topic in topics {
        let mut assignment = TopicPartitionList::new();
        for p in partitions.iter().filter(|p| p.topic == topic && p.seconds.is_none()) {
            // An offset-only conversion cannot fail for a non-negative offset.
            let _ = assignment.add_partition_offset(&topic, p.partition, Offset::Offset(p.committed));
        }
        let ages = match first_record_ages(bootstrap, &assignment) {
            Ok(ages) => ages,
            Err(error) => {
                tracing::debug!(%error, topic, "time lag not read");
                continue;
            }
        };
        for p in partitions.iter_mut().filter(|p| p.topic == topic) {
            if let Some(age) = ages.get(&p.partition) {
                p.seconds = Some(*age);
            }
        }
    }
}

/// Age in seconds of the first readable record of each assigned partition (0 for one that is at
/// its end), for those resolved within [`TIME_LAG_READ_TIMEOUT`].
fn first_record_ages(
    bootstrap: &str,
    assignment: &TopicPartitionList,
) -> Result<BTreeMap<i32, f64>, KafkaError> {
    let reader = consumer(bootstrap, None)?;
    reader.assign(assignment)?;
    let wanted = assignment.count();
    let mut ages = BTreeMap::new();
    let deadline = Instant::now() + TIME_LAG_READ_TIMEOUT;
    while ages.len() < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::debug!(?assignment, resolved = ?ages, "time lag read stopped at its bound");
            break;
        }
        match reader.poll(left) {
            Some(Ok(message)) => {
                let age_ms = message.timestamp().to_millis().map_or(0, |ts| (now_ms() - ts).max(0));
                // Milliseconds to seconds: lossless for any realistic age.
                #[allow(clippy::cast_precision_loss)]
                ages.entry(message.partition()).or_insert(age_ms as f64 / 1000.0);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ages.entry(partition).or_insert(0.0);
            }
            Some(Err(error)) => return Err(error),
            None => {}
        }
    }
    Ok(ages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(records: i64, seconds: Option<f64>) -> PartitionLag {
        PartitionLag { topic: "t".into(), partition: 0, committed: 0, end: records, records, seconds }
    }

    #[test]
    fn a_group_sums_records_and_keeps_the_oldest_age_unknown_if_any_is() {
        let mut group = GroupLag {
            group: "g".into(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            members: 1,
            partitions: vec![partition(3, Some(2.5)), partition(0, Some(0.0)), partition(4, Some(7.0))],
        };
        assert_eq!(group.total_records(), 7);
        assert_eq!(group.max_seconds(), Some(7.0));
        group.partitions.push(partition(1, None));
        assert_eq!(group.max_seconds(), None);
    }
}
