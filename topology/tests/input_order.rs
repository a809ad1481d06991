//! Input order across a task's partitions, against the real local Kafka: the next record of a
//! task is the lowest timestamp among its buffered input partitions, whatever order the fetches
//! came back in; a partition that stays empty holds the task back at most `max_task_idle`; and a
//! crash with records buffered but not processed replays exactly those (the commit never carries
//! a buffered record's offset).
//!
//! Needs the local stack (`dev/up`); each wait is bounded and names what it waits for.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{producer, to_bytes, total_reached, utf8, wait_running, TestTopics, OUTPUT_TIMEOUT};
use paystream_stack::kafka::read_committed_consumer;
use paystream_stack::settings::StackSettings;
use paystream_stack::testkit::{self, consume_until, Received};
use paystream_topology::{
    ProcessError, Processor, ProcessorContext, Record, Streams, StreamsConfig, Topology,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Extra polling after the expected output, to catch duplicates.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a test waits for a crashed instance's thread to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// Emits `<label>@<record timestamp>@<wall ms when processed>` for every record. Every
/// `commit_every`-th record asks for a commit, so that commits land while other partitions hold
/// buffered records. A record labelled `crash_on` fails fatally while `armed`, once.
struct Tag {
    commit_every: u64,
    seen: u64,
    crash_on: Option<String>,
    armed: Arc<AtomicBool>,
}

impl Processor<String, String> for Tag {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        if self.crash_on.as_deref() == Some(record.value.as_str()) && self.armed.swap(false, Ordering::SeqCst)
        {
            return Err(ProcessError::Fatal(format!("crash on {}", record.value).into()));
        }
        self.seen += 1;
        if self.commit_every > 0 && self.seen % self.commit_every == 0 {
            ctx.commit();
        }
        let value = format!("{}@{}@{}", record.value, record.timestamp_ms, now_ms());
        ctx.forward(record.with_value(value));
        Ok(())
    }
}

struct App {
    settings: StackSettings,
    a: String,
    b: String,
    output: String,
    app: String,
    harness: TestTopics,
}

impl App {
    async fn new(prefix: &str) -> Self {
        let harness =
            TestTopics::create(&format!("it.topology.order.{prefix}"), &[("a", 1), ("b", 1), ("out", 1)])
                .await;
        App {
            a: harness.name("a"),
            b: harness.name("b"),
            output: harness.name("out"),
            app: harness.app.clone(),
            settings: harness.settings.clone(),
            harness,
        }
    }

    /// Sources `a` and `b` → `tag` → `out`: one task reading two topics.
    fn topology(
        &self,
        commit_every: u64,
        crash_on: Option<&str>,
        armed: Arc<AtomicBool>,
    ) -> Topology<String, String> {
        let crash_on = crash_on.map(str::to_string);
        let mut builder = Topology::builder();
        builder
            .add_source("a", &[&self.a], utf8)
            .add_source("b", &[&self.b], utf8)
            .add_processor(
                "tag",
                move || Tag { commit_every, seen: 0, crash_on: crash_on.clone(), armed: armed.clone() },
                &["a", "b"],
            )
            .add_sink("out", &self.output, to_bytes, &["tag"]);
        builder.build().expect("valid topology")
    }

    fn config(&self, state_dir: &Path) -> StreamsConfig {
        let mut config = self.harness.config(state_dir);
        config.instance_id = Some("one".to_string());
        config
    }

    /// Sends `count` records labelled `<prefix><i>` to `topic`, timestamps `first_ms + i * step_ms`.
    fn send(&self, topic: &str, prefix: &str, count: i64, first_ms: i64, step_ms: i64) {
        let producer = producer(&self.settings);
        for i in 0..count {
            let value = format!("{prefix}{i}");
            producer
                .send(
                    BaseRecord::to(topic)
                        .key("k")
                        .payload(value.as_bytes())
                        .timestamp(first_ms + i * step_ms),
                )
                .map_err(|(e, _)| e)
                .expect("send");
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    async fn cleanup(&self) {
        testkit::delete_topics(&self.settings, &[&self.a, &self.b, &self.output]).await;
    }
}

/// An output's label, the timestamp of the input it came from, and when it was processed.
fn parse(record: &Received) -> (String, i64, i64) {
    let mut parts = record.value_str().split('@');
    let label = parts.next().expect("label").to_string();
    let timestamp = parts.next().and_then(|t| t.parse().ok()).expect("record timestamp");
    let processed = parts.next().and_then(|t| t.parse().ok()).expect("processing time");
    (label, timestamp, processed)
}

fn outputs(app: &App, count: usize) -> Vec<(String, i64, i64)> {
    let reader = testkit::consumer(&app.settings, &app.output, "read_committed");
    consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(count)).iter().map(parse).collect()
}

/// The labels of the outputs, and whether their input timestamps never go down.
fn assert_timestamp_order(seen: &[(String, i64, i64)], expected: &[String]) {
    let labels: Vec<&str> = seen.iter().map(|(l, ..)| l.as_str()).collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(labels, expected, "each input exactly once, in timestamp order across both topics");
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "timestamps never go down: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_two_topics_are_processed_in_timestamp_order_whatever_the_fetch_order() {
    let app = App::new("merge").await;
    let base = 1_000_000;
    // Topic a is written first, so it is fetched first; its records are the later ones (odd
    // timestamps). Topic b's come after on the log, earlier in time (even timestamps).
    app.send(&app.a, "a", 50, base + 1, 2);
    app.send(&app.b, "b", 50, base, 2);
    let state = tempfile::tempdir().unwrap();
    let streams =
        Streams::start(app.topology(0, None, Arc::default()), app.config(state.path())).expect("start");
    let seen = outputs(&app, 100);
    let expected: Vec<String> = (0..50).flat_map(|i| [format!("b{i}"), format!("a{i}")]).collect();
    assert_timestamp_order(&seen, &expected);
    streams.close().expect("clean stop");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_that_stays_empty_delays_processing_by_at_most_max_task_idle() {
    let app = App::new("idle").await;
    let state = tempfile::tempdir().unwrap();
    let idle = Duration::from_millis(1500);
    let mut config = app.config(state.path());
    config.max_task_idle = idle;
    let streams = Streams::start(app.topology(0, None, Arc::default()), config).expect("start");
    wait_running(&streams);
    // Topic b stays empty (and caught up: its log is empty); topic a gets records now.
    let sent_ms = now_ms();
    app.send(&app.a, "a", 3, sent_ms, 0);
    let seen = outputs(&app, 3);
    let labels: Vec<&str> = seen.iter().map(|(l, ..)| l.as_str()).collect();
    assert_eq!(labels, ["a0", "a1", "a2"], "a's records, each once, although b has none");
    let (_, _, processed_ms) = seen[0];
    let delay = Duration::from_millis((processed_ms - sent_ms).max(0) as u64);
    assert!(delay >= idle, "the task waited max_task_idle ({idle:?}) for the empty partition: {delay:?}");
    // The bound: one idle wait, plus a poll and a fetch round trip; generous for a loaded machine.
    let bound = idle + Duration::from_secs(5);
    assert!(
        delay <= bound,
        "an empty partition holds the task back at most max_task_idle: {delay:?} > {bound:?}"
    );
    streams.close().expect("clean stop");
    app.cleanup().await;
}

/// The group's committed offset of `topic` partition 0, if any.
fn committed(app: &App, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer =
        read_committed_consumer(&app.settings.kafka_bootstrap, &app.app).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let offsets = consumer.committed_offsets(tpl, Duration::from_secs(30)).expect("committed offsets");
    match offsets.find_partition(topic, 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_with_records_buffered_replays_exactly_the_unprocessed_ones() {
    let app = App::new("crash").await;
    let base = 2_000_000;
    // b is written (and fetched) first, but its records are all later than a's: they wait in
    // b's buffer while a's are processed and committed every 25 records. The first of b's
    // crashes the instance (a fatal error: the open transaction is aborted).
    app.send(&app.b, "b", 100, base + 1_000, 1);
    app.send(&app.a, "a", 300, base, 1);
    let state = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let streams =
        Streams::start(app.topology(25, Some("b0"), armed.clone()), app.config(state.path())).expect("start");
    let started = Instant::now();
    while !streams.is_finished() {
        assert!(started.elapsed() < OUTPUT_TIMEOUT + STOP_TIMEOUT, "the instance did not crash on b0");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(streams.join().is_err(), "the fatal error stopped the instance");
    assert!(!armed.load(Ordering::SeqCst), "it stopped on b0");
    // None of b's records was processed in a committed transaction: nothing the commits carried
    // for it (if anything) is past its first record, although the consumer's position was past
    // all of them (they sat in b's buffer).
    let b_committed = committed(&app, &app.b);
    assert!(
        b_committed.unwrap_or(0) == 0,
        "b's committed offset is not past its first unprocessed record: {b_committed:?}"
    );
    let a_committed = committed(&app, &app.a).expect("a's progress was committed");
    assert!(a_committed > 0 && a_committed <= 300, "a committed within its records: {a_committed}");

    // A restart on the same state replays exactly what was not committed.
    let streams =
        Streams::start(app.topology(25, Some("b0"), armed), app.config(state.path())).expect("restart");
    let seen = outputs(&app, 400);
    let expected: Vec<String> =
        (0..300).map(|i| format!("a{i}")).chain((0..100).map(|i| format!("b{i}"))).collect();
    assert_timestamp_order(&seen, &expected);
    streams.close().expect("clean stop");
    let both = (committed(&app, &app.a), committed(&app, &app.b));
    assert_eq!(both, (Some(300), Some(100)), "everything consumed once committed, nothing beyond");
    app.cleanup().await;
}
