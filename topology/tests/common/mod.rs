//! Topologies and the real-broker harness shared by the driver tests and the runtime tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paystream_stack::kafka::{idempotent_producer, TopicSpec};
use paystream_stack::settings::StackSettings;
use paystream_stack::testkit::{self, unique, Received};
use paystream_topology::runtime::StreamsState;
use paystream_topology::{Streams, StreamsConfig};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use paystream_topology::topology::Serialized;
use paystream_topology::{
    BoxError, ProcessError, Processor, ProcessorContext, PunctuationId, PunctuationType, RawRecord, Record,
    Retriable, StoreSpec, Topology,
};

/// A value that makes the counting processor refuse the record.
pub const POISON: &str = "poison";

pub fn utf8(raw: &RawRecord) -> Result<(String, String), BoxError> {
    let key = String::from_utf8(raw.key.clone().unwrap_or_default())?;
    let value = String::from_utf8(raw.value.clone().unwrap_or_default())?;
    Ok((key, value))
}

pub fn to_bytes(record: &Record<String, String>) -> Result<Serialized, BoxError> {
    Ok((Some(record.key.clone().into_bytes()), Some(record.value.clone().into_bytes())))
}

/// Counts records per key in store `counts` and emits the new count: the outputs of one key
/// must be exactly 1, 2, …, n under exactly-once, whatever crashes.
pub struct Count;

impl Processor<String, String> for Count {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        if record.value == POISON {
            return Err(ProcessError::poison(format!("value {POISON:?} is refused")));
        }
        let store = ctx.store("counts")?;
        let count = match store.get(record.key.as_bytes())? {
            Some(bytes) => parse_count(&bytes)?,
            None => 0,
        } + 1;
        store.put(record.key.as_bytes(), count.to_string().as_bytes())?;
        ctx.forward(record.with_value(count.to_string()));
        Ok(())
    }
}

fn parse_count(bytes: &[u8]) -> Result<u64, ProcessError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProcessError::Fatal(format!("corrupt count {bytes:?}").into()))
}

/// `in` → `count` (store `counts`) → `out`.
pub fn counting(input: &str, output: &str) -> Topology<String, String> {
    let mut builder = Topology::builder();
    builder
        .add_source("in", &[input], utf8)
        .add_processor("count", || Count, &["in"])
        .add_state_store(StoreSpec::persistent("counts"), &["count"])
        .add_sink("out", output, to_bytes, &["count"]);
    builder.build().expect("valid topology")
}

/// Emits `wall:<t>` on every wall-clock punctuation and `stream:<t>` on every stream-time one.
pub struct Ticker {
    pub wall: Duration,
    pub stream: Duration,
    wall_id: Option<PunctuationId>,
}

impl Ticker {
    pub fn new(wall: Duration, stream: Duration) -> Self {
        Self { wall, stream, wall_id: None }
    }
}

impl Processor<String, String> for Ticker {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<(), ProcessError> {
        self.wall_id = Some(ctx.schedule(self.wall, PunctuationType::WallClock));
        ctx.schedule(self.stream, PunctuationType::StreamTime);
        Ok(())
    }

    fn process(
        &mut self,
        _: Record<String, String>,
        _: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    fn punctuate(
        &mut self,
        id: PunctuationId,
        timestamp_ms: i64,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        let kind = if Some(id) == self.wall_id { "wall" } else { "stream" };
        let key = format!("p{}", ctx.partition());
        ctx.forward(Record::new(key, format!("{kind}:{timestamp_ms}"), timestamp_ms));
        Ok(())
    }
}

/// `in` → `tick` → `out`.
pub fn ticking(input: &str, output: &str, wall: Duration, stream: Duration) -> Topology<String, String> {
    let mut builder = Topology::builder();
    builder
        .add_source("in", &[input], utf8)
        .add_processor("tick", move || Ticker::new(wall, stream), &["in"])
        .add_sink("out", output, to_bytes, &["tick"]);
    builder.build().expect("valid topology")
}

/// A value prefix that makes [`Flaky`] fail retriably before it decodes the record.
pub const FLAKY: &str = "flaky";

/// A record's identity: topic, partition, offset.
type RecordId = (String, i32, i64);

/// A deserializer whose dependency is away for a while: each record whose value starts with
/// [`FLAKY`] fails `failures` times with a [`Retriable`] error (counted per topic, partition and
/// offset, so a retry of the same record counts on), then decodes like [`utf8`].
#[derive(Clone)]
pub struct Flaky {
    failures: u32,
    /// Retriable failures so far, per record.
    failed: Arc<Mutex<HashMap<RecordId, u32>>>,
}

impl Flaky {
    pub fn new(failures: u32) -> Self {
        Self { failures, failed: Arc::default() }
    }

    pub fn deserialize(&self, raw: &RawRecord) -> Result<(String, String), BoxError> {
        if raw.value.as_deref().is_some_and(|v| v.starts_with(FLAKY.as_bytes())) {
            let mut failed = self.failed.lock().unwrap();
            let count = failed.entry((raw.topic.clone(), raw.partition, raw.offset)).or_insert(0);
            if *count < self.failures {
                *count += 1;
                return Err(Retriable::boxed(format!(
                    "registry away (failure {count} of offset {})",
                    raw.offset
                )));
            }
        }
        utf8(raw)
    }

    /// Retriable failures handed out so far, over all records.
    pub fn failures_so_far(&self) -> u32 {
        self.failed.lock().unwrap().values().sum()
    }
}

/// `in` (through `flaky`) → `count` (store `counts`) → `out`.
pub fn flaky_counting(input: &str, output: &str, flaky: Flaky) -> Topology<String, String> {
    let mut builder = Topology::builder();
    builder
        .add_source("in", &[input], move |raw: &RawRecord| flaky.deserialize(raw))
        .add_processor("count", || Count, &["in"])
        .add_state_store(StoreSpec::persistent("counts"), &["count"])
        .add_sink("out", output, to_bytes, &["count"]);
    builder.build().expect("valid topology")
}

/// How long filling a changelog may take to be acknowledged.
const FILL_FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes `count` records `big<i>` → `1` straight to partition `partition` of `topic` (a
/// changelog, as a previous owner would have left it).
pub fn fill_changelog(settings: &StackSettings, topic: &str, partition: i32, count: usize) {
    let producer: BaseProducer = idempotent_producer(&settings.kafka_bootstrap)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    for i in 0..count {
        let key = format!("big{i}");
        let mut record = BaseRecord::to(topic).partition(partition).key(&key).payload("1");
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("filling the changelog: {error}"),
            }
        }
    }
    producer.flush(FILL_FLUSH_TIMEOUT).expect("flushing the changelog records");
}

// ---------------------------------------------------------------------------------------------
// The real-broker harness: a fresh topic set, an instance started on it and awaited, its
// outputs read back and checked.

/// How long a test waits for the runtime to join its group and restore.
pub const RUNNING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for expected output (or for a store to catch up with its changelog).
pub const OUTPUT_TIMEOUT: Duration = Duration::from_secs(90);
/// The instances' `session.timeout.ms` in tests: a dead instance's partitions move within
/// seconds, not the default 10.
pub const TEST_SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How often a wait looks at its condition again.
const WAIT_STEP: Duration = Duration::from_millis(50);
/// How long a test producer's flush may take.
const PRODUCER_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A test's own topics on the shared broker: `<prefix>.<unique>.<suffix>` each, and the
/// application id derived from the same unique base, so that no two tests (or runs) meet.
pub struct TestTopics {
    /// The stack the topics live on.
    pub settings: StackSettings,
    /// `<prefix>.<unique>`: every topic's name starts with it.
    pub base: String,
    /// The application id: the base with dots as dashes (changelogs are `<app>-<store>-changelog`).
    pub app: String,
}

impl TestTopics {
    /// Creates the topics `(suffix, partitions)` under a fresh unique base.
    pub async fn create(prefix: &str, topics: &[(&str, i32)]) -> Self {
        let settings = testkit::kafka_stack().await;
        let base = unique(prefix);
        let created = Self { app: base.replace('.', "-"), base, settings };
        let specs: Vec<TopicSpec> = topics
            .iter()
            .map(|(suffix, partitions)| TopicSpec::new(created.name(suffix), *partitions))
            .collect();
        paystream_stack::kafka::ensure_topics(&created.settings.kafka_bootstrap, &specs)
            .await
            .expect("creating test topics");
        created
    }

    /// The full name of topic `suffix`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.base)
    }

    /// An instance's configuration: this application on the stack's broker, state under
    /// `state_dir`, a short session so that failovers are quick.
    pub fn config(&self, state_dir: &Path) -> StreamsConfig {
        let mut config = StreamsConfig::new(&self.app, &self.settings.kafka_bootstrap, state_dir);
        config.session_timeout = TEST_SESSION_TIMEOUT;
        config
    }
}

/// Logs of the runtime, into the test's captured output (`RUST_LOG=paystream_topology=info`
/// shows what it did about each fault; warnings by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Waits for `condition`, polling; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < timeout, "gave up after {timeout:?} waiting for {what}");
        std::thread::sleep(WAIT_STEP);
    }
}

/// Waits until `streams` is `Running` (joined, every task restored); panics if it stops first.
pub fn wait_running(streams: &Streams) {
    let started = Instant::now();
    while streams.state() != StreamsState::Running {
        assert!(!streams.is_finished(), "the runtime stopped before running");
        assert!(
            started.elapsed() < RUNNING_TIMEOUT,
            "runtime not RUNNING after {RUNNING_TIMEOUT:?}: {:?}",
            streams.state()
        );
        std::thread::sleep(WAIT_STEP);
    }
}

/// Starts an instance and waits until it is `Running`.
pub fn start_running<K, V>(topology: paystream_topology::Topology<K, V>, config: StreamsConfig) -> Streams
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let streams = Streams::start(topology, config).expect("starting the instance");
    wait_running(&streams);
    streams
}

/// An idempotent producer for a test's input.
pub fn producer(settings: &StackSettings) -> BaseProducer {
    idempotent_producer(&settings.kafka_bootstrap).create().expect("producer")
}

/// Flushes a test producer.
pub fn flush(producer: &BaseProducer) {
    producer.flush(PRODUCER_FLUSH_TIMEOUT).expect("flush");
}

/// A `consume_until` condition: at least `expected` records read.
pub fn total_reached(expected: usize) -> impl Fn(&[Received]) -> bool {
    move |r: &[Received]| r.len() >= expected
}

/// Per key, the counts the counting topology output, in order.
pub fn counts_by_key(records: &[Received]) -> BTreeMap<String, Vec<u64>> {
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in records {
        let key = String::from_utf8(r.key.clone().expect("keyed output")).expect("utf-8 key");
        by_key.entry(key).or_default().push(r.value_str().parse().expect("a count"));
    }
    by_key
}

/// Every key has exactly the outputs 1..=n: no duplicate, no gap, and no key never sent.
pub fn assert_exactly_once(records: &[Received], expected: &BTreeMap<String, u64>) {
    let by_key = counts_by_key(records);
    for (key, n) in expected {
        let seen = by_key.get(key).cloned().unwrap_or_default();
        let want: Vec<u64> = (1..=*n).collect();
        assert_eq!(seen, want, "key {key}: outputs must be exactly 1..={n}, no duplicate, no gap");
    }
    assert_eq!(by_key.len(), expected.len(), "no output for a key never sent");
}
