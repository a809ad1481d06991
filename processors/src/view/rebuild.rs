//! Rebuilding the view: a fresh application replays every input from the beginning, and is
//! swapped in once it has caught up.
//!
//! **How.** `paystream view rebuild` runs the view's topology under a new application id,
//! `paystream-view-r<unix seconds>`: a consumer group without committed offsets (so every input
//! is read from its earliest offset), a changelog and a state directory of its own. It writes to
//! the live `payments.view` and `payments.timeline`, beside the live view: the fold is a function
//! of each payment's set of events ([`super::fold`]), so the rebuild publishes, for every payment,
//! the very views and timeline entries the live view published (same `version`, same `seq`);
//! on the way it publishes lower versions too, which a reader keeping the highest `version` per
//! payment ignores. It has caught up when its committed offsets reach the end offsets every
//! input had when it started ([`Ends`], [`remaining`]). Then it stops (its last commit and
//! checkpoint are written) and **swaps itself in**: it writes its application id into the
//! pointer file `<state dir>/paystream-view.application-id` ([`swap_in`], write-then-rename).
//! A running `paystream view` rereads the pointer every few seconds; when it changes, it stops
//! its old application and starts the new one, which opens the rebuilt RocksDB state (or
//! restores it from the new changelog on another machine) and goes on from the rebuild's
//! offsets. The old application's consumer group, changelog and state directory are left for a
//! rollback (write the old id back into the pointer); delete them when the new view is trusted.
//!
//! With several machines, the pointer is deployment configuration rather than a local file:
//! set `PAYSTREAM_VIEW_APPLICATION_ID` to the id the rebuild printed and roll the instances.
//!
//! **What a rebuild sees** is what the inputs still hold: `payments.initiated` keeps a week,
//! `payments.results` a month. A payment older than its inputs' retention is rebuilt without the
//! events that expired (a lower `version`), so a reader that keeps the highest version keeps the
//! live view's record of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paystream_stack::kafka::read_committed_consumer;
use paystream_topology::{Streams, StreamsConfig, StreamsError, Topology};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// The application id of the first view, and the prefix of rebuilt ones.
pub const BASE_APPLICATION_ID: &str = "paystream-view";
/// The pointer to the live view's application id, in the state directory.
pub const POINTER_FILE: &str = "paystream-view.application-id";
/// How long one offset or watermark lookup may take.
pub const KAFKA_TIMEOUT_MS: u64 = 10_000;
/// How often a rebuild checks whether it has caught up.
pub const CATCH_UP_POLL_MS: u64 = 500;
/// How often a rebuild logs its progress.
pub const PROGRESS_LOG_INTERVAL_MS: u64 = 10_000;

/// Why a rebuild, or reading its pointer, failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: KafkaError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Streams(#[from] StreamsError),
    #[error("the rebuild stopped before it caught up")]
    Stopped,
    #[error("the rebuild made no progress for {stalled_ms} ms with {remaining} records to go")]
    Stalled { stalled_ms: u64, remaining: i64 },
    #[error("the pointer {path} names no application id")]
    EmptyPointer { path: PathBuf },
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> RebuildError {
    let context = context.into();
    move |source| RebuildError::Kafka { context, source }
}

/// A new application id for a rebuild started at `unix_seconds`.
pub fn fresh_application_id(unix_seconds: u64) -> String {
    format!("{BASE_APPLICATION_ID}-r{unix_seconds}")
}

fn pointer(state_dir: &Path) -> PathBuf {
    state_dir.join(POINTER_FILE)
}

/// The application id the live view runs under: the pointer's, or [`BASE_APPLICATION_ID`]
/// before any rebuild.
pub fn current_application_id(state_dir: &Path) -> Result<String, RebuildError> {
    let path = pointer(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => Err(RebuildError::EmptyPointer { path }),
        Ok(text) => Ok(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BASE_APPLICATION_ID.to_owned()),
        Err(source) => Err(RebuildError::Io { path, source }),
    }
}

/// Makes `application_id` the live view's: the pointer is written to a temporary file, synced
/// and renamed over the old one, so a reader sees the old id or the new one, never half of it.
pub fn swap_in(state_dir: &Path, application_id: &str) -> Result<(), RebuildError> {
    let path = pointer(state_dir);
    let temporary = state_dir.join(format!("{POINTER_FILE}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RebuildError::Io { path, source }
    };
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(format!("{application_id}\n").as_bytes()).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
    }
    std::fs::rename(&temporary, &path).map_err(io(&path))
}

/// One input partition's offsets when the rebuild started: it has caught up with the partition
/// when its committed offset reaches `high`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub topic: String,
    pub partition: i32,
    /// The first offset still held (earlier ones expired).
    pub low: i64,
    /// The end offset at the start.
    pub high: i64,
}

/// The end offsets of every partition of `topics` now: what "caught up" means for a rebuild
/// started now. Empty partitions are left out.
pub fn ends(bootstrap: &str, topics: &[&str]) -> Result<Vec<End>, RebuildError> {
    let consumer: BaseConsumer = read_committed_consumer(bootstrap, "paystream-view-ends")
        .create()
        .map_err(kafka("creating a consumer"))?;
    let timeout = Duration::from_millis(KAFKA_TIMEOUT_MS);
    let mut ends = Vec::new();
    for topic in topics {
        let metadata =
            consumer.fetch_metadata(Some(topic), timeout).map_err(kafka(format!("metadata of {topic}")))?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), timeout)
                .map_err(kafka(format!("watermarks of {topic}-{}", partition.id())))?;
            if high > low {
                ends.push(End { topic: (*topic).to_owned(), partition: partition.id(), low, high });
            }
        }
    }
    Ok(ends)
}

/// Records group `group` still has to consume to reach `ends` (0: caught up). Under
/// read_committed the consumer's position, which the runtime commits, steps over transaction
/// markers, so a caught-up partition's committed offset is its end offset.
pub fn remaining(bootstrap: &str, group: &str, ends: &[End]) -> Result<i64, RebuildError> {
    let consumer: BaseConsumer =
        read_committed_consumer(bootstrap, group).create().map_err(kafka("creating a consumer"))?;
    let mut partitions = TopicPartitionList::new();
    for end in ends {
        partitions.add_partition(&end.topic, end.partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_millis(KAFKA_TIMEOUT_MS))
        .map_err(kafka(format!("committed offsets of {group}")))?;
    Ok(ends
        .iter()
        .map(|end| {
            let at = match committed.find_partition(&end.topic, end.partition).map(|p| p.offset()) {
                Some(Offset::Offset(offset)) => offset,
                _ => end.low,
            };
            (end.high - at.max(end.low)).max(0)
        })
        .sum())
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// The rebuilt view's application id.
    pub application_id: String,
    /// Input records there were to replay when it started.
    pub records: i64,
    /// How long it took to catch up.
    pub elapsed: Duration,
}

/// Runs `topology` under `config` (a fresh application id) until it has caught up with the end
/// offsets `inputs` had at the start, then stops it cleanly. It gives up when its progress stalls
/// for `stall_timeout` (a broker away, a poison record under the fail policy): a rebuild that
/// never finishes must say so rather than leave the old view in place silently. Swapping it in
/// is the caller's step ([`swap_in`]), taken only after this returns `Ok`.
pub async fn rebuild<K, V>(
    topology: Topology<K, V>,
    config: StreamsConfig,
    inputs: &[&str],
    stall_timeout: Duration,
) -> Result<Rebuilt, RebuildError>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let started = Instant::now();
    let (bootstrap, group) = (config.bootstrap_servers.clone(), config.application_id.clone());
    let topics: Vec<String> = inputs.iter().map(|t| (*t).to_owned()).collect();
    let ends =
        blocking(move || ends(&bootstrap, &topics.iter().map(String::as_str).collect::<Vec<_>>())).await?;
    let records: i64 = ends.iter().map(|e| e.high - e.low).sum();
    tracing::info!(application_id = %group, records, partitions = ends.len(), "rebuilding the payment view from the beginning");
    let streams = blocking(move || Streams::start(topology, config).map_err(RebuildError::from)).await?;
    let caught_up = catch_up(&streams, ends, stall_timeout).await;
    let closed = blocking(move || streams.close().map_err(RebuildError::from)).await;
    caught_up?;
    closed?;
    Ok(Rebuilt { application_id: group, records, elapsed: started.elapsed() })
}

/// Waits until `streams`' group has consumed up to `ends`.
async fn catch_up(streams: &Streams, ends: Vec<End>, stall_timeout: Duration) -> Result<(), RebuildError> {
    let (bootstrap, group) =
        (streams.config().bootstrap_servers.clone(), streams.config().application_id.clone());
    let ends = std::sync::Arc::new(ends);
    let (mut best, mut progressed, mut logged) = (i64::MAX, Instant::now(), Instant::now());
    loop {
        if streams.is_finished() {
            return Err(RebuildError::Stopped);
        }
        let (bootstrap, group, ends) = (bootstrap.clone(), group.clone(), ends.clone());
        let left = blocking(move || remaining(&bootstrap, &group, &ends)).await?;
        if left == 0 {
            return Ok(());
        }
        if left < best {
            (best, progressed) = (left, Instant::now());
        } else if progressed.elapsed() > stall_timeout {
            return Err(RebuildError::Stalled {
                stalled_ms: u64::try_from(progressed.elapsed().as_millis()).unwrap_or(u64::MAX),
                remaining: left,
            });
        }
        if logged.elapsed() > Duration::from_millis(PROGRESS_LOG_INTERVAL_MS) {
            tracing::info!(remaining = left, "rebuilding the payment view");
            logged = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(CATCH_UP_POLL_MS)).await;
    }
}

/// Runs blocking Kafka admin work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RebuildError> + Send + 'static,
) -> Result<T, RebuildError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| RebuildError::Streams(StreamsError::Panicked))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pointer_names_the_base_application_until_a_rebuild_is_swapped_in() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(current_application_id(dir.path()).unwrap(), BASE_APPLICATION_ID);
        let rebuilt = fresh_application_id(1_800_000_000);
        assert_eq!(rebuilt, "paystream-view-r1800000000");
        swap_in(dir.path(), &rebuilt).unwrap();
        assert_eq!(current_application_id(dir.path()).unwrap(), rebuilt);
        swap_in(dir.path(), BASE_APPLICATION_ID).unwrap();
        assert_eq!(
            current_application_id(dir.path()).unwrap(),
            BASE_APPLICATION_ID,
            "a rollback is a swap back"
        );
        std::fs::write(dir.path().join(POINTER_FILE), "  \n").unwrap();
        assert!(matches!(current_application_id(dir.path()), Err(RebuildError::EmptyPointer { .. })));
    }
}
