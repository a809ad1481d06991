//! The runtime against the real local Kafka: exactly-once under a kill, changelog restoration,
//! rebalancing between two instances, dead letters, punctuators, start-up validation.
//!
//! Needs the local stack (`dev/up`); each test names what it waits for and gives up with a clear
//! message after a bounded time.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{
    assert_exactly_once, counting, fill_changelog, producer, start_running, ticking, total_reached, wait_for,
    wait_running, TestTopics, OUTPUT_TIMEOUT, POISON, RUNNING_TIMEOUT,
};
use paystream_stack::settings::StackSettings;
use paystream_stack::testkit::{self, consume_until, unique, Received};
use paystream_topology::dlq::{HEADER_DETAIL, HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_TOPIC};
use paystream_topology::partitioner::partition_for_key;
use paystream_topology::runtime::StreamsState;
use paystream_topology::store::UNLIMITED;
use paystream_topology::{ErrorPolicy, ProcessingGuarantee, Streams, StreamsConfig, StreamsError};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Extra polling after the expected output, to catch duplicates.
const SETTLE: Duration = Duration::from_secs(2);

struct Topics {
    settings: StackSettings,
    input: String,
    output: String,
    dlq: String,
    app: String,
    harness: TestTopics,
}

impl Topics {
    async fn new(prefix: &str, partitions: i32) -> Self {
        let harness = TestTopics::create(
            &format!("it.topology.{prefix}"),
            &[("in", partitions), ("out", partitions), ("dlq", 1)],
        )
        .await;
        Topics {
            settings: harness.settings.clone(),
            input: harness.name("in"),
            output: harness.name("out"),
            dlq: harness.name("dlq"),
            app: harness.app.clone(),
            harness,
        }
    }

    fn config(&self, state_dir: &Path) -> StreamsConfig {
        let mut config = self.harness.config(state_dir);
        config.error_policy = ErrorPolicy::DeadLetter { topic: self.dlq.clone() };
        config
    }

    async fn cleanup(&self) {
        let changelog = format!("{}-counts-changelog", self.app);
        let _ = paystream_stack::kafka::delete_topics(
            &self.settings.kafka_bootstrap,
            &[&self.input, &self.output, &self.dlq, &changelog],
        )
        .await;
    }
}

fn send(producer: &BaseProducer, topic: &str, key: &str, value: &[u8], timestamp_ms: Option<i64>) {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    if let Some(ts) = timestamp_ms {
        record = record.timestamp(ts);
    }
    producer.send(record).map_err(|(e, _)| e).expect("send");
    producer.poll(Duration::ZERO);
}

// ---------------------------------------------------------------------------------------------
// Exactly-once under a kill, in a child process.

/// Environment variables of the child process.
const CHILD_BOOTSTRAP: &str = "TOPOLOGY_CHILD_BOOTSTRAP";
const CHILD_APP: &str = "TOPOLOGY_CHILD_APP";
const CHILD_INPUT: &str = "TOPOLOGY_CHILD_INPUT";
const CHILD_OUTPUT: &str = "TOPOLOGY_CHILD_OUTPUT";
const CHILD_STATE: &str = "TOPOLOGY_CHILD_STATE";
const CHILD_INSTANCE: &str = "TOPOLOGY_CHILD_INSTANCE";

/// Not a test of its own: the child process the kill test starts (`--ignored --exact`).
#[test]
#[ignore = "run by exactly_once_survives_kill_9_between_produce_and_commit as a child process"]
fn child_counting_app() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set by the parent test"));
    // The child's log shows the parent's output what the runtime did (fencing, restores).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut config = StreamsConfig::new(&env(CHILD_APP), &env(CHILD_BOOTSTRAP), Path::new(&env(CHILD_STATE)));
    // Long intervals: a kill almost surely lands while a transaction holds produced but
    // uncommitted output.
    config.commit_interval = Duration::from_millis(1500);
    config.instance_id = Some(env(CHILD_INSTANCE));
    let streams = Streams::start(counting(&env(CHILD_INPUT), &env(CHILD_OUTPUT)), config).expect("start");
    let shutdown = streams.shutdown_handle();
    // SIGTERM → clean shutdown, as a deployment would send.
    let mut signals = signal_hook_like::Term::new();
    while !streams.is_finished() {
        if signals.received() {
            shutdown.request();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    streams.join().expect("clean stop");
}

/// A minimal SIGTERM latch for the child, with tokio's signal handling on a small runtime.
mod signal_hook_like {
    pub struct Term {
        rx: std::sync::mpsc::Receiver<()>,
    }
    impl Term {
        pub fn new() -> Self {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                    term.recv().await;
                });
                let _ = tx.send(());
            });
            Self { rx }
        }
        pub fn received(&mut self) -> bool {
            self.rx.try_recv().is_ok()
        }
    }
}

fn spawn_child(topics: &Topics, state: &Path) -> Child {
    spawn_instance(topics, state, "child")
}

fn spawn_instance(topics: &Topics, state: &Path, instance: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--ignored", "--exact", "child_counting_app", "--nocapture", "--test-threads=1"])
        .env(CHILD_BOOTSTRAP, &topics.settings.kafka_bootstrap)
        .env(CHILD_APP, &topics.app)
        .env(CHILD_INPUT, &topics.input)
        .env(CHILD_OUTPUT, &topics.output)
        .env(CHILD_STATE, state)
        .env(CHILD_INSTANCE, instance)
        .spawn()
        .expect("starting the child process")
}

fn poll_count(consumer: &BaseConsumer, seen: &mut Vec<Received>) {
    while let Some(result) = consumer.poll(Duration::from_millis(20)) {
        let m = result.expect("consume");
        use rdkafka::message::Message;
        seen.push(Received {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: Vec::new(),
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_survives_kill_9_between_produce_and_commit() {
    let topics = Topics::new("eos", 3).await;
    let state = tempfile::tempdir().unwrap();
    let producer = producer(&topics.settings);
    let keys = 12;
    let rounds = 60;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();

    let mut child = spawn_child(&topics, state.path());
    let uncommitted = testkit::consumer(&topics.settings, &topics.output, "read_uncommitted");
    let committed = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let (mut seen_uncommitted, mut seen_committed) = (Vec::new(), Vec::new());

    // Feed records at a steady pace until output is visible to read_uncommitted that
    // read_committed does not see yet: produced, not committed. Kill -9 right then.
    let deadline = Instant::now() + OUTPUT_TIMEOUT;
    let mut sent = 0;
    loop {
        assert!(Instant::now() < deadline, "no uncommitted output appeared within {OUTPUT_TIMEOUT:?}");
        let key = format!("k{}", sent % keys);
        send(&producer, &topics.input, &key, b"x", None);
        *expected.entry(key).or_default() += 1;
        sent += 1;
        producer.flush(Duration::from_secs(10)).unwrap();
        poll_count(&uncommitted, &mut seen_uncommitted);
        poll_count(&committed, &mut seen_committed);
        if !seen_committed.is_empty() && seen_uncommitted.len() > seen_committed.len() + 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let at_kill = (seen_uncommitted.len(), seen_committed.len());

    // More input while it is down, then a restart on the same state directory.
    for i in 0..keys * rounds / 4 {
        let key = format!("k{}", i % keys);
        send(&producer, &topics.input, &key, b"x", None);
        *expected.entry(key).or_default() += 1;
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let mut child = spawn_child(&topics, state.path());
    let total: u64 = expected.values().sum();
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let outputs = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(total as usize));
    assert_exactly_once(&outputs, &expected);

    // read_uncommitted saw the killed transaction's output, which the committed view never shows.
    let raw = testkit::consumer(&topics.settings, &topics.output, "read_uncommitted");
    let everything = consume_until(&raw, OUTPUT_TIMEOUT, SETTLE, total_reached(total as usize + 1));
    assert!(
        everything.len() > outputs.len(),
        "the kill landed between produce and commit: {} records written, {} committed (at kill: {at_kill:?})",
        everything.len(),
        outputs.len()
    );

    // SIGTERM: a clean stop with exit code 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert!(status.success(), "SIGTERM ends the child cleanly: {status:?}");
    topics.cleanup().await;
}

/// A zombie: instance A is paused (SIGSTOP) past its session and transaction timeouts while
/// B takes its partitions over; when A wakes up, its transaction must not commit (the
/// broker aborted it, and the group generation moved on), and it must rejoin rather than crash.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_zombie_is_fenced_and_nothing_is_duplicated() {
    let topics = Topics::new("zombie", 2).await;
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let producer = producer(&topics.settings);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut feed_some = |n: usize, offset: usize| {
        for i in 0..n {
            let key = format!("k{}", (i + offset) % 10);
            send(&producer, &topics.input, &key, b"x", None);
            *expected.entry(key).or_default() += 1;
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    let mut a = spawn_instance(&topics, state_a.path(), "a");
    feed_some(50, 0);
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let mut seen = consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(50));

    // Pause A in the middle of a transaction: input arrives, A produces, then stops.
    feed_some(20, 50);
    std::thread::sleep(Duration::from_millis(300));
    let pid = a.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());

    // B takes over after A's session times out, and A's open transaction is aborted.
    let mut b = spawn_instance(&topics, state_b.path(), "b");
    feed_some(30, 70);
    seen.extend(consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(50)));

    // A wakes up: whatever it had in flight must not commit; it rejoins.
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.try_wait().unwrap().is_none(), "the zombie rejoined instead of exiting");
    feed_some(20, 100);
    let total: u64 = expected.values().sum();
    seen.extend(consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, |r| r.len() + 100 >= total as usize));
    assert_exactly_once(&seen, &expected);

    for child in [&mut a, &mut b] {
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = wait_with_timeout(child, Duration::from_secs(30));
        assert!(status.success(), "clean stop: {status:?}");
    }
    topics.cleanup().await;
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("child did not stop within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------

async fn feed(topics: &Topics, keys: usize, per_key: usize, expected: &mut BTreeMap<String, u64>) {
    let producer = producer(&topics.settings);
    for round in 0..per_key {
        for k in 0..keys {
            let key = format!("k{k}");
            send(&producer, &topics.input, &key, format!("{round}").as_bytes(), None);
            *expected.entry(key).or_default() += 1;
        }
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_restored_from_its_changelog_equals_the_store_before() {
    let topics = Topics::new("restore", 2).await;
    let state = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    feed(&topics, 40, 5, &mut expected).await;

    let streams = start_running(counting(&topics.input, &topics.output), topics.config(state.path()));
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(200));
    let before = streams.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap();
    assert_eq!(before.len(), 40);
    assert!(before.iter().all(|(_, v)| v == b"5"), "every key counted 5 times: {before:?}");
    streams.close().unwrap();

    // Same state directory: restored from the checkpoint, nothing to replay.
    let streams = start_running(counting(&topics.input, &topics.output), topics.config(state.path()));
    assert_eq!(streams.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap(), before);
    let replayed = streams.metrics().restore_records.with_label_values(&["counts"]).get();
    assert_eq!(replayed, 0, "a clean checkpoint leaves nothing to restore");
    streams.close().unwrap();

    // A new machine: no local state; everything comes from the changelog.
    let fresh = tempfile::tempdir().unwrap();
    let streams = start_running(counting(&topics.input, &topics.output), topics.config(fresh.path()));
    let after = streams.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap();
    assert_eq!(after, before, "restored store equals the store before");
    assert!(streams.metrics().restore_records.with_label_values(&["counts"]).get() >= 40);

    // And processing goes on from there.
    let mut more = BTreeMap::new();
    feed(&topics, 40, 1, &mut more).await;
    // (The reader already consumed the first 200.)
    let outputs = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(40));
    assert_eq!(outputs.len(), 40);
    assert!(outputs.iter().all(|r| r.value_str() == "6"), "{outputs:?}");
    streams.close().unwrap();
    topics.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_split_the_partitions_and_the_survivor_takes_over() {
    let topics = Topics::new("rebalance", 4).await;
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_running(counting(&topics.input, &topics.output), topics.config(state_a.path()));
    let b = Streams::start(counting(&topics.input, &topics.output), topics.config(state_b.path())).unwrap();
    let started = Instant::now();
    while !(a.assigned_partitions().len() == 2
        && b.assigned_partitions().len() == 2
        && b.state() == StreamsState::Running)
    {
        assert!(
            started.elapsed() < RUNNING_TIMEOUT,
            "no 2/2 split: a={:?} b={:?}",
            a.assigned_partitions(),
            b.assigned_partitions()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut all: Vec<i32> = a.assigned_partitions().into_iter().chain(b.assigned_partitions()).collect();
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3]);

    let mut expected = BTreeMap::new();
    feed(&topics, 40, 3, &mut expected).await;
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let mut seen = consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(120));
    // Interactive queries: each key is answered by the instance that owns its partition.
    let (qa, qb) = (a.store("counts").unwrap(), b.store("counts").unwrap());
    for key in expected.keys() {
        let meta = qa.metadata_for_key(key.as_bytes());
        assert_eq!(meta.partition, partition_for_key(key.as_bytes(), 4));
        let owner = if meta.local { &qa } else { &qb };
        assert!(meta.local != qb.metadata_for_key(key.as_bytes()).local, "exactly one owner of {key}");
        assert_eq!(owner.get(key.as_bytes()).unwrap(), Some(b"3".to_vec()));
        // And the group coordinator names the same owner, so a query can be routed to it.
        let named = a.key_owner(key.as_bytes()).unwrap();
        let owner_instance = if meta.local { a.config().instance() } else { b.config().instance() };
        assert_eq!(named.partition, meta.partition);
        assert_eq!(named.instance_id.as_deref(), Some(owner_instance), "owner of {key}");
    }

    // B goes away; A takes its partitions and rebuilds their stores from the changelog.
    b.close().unwrap();
    let started = Instant::now();
    while a.assigned_partitions().len() != 4 || a.state() != StreamsState::Running {
        assert!(started.elapsed() < RUNNING_TIMEOUT, "A did not take over: {:?}", a.assigned_partitions());
        std::thread::sleep(Duration::from_millis(100));
    }
    for key in expected.keys() {
        assert_eq!(qa.get(key.as_bytes()).unwrap(), Some(b"3".to_vec()), "{key} restored on the survivor");
    }
    feed(&topics, 40, 1, &mut expected).await;
    seen.extend(consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(40)));
    assert_exactly_once(&seen, &expected);
    a.close().unwrap();
    topics.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_go_to_the_dead_letter_topic_and_processing_goes_on() {
    let topics = Topics::new("dlq", 1).await;
    let state = tempfile::tempdir().unwrap();
    let producer = producer(&topics.settings);
    send(&producer, &topics.input, "a", b"x", None);
    send(&producer, &topics.input, "a", POISON.as_bytes(), None);
    send(&producer, &topics.input, "a", &[0xc3, 0x28], None);
    send(&producer, &topics.input, "a", b"x", None);
    producer.flush(Duration::from_secs(10)).unwrap();

    let streams =
        Streams::start(counting(&topics.input, &topics.output), topics.config(state.path())).unwrap();
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let outputs = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(2));
    assert_eq!(outputs.iter().map(Received::value_str).collect::<Vec<_>>(), vec!["1", "2"]);

    let dlq = testkit::consumer(&topics.settings, &topics.dlq, "read_committed");
    let letters = consume_until(&dlq, OUTPUT_TIMEOUT, SETTLE, total_reached(2));
    assert_eq!(letters.len(), 2);
    let header = |r: &Received, n: &str| String::from_utf8(r.header(n).unwrap().to_vec()).unwrap();
    assert_eq!(header(&letters[0], HEADER_REASON), "processing");
    assert_eq!(header(&letters[0], HEADER_SOURCE_TOPIC), topics.input);
    assert_eq!(header(&letters[0], HEADER_SOURCE_OFFSET), "1");
    assert!(header(&letters[0], HEADER_DETAIL).contains("refused"));
    assert_eq!(header(&letters[1], HEADER_REASON), "deserialization");
    assert_eq!(letters[1].value.as_deref(), Some(&[0xc3, 0x28][..]));
    assert_eq!(streams.metrics().dead_letters.with_label_values(&["processing"]).get(), 1);
    streams.close().unwrap();
    topics.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn punctuators_fire_on_wall_clock_without_input_and_on_stream_time_with_it() {
    let topics = Topics::new("punctuate", 1).await;
    let state = tempfile::tempdir().unwrap();
    let topology =
        ticking(&topics.input, &topics.output, Duration::from_millis(300), Duration::from_secs(10));
    let streams = start_running(topology, topics.config(state.path()));
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let walls = consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, |r| {
        r.iter().filter(|r| r.value_str().starts_with("wall:")).count() >= 3
    });
    assert!(
        walls.iter().all(|r| r.value_str().starts_with("wall:")),
        "no stream-time punctuation without records"
    );

    // Stream time: records at t, t+5 s, t+10 s — one punctuation, at t+10 s.
    let t0 = 1_700_000_000_000i64;
    let producer = producer(&topics.settings);
    for dt in [0, 5_000, 9_999, 10_000] {
        send(&producer, &topics.input, "k", b"v", Some(t0 + dt));
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let all = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, |r| {
        r.iter().any(|r| r.value_str().starts_with("stream:"))
    });
    let streams_fired: Vec<&str> =
        all.iter().map(Received::value_str).filter(|v| v.starts_with("stream:")).collect();
    assert_eq!(streams_fired, vec![format!("stream:{}", t0 + 10_000)]);
    streams.close().unwrap();
    topics.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_least_once_mode_processes_everything_without_transactions() {
    let topics = Topics::new("alos", 2).await;
    let state = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    feed(&topics, 10, 3, &mut expected).await;
    let mut config = topics.config(state.path());
    config.guarantee = ProcessingGuarantee::AtLeastOnce;
    let streams = Streams::start(counting(&topics.input, &topics.output), config).unwrap();
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let outputs = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(30));
    assert_exactly_once(&outputs, &expected);
    streams.close().unwrap();
    topics.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_refuses_missing_and_non_copartitioned_sources() {
    let settings = testkit::kafka_stack().await;
    let state = tempfile::tempdir().unwrap();
    let missing = unique("it.topology.missing");
    let config = StreamsConfig::new(&unique("it-topology-start"), &settings.kafka_bootstrap, state.path());
    match Streams::start(counting(&missing, "out"), config.clone()) {
        Err(StreamsError::MissingTopic(topic)) => assert_eq!(topic, missing),
        other => panic!("expected MissingTopic, got {:?}", other.map(|_| ())),
    }

    let (left, right) = (unique("it.topology.left"), unique("it.topology.right"));
    testkit::create_topic(&settings, &left, 2).await;
    testkit::create_topic(&settings, &right, 3).await;
    let mut builder = paystream_topology::Topology::<String, String>::builder();
    builder
        .add_source("l", &[&left], common::utf8)
        .add_source("r", &[&right], common::utf8)
        .add_processor("count", || common::Count, &["l", "r"])
        .add_state_store(paystream_topology::StoreSpec::persistent("counts"), &["count"]);
    match Streams::start(builder.build().unwrap(), config) {
        Err(StreamsError::NotCopartitioned(counts)) => {
            assert_eq!(counts, BTreeMap::from([(left.clone(), 2), (right.clone(), 3)]))
        }
        other => panic!("expected NotCopartitioned, got {:?}", other.map(|_| ())),
    }
    testkit::delete_topics(&settings, &[&left, &right]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_producers_partition_keys_as_kafkas_murmur2_does() {
    let settings = testkit::kafka_stack().await;
    let topic = unique("it.topology.murmur2");
    testkit::create_topic(&settings, &topic, 5).await;
    let producer = producer(&settings);
    for i in 0..50 {
        send(&producer, &topic, &format!("payment-{i}"), b"v", None);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let reader = testkit::consumer(&settings, &topic, "read_committed");
    let records = consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(50));
    for r in &records {
        assert_eq!(r.partition, partition_for_key(r.key.as_deref().unwrap(), 5));
    }
    testkit::delete_topics(&settings, &[&topic]).await;
}

// ---------------------------------------------------------------------------------------------
// Retriable errors: retried, never dead-lettered.

/// Retriable failures of each flaky record before its deserializer succeeds.
const FLAKY_FAILURES: u32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn a_retriable_deserializer_error_is_retried_until_it_succeeds_and_nothing_is_dead_lettered() {
    use common::{flaky_counting, Flaky, FLAKY};
    use rdkafka::consumer::Consumer;

    let topics = Topics::new("retriable", 2).await;
    let state = tempfile::tempdir().unwrap();
    let producer = producer(&topics.settings);
    let (total, mut flaky_records) = (60, 0);
    let mut expected = BTreeMap::new();
    for i in 0..total {
        let key = format!("k{}", i % 6);
        let value = if i % 7 == 3 { FLAKY } else { "x" };
        flaky_records += u32::from(value == FLAKY);
        send(&producer, &topics.input, &key, value.as_bytes(), None);
        *expected.entry(key).or_insert(0) += 1;
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let flaky = Flaky::new(FLAKY_FAILURES);
    let topology = flaky_counting(&topics.input, &topics.output, flaky.clone());
    let streams = Streams::start(topology, topics.config(state.path())).unwrap();
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let outputs = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(total));
    assert_exactly_once(&outputs, &expected);
    assert_eq!(
        flaky.failures_so_far(),
        FLAKY_FAILURES * flaky_records,
        "every flaky record failed, then passed"
    );
    let retried = streams.metrics().retriable_errors.with_label_values(&["deserialization"]).get();
    assert_eq!(retried, u64::from(FLAKY_FAILURES * flaky_records), "each retriable error counted once");
    for reason in ["deserialization", "processing", "serialization"] {
        assert_eq!(streams.metrics().dead_letters.with_label_values(&[reason]).get(), 0, "{reason}");
    }
    // Not even an aborted dead letter: the DLQ topic was never written to.
    let dlq = testkit::consumer(&topics.settings, &topics.dlq, "read_uncommitted");
    let (_, high) = dlq.fetch_watermarks(&topics.dlq, 0, Duration::from_secs(10)).expect("DLQ watermarks");
    assert_eq!(high, 0, "nothing reached the dead-letter topic");
    assert_eq!(streams.state(), StreamsState::Running, "retries do not stop the runtime");
    streams.close().unwrap();
    topics.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Restoration in the loop, and warm restarts.

/// Changelog records the large-restore test writes: enough that restoring them takes far longer
/// than processing a few records of another task and committing them.
const LARGE_CHANGELOG_RECORDS: usize = 1_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_task_restoring_a_large_changelog_does_not_hold_back_another_tasks_input() {
    let topics = Topics::new("bigrestore", 2).await;
    let changelog = format!("{}-counts-changelog", topics.app);
    // A first run creates the changelog (with the configuration the runtime checks).
    let first = tempfile::tempdir().unwrap();
    let streams = start_running(counting(&topics.input, &topics.output), topics.config(first.path()));
    streams.close().unwrap();
    fill_changelog(&topics.settings, &changelog, 0, LARGE_CHANGELOG_RECORDS);

    // Input for task 1 only, then an instance with no local state: task 0 must restore a million
    // records, task 1 nothing.
    let keys: Vec<String> =
        (0..).map(|i| format!("k{i}")).filter(|k| partition_for_key(k.as_bytes(), 2) == 1).take(5).collect();
    let producer = producer(&topics.settings);
    for key in &keys {
        send(&producer, &topics.input, key, b"x", None);
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    let fresh = tempfile::tempdir().unwrap();
    let streams =
        Streams::start(counting(&topics.input, &topics.output), topics.config(fresh.path())).unwrap();
    // Task 1's committed counts, read from its store as soon as they are there.
    let store = streams.store("counts").unwrap();
    let started = Instant::now();
    while !keys.iter().all(|k| store.get(k.as_bytes()).unwrap() == Some(b"1".to_vec())) {
        assert!(!streams.is_finished(), "the runtime stopped");
        assert!(started.elapsed() < OUTPUT_TIMEOUT, "task 1's counts not committed after {OUTPUT_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Right then: task 0 is still restoring.
    let remaining = streams.metrics().restore_remaining.with_label_values(&["counts", "0"]).get();
    let active = streams.assigned_partitions();
    assert!(
        remaining > 0 && active == vec![1],
        "task 1 was processed while task 0 restored (remaining {remaining}, active {active:?})"
    );
    assert_ne!(streams.state(), StreamsState::Running, "restoring: not running yet");

    wait_running(&streams);
    let outputs = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(keys.len()));
    assert_eq!(outputs.len(), keys.len(), "one output per input of task 1");
    assert!(outputs.iter().all(|r| r.value_str() == "1"), "{outputs:?}");
    assert_eq!(store.get(b"big0").unwrap(), Some(b"1".to_vec()), "task 0 restored");
    let last = format!("big{}", LARGE_CHANGELOG_RECORDS - 1);
    assert_eq!(store.get(last.as_bytes()).unwrap(), Some(b"1".to_vec()), "task 0 restored to the end");
    assert!(
        streams.metrics().restore_records.with_label_values(&["counts"]).get()
            >= LARGE_CHANGELOG_RECORDS as u64
    );
    assert_eq!(
        streams.metrics().rebalances.with_label_values(&["revoked"]).get(),
        0,
        "the restore never cost the group membership"
    );
    for key in &keys {
        assert_eq!(store.get(key.as_bytes()).unwrap(), Some(b"1".to_vec()), "{key} counted once");
    }
    streams.close().unwrap();
    topics.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_restart_after_a_clean_stop_reads_no_changelog() {
    let topics = Topics::new("warm", 4).await;
    let state = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    feed(&topics, 40, 5, &mut expected).await;
    let streams = start_running(counting(&topics.input, &topics.output), topics.config(state.path()));
    let reader = testkit::consumer(&topics.settings, &topics.output, "read_committed");
    consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(200));
    // A transaction's outputs are visible as soon as the broker commits it; its store writes are
    // applied once the commit call has returned to the stream thread, a moment later.
    let every_key_counted = |streams: &paystream_topology::Streams, times: &[u8]| {
        let counts = streams.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap();
        counts.len() == 40 && counts.iter().all(|(_, v)| v == times)
    };
    wait_for("every key counted 5 times in the store", OUTPUT_TIMEOUT, || every_key_counted(&streams, b"5"));
    let mut before = streams.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap();
    streams.close().unwrap();

    for restart in 1..=2 {
        let started = Instant::now();
        let streams = start_running(counting(&topics.input, &topics.output), topics.config(state.path()));
        // Measured for the record, not asserted: the assertions are on what was read.
        eprintln!("warm restart {restart}: running after {} ms", started.elapsed().as_millis());
        let metrics = streams.metrics();
        assert_eq!(
            metrics.restore_partitions.with_label_values(&["counts"]).get(),
            0,
            "restart {restart}: every checkpoint is at its changelog's end, so no changelog partition is fetched"
        );
        assert_eq!(
            metrics.restore_records.with_label_values(&["counts"]).get(),
            0,
            "restart {restart}: nothing restored"
        );
        assert_eq!(streams.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap(), before);
        if restart == 1 {
            // Work between the restarts: the next clean stop must catch up past its commits too.
            let mut more = BTreeMap::new();
            feed(&topics, 40, 1, &mut more).await;
            consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(40));
            wait_for("every key counted 6 times in the store", OUTPUT_TIMEOUT, || {
                every_key_counted(&streams, b"6")
            });
        }
        let now = streams.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap();
        streams.close().unwrap();
        before = now;
    }
    topics.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_waits_for_a_transaction_below_the_end_and_includes_it_once_committed() {
    let topics = Topics::new("stable", 2).await;
    let changelog = format!("{}-counts-changelog", topics.app);
    let first = tempfile::tempdir().unwrap();
    let streams = start_running(counting(&topics.input, &topics.output), topics.config(first.path()));
    streams.close().unwrap();

    // A previous owner's last transaction: its changelog records are written (below the high
    // watermark) but its marker is not, as between a commit's offsets and its changelog marker.
    let owner: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &topics.settings.kafka_bootstrap)
        .set("transactional.id", format!("{}-previous-owner", topics.app))
        .create()
        .expect("transactional producer");
    owner.init_transactions(Duration::from_secs(30)).expect("init_transactions");
    owner.begin_transaction().expect("begin");
    // Keys of task 0 (queries route a key to its partition's task).
    let pending: Vec<String> = (0..)
        .map(|i| format!("pending{i}"))
        .filter(|k| partition_for_key(k.as_bytes(), 2) == 0)
        .take(10)
        .collect();
    for key in &pending {
        owner
            .send(BaseRecord::to(&changelog).partition(0).key(&key).payload("7"))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    owner.flush(Duration::from_secs(30)).expect("the records are acknowledged");

    let fresh = tempfile::tempdir().unwrap();
    let streams =
        Streams::start(counting(&topics.input, &topics.output), topics.config(fresh.path())).unwrap();
    let started = Instant::now();
    while streams.assigned_partitions() != vec![1] {
        assert!(!streams.is_finished(), "the runtime stopped");
        assert!(started.elapsed() < RUNNING_TIMEOUT, "task 1 not active after {RUNNING_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Task 1 runs; task 0 waits for the undecided transaction instead of ending its restore at
    // the last stable offset, before those records.
    assert_ne!(streams.state(), StreamsState::Running, "task 0 still restoring");
    assert_eq!(streams.metrics().restore_partitions.with_label_values(&["counts"]).get(), 0, "not read yet");

    owner.commit_transaction(Duration::from_secs(30)).expect("commit");
    wait_running(&streams);
    let store = streams.store("counts").unwrap();
    for key in &pending {
        assert_eq!(
            store.get(key.as_bytes()).unwrap(),
            Some(b"7".to_vec()),
            "{key}: the decided transaction is restored"
        );
    }
    streams.close().unwrap();
    topics.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_running_instance_on_a_tokio_worker_does_not_wait_for_its_stop() {
    let topics = Topics::new("drop", 1).await;
    let state = tempfile::tempdir().unwrap();
    let streams = start_running(counting(&topics.input, &topics.output), topics.config(state.path()));
    let handle = streams.shutdown_handle();
    // The stop (a commit, store closes, leaving the group) takes the broker's round trips; the
    // drop returns before it, on this worker.
    drop(streams);
    assert!(handle.is_requested(), "the drop asked for the stop");
    assert!(!handle.is_stopped(), "the drop did not wait for the stream thread");
    tokio::time::timeout(OUTPUT_TIMEOUT, handle.stopped()).await.expect("the instance stopped by itself");
    topics.cleanup().await;
}
