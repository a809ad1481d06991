//! The Kafka side of the runtime: a consumer group member that owns tasks, commits their work in
//! Kafka transactions (exactly-once v2), keeps their stores in RocksDB with changelogs, restores
//! them when they move, and shuts down cleanly.
//!
//! One stream thread per instance (Kafka Streams' `num.stream.threads = 1`); run more instances
//! with the same `application_id` to scale out.
//!
//! The pieces carry Kafka Streams' names, so that a reader who knows Kafka Streams finds each job
//! where they expect it, and each file has one job:
//! - `stream_thread.rs`: the loop (poll, process, punctuate, commit) and the rebalance callbacks;
//! - `task_manager.rs`: the owned tasks' life cycle (assign, revoke, open, close);
//! - `state_directory.rs`: task directories, checkpoints, the instance id, wipes;
//! - `restore.rs`: reading a changelog back into a store;
//! - `producer.rs`: the transactional producer and the classes of its failures;
//! - `commit.rs`: commit and recovery;
//! - `shutdown.rs`: the one stop mechanism (a request, and the thread's end, on a watch channel);
//! - `clients.rs` and `admin.rs`: the Kafka clients' settings and topic administration (and the
//!   changelogs' configuration checks);
//! - `backoff.rs`: the one retry policy (capped exponential back-off) of every retriable error;
//! - `faults.rs`: commit and restore faults a failure test injects at the producer's commit and
//!   the restore consumer's poll.

mod admin;
mod backoff;
mod clients;
mod commit;
pub mod faults;
mod partition_group;
mod producer;
pub mod restore;
mod shutdown;
pub mod state_directory;
mod stream_thread;
mod task_manager;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _, DefaultConsumerContext};
use rdkafka::error::KafkaError;

pub use producer::flush_in_steps;
pub use shutdown::ShutdownHandle;

use crate::dlq::ErrorPolicy;
use crate::metrics::StreamsMetrics;
use crate::query::{KeyOwner, QueryRegistry, StoreQuery};
use crate::topology::Topology;

/// Delivery semantics of the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessingGuarantee {
    /// Kafka transactions: outputs, changelog records and consumed offsets commit atomically.
    ExactlyOnceV2,
    /// No transactions: outputs are flushed, then offsets committed. A crash repeats the work
    /// since the last commit. For comparison and for idempotent pipelines only.
    AtLeastOnce,
}

/// Settings of a runtime instance. `StreamsConfig::new` gives Kafka Streams' defaults where they
/// apply.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// Group id, prefix of changelog topics and of the state directory.
    pub application_id: String,
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Root of local state: `<state_dir>/<application_id>/<task>/<store>`.
    pub state_dir: PathBuf,
    /// Stable identity of this instance, part of `transactional.id`. `None`: a UUID kept in the
    /// state directory, so a restarted instance fences its own crashed predecessor at once.
    pub instance_id: Option<String>,
    /// Exactly-once v2 or at-least-once.
    pub guarantee: ProcessingGuarantee,
    /// How often work is committed (Kafka Streams under EOS: 100 ms).
    pub commit_interval: Duration,
    /// How often store checkpoints are written (each one syncs the RocksDB WAL).
    pub checkpoint_interval: Duration,
    /// `transaction.timeout.ms`.
    pub transaction_timeout: Duration,
    /// `session.timeout.ms`: how soon a dead instance's tasks move.
    pub session_timeout: Duration,
    /// Longest wait in one consumer poll; bounds wall-clock punctuation lateness.
    pub poll_timeout: Duration,
    /// Kafka Streams' `max.task.idle.ms`: how long a task with records buffered waits for one of
    /// its input partitions that has none and is caught up (nothing on the broker to fetch)
    /// before it processes the others. 0 (the default, Kafka Streams' too): a caught-up
    /// partition never holds the task back; one that is behind is still waited for, up to
    /// `UNFETCHED_DATA_WAIT` (500 ms). See topology/README.md, "Input order".
    pub max_task_idle: Duration,
    /// `statistics.interval.ms`, which feeds the consumer-lag gauge.
    pub statistics_interval: Duration,
    /// `linger.ms` of the producer.
    pub linger: Duration,
    /// What to do with poison records.
    pub error_policy: ErrorPolicy,
    /// `auto.offset.reset` for partitions without a committed offset.
    pub auto_offset_reset: String,
    /// Replication factor of changelog topics (`-1`: the broker's default).
    pub changelog_replication_factor: i32,
    /// Extra librdkafka settings for every client (e.g. security).
    pub kafka_overrides: Vec<(String, String)>,
}

impl StreamsConfig {
    /// Defaults for `application_id` on `bootstrap_servers`, state under `state_dir`.
    pub fn new(application_id: &str, bootstrap_servers: &str, state_dir: &Path) -> Self {
        Self {
            application_id: application_id.to_string(),
            bootstrap_servers: bootstrap_servers.to_string(),
            state_dir: state_dir.to_path_buf(),
            instance_id: None,
            guarantee: ProcessingGuarantee::ExactlyOnceV2,
            commit_interval: Duration::from_millis(100),
            checkpoint_interval: Duration::from_secs(5),
            transaction_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            poll_timeout: Duration::from_millis(50),
            max_task_idle: Duration::ZERO,
            statistics_interval: Duration::from_secs(5),
            linger: Duration::from_millis(5),
            error_policy: ErrorPolicy::Fail,
            auto_offset_reset: "earliest".to_string(),
            changelog_replication_factor: -1,
            kafka_overrides: Vec::new(),
        }
    }

    /// This application's directory under the state dir.
    pub fn app_dir(&self) -> PathBuf {
        self.state_dir.join(&self.application_id)
    }

    /// The instance id (`Streams::start` resolves `None` before any client is made).
    pub fn instance(&self) -> &str {
        self.instance_id.as_deref().unwrap_or("unset")
    }

    /// The producer's `transactional.id`: `<application_id>-<instance_id>`.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.application_id, self.instance())
    }
}

/// Why the runtime could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// A Kafka client call failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: &'static str,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
    /// A source topic does not exist.
    #[error("source topic {0} does not exist (create it first; the runtime creates only changelogs)")]
    MissingTopic(String),
    /// Source topics differ in partition count.
    #[error("source topics are not co-partitioned: {0:?}")]
    NotCopartitioned(BTreeMap<String, i32>),
    /// A changelog topic could not be created or has the wrong shape.
    #[error("changelog {topic}: {reason}")]
    Changelog {
        /// The topic.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// The assignment did not give this instance the same partitions of every source topic.
    #[error("assignment is not co-partitioned: {0}")]
    Assignment(String),
    /// A task failed (poison record under `ErrorPolicy::Fail`, a store, a processor).
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    /// Restoring a store failed.
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    /// A store could not be opened or checkpointed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The state directory could not be prepared.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No store of that name in the topology.
    #[error("no store named {0}")]
    UnknownStore(String),
    /// The stream thread panicked.
    #[error("the stream thread panicked")]
    Panicked,
}

impl StreamsError {
    fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> StreamsError {
        move |source| StreamsError::Kafka { context, source }
    }
}

/// What the instance is doing, after Kafka Streams' `KafkaStreams.State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamsState {
    /// Validated, not yet in the group.
    Created,
    /// Joining the group or restoring stores.
    Rebalancing,
    /// Processing.
    Running,
    /// Shutdown requested; committing and closing.
    PendingShutdown,
    /// Stopped cleanly.
    NotRunning,
    /// Stopped on an error (see `join`).
    Error,
}

/// A running instance of a topology: the handle to stop it, query its stores and read its metrics.
pub struct Streams {
    /// The stream thread.
    thread: Option<JoinHandle<Result<(), StreamsError>>>,
    /// Asks the thread to stop; learns of its end.
    shutdown: ShutdownHandle,
    /// Kept for `key_owner`'s group descriptions, so a query does not build a client.
    metadata: BaseConsumer<DefaultConsumerContext>,
    /// Current state.
    state: Arc<Mutex<StreamsState>>,
    /// Metrics registry and collectors.
    metrics: StreamsMetrics,
    /// Store backends of owned tasks, for queries.
    registry: QueryRegistry,
    /// Partitions of the source topics.
    partitions: i32,
    /// Store names in the topology.
    stores: Vec<String>,
    /// One source topic, whose assignment says who owns a partition.
    source_topic: String,
    /// The configuration, with the instance id resolved.
    config: StreamsConfig,
}

impl Streams {
    /// Validates `topology` against the cluster (sources exist and are co-partitioned; changelogs
    /// are created), then starts the stream thread.
    pub fn start<K, V>(topology: Topology<K, V>, mut config: StreamsConfig) -> Result<Self, StreamsError>
    where
        K: Clone + Send + 'static,
        V: Clone + Send + 'static,
    {
        let app_dir = config.app_dir();
        state_directory::create_app_dir(&app_dir)?;
        if config.instance_id.is_none() {
            config.instance_id = Some(state_directory::instance_id(&app_dir)?);
        }
        let counts = admin::partition_counts(&config, &topology.source_topics())?;
        let partitions = admin::copartitioned(&counts)?;
        let changelogs: Vec<String> = topology
            .stores()
            .iter()
            .filter(|s| s.logged)
            .map(|s| s.changelog_topic(&config.application_id))
            .collect();
        let changelog_retention = admin::ensure_changelogs(&config, &changelogs, partitions)?;
        tracing::info!(application_id = %config.application_id, instance = config.instance_id.as_deref().unwrap_or(""),
            partitions, topology = %topology.describe(), "starting");

        let metrics = StreamsMetrics::new(&config.application_id);
        let registry: QueryRegistry = Arc::new(RwLock::new(BTreeMap::new()));
        let shutdown = ShutdownHandle::new();
        let metadata = clients::watermark_client(&config, DefaultConsumerContext)
            .map_err(StreamsError::kafka("creating the metadata client"))?;
        let state = Arc::new(Mutex::new(StreamsState::Created));
        let stores = topology.stores().iter().map(|s| s.name.clone()).collect();
        let source_topic = topology.source_topics().into_iter().next().unwrap_or_default();
        let thread = {
            let env = stream_thread::Env {
                topology,
                config: config.clone(),
                metrics: metrics.clone(),
                registry: registry.clone(),
                shutdown: shutdown.clone(),
                state: state.clone(),
                changelog_retention,
            };
            std::thread::Builder::new()
                .name(format!("{}-stream", config.application_id))
                .spawn(move || stream_thread::run(env))
                .map_err(|source| StreamsError::StateDir { path: app_dir, source })?
        };
        Ok(Self {
            thread: Some(thread),
            shutdown,
            metadata,
            state,
            metrics,
            registry,
            partitions,
            stores,
            source_topic,
            config,
        })
    }

    /// Asks the instance to stop: finish the in-flight commit, close stores, leave the group.
    pub fn request_shutdown(&self) {
        self.shutdown.request();
    }

    /// A handle that stops the instance (for signal handlers) and awaits its end.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits for the stream thread to end and returns why it ended.
    pub fn join(mut self) -> Result<(), StreamsError> {
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| StreamsError::Panicked)?,
            None => Ok(()),
        }
    }

    /// Runs until `shutdown` completes (a SIGTERM, say) or the stream thread ends on its own, then
    /// stops cleanly: the in-flight commit finishes, stores are closed, the group is left.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), StreamsError> {
        let handle = self.shutdown.clone();
        tokio::select! {
            () = shutdown => {}
            () = handle.stopped() => {}
        }
        // Joining blocks until the last commit is done: off the async workers.
        tokio::task::spawn_blocking(move || self.close()).await.map_err(|_| StreamsError::Panicked)?
    }

    /// Stops the instance and waits for it.
    pub fn close(self) -> Result<(), StreamsError> {
        self.request_shutdown();
        self.join()
    }

    /// Whether the stream thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// What the instance is doing.
    pub fn state(&self) -> StreamsState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-only handle to store `name` across this instance's tasks.
    pub fn store(&self, name: &str) -> Result<StoreQuery, StreamsError> {
        if !self.stores.iter().any(|s| s == name) {
            return Err(StreamsError::UnknownStore(name.to_string()));
        }
        Ok(StoreQuery::new(name, self.partitions, self.registry.clone()))
    }

    /// Partitions (tasks) this instance owns now.
    pub fn assigned_partitions(&self) -> Vec<i32> {
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        let mut partitions: Vec<i32> = registry.values().flat_map(|m| m.keys().copied()).collect();
        partitions.sort();
        partitions.dedup();
        partitions
    }

    /// Which instance of the application owns `key` (its serialized bytes), asking the group
    /// coordinator: the member whose assignment holds the key's partition of the first source
    /// topic. Use it to route an interactive query to the instance that can answer it.
    pub fn key_owner(&self, key: &[u8]) -> Result<KeyOwner, StreamsError> {
        let partition = crate::partitioner::partition_for_key(key, self.partitions);
        let groups = self
            .metadata
            .fetch_group_list(Some(&self.config.application_id), Duration::from_secs(10))
            .map_err(StreamsError::kafka("describing the consumer group"))?;
        let topic = self.source_topic.as_str();
        let prefix = format!("{}-", self.config.application_id);
        for group in groups.groups() {
            for member in group.members() {
                let Some(bytes) = member.assignment() else { continue };
                let Ok(assignment) = crate::query::decode_assignment(bytes) else { continue };
                if assignment.get(topic).is_some_and(|ps| ps.contains(&partition)) {
                    let instance = member
                        .client_id()
                        .strip_prefix(&prefix)
                        .and_then(|rest| rest.strip_suffix("-consumer"))
                        .map(str::to_string);
                    return Ok(KeyOwner {
                        partition,
                        instance_id: instance,
                        host: Some(member.client_host().to_string()),
                    });
                }
            }
        }
        Ok(KeyOwner { partition, instance_id: None, host: None })
    }

    /// The runtime's metrics.
    pub fn metrics(&self) -> &StreamsMetrics {
        &self.metrics
    }

    /// The configuration in use (with the instance id resolved).
    pub fn config(&self) -> &StreamsConfig {
        &self.config
    }
}

impl Drop for Streams {
    /// Dropping a running instance stops it rather than leaving a thread behind. On a tokio
    /// worker it does not wait for the stop (joining would block the worker for the last commit):
    /// the stream thread finishes on its own, and whatever it does not finish before the process
    /// exits is aborted by the broker and redone from the committed state. Elsewhere it waits.
    /// Use `close` or `run_until` to wait for a clean stop and learn how it went.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shutdown.request();
            if tokio::runtime::Handle::try_current().is_err() {
                let _ = thread.join();
            }
        }
    }
}
