//! The runtime's failure semantics on the real broker: commits that time out after the broker
//! committed and before it did, an abortable commit, a commit failing during a revoke, a zombie
//! timers instance, and the changelog's configuration (its cleanup policy, its tombstone
//! retention, and checkpoints too old to trust).
//!
//! After each failure two things must hold: the outputs have no duplicate and no gap (a count per
//! key goes 1, 2, …, n), and every store equals its changelog as a `read_committed` restore would
//! see it. Commit faults are injected at the producer's commit (see
//! `paystream_topology::runtime::faults` for why there); everything else is the real stack.
//!
//! Needs the local stack (`dev/up`); each wait is bounded and names what it waits for.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use common::{
    assert_exactly_once, counting, fill_changelog, init_tracing, producer, start_running, to_bytes,
    total_reached, utf8, wait_for, TestTopics, OUTPUT_TIMEOUT, RUNNING_TIMEOUT,
};
use paystream_stack::kafka::TopicSpec;
use paystream_stack::settings::StackSettings;
use paystream_stack::testkit::{self, consume_until, unique, Received};
use paystream_topology::runtime::faults::{
    arm_commit_fault, arm_restore_fault, armed_commit_faults, armed_restore_faults, CommitFault, RestoreFault,
};
use paystream_topology::runtime::StreamsState;
use paystream_topology::store::rocks::RocksBackend;
use paystream_topology::store::{StoreBackend, UNLIMITED};
use paystream_topology::{
    ProcessError, Processor, ProcessorContext, PunctuationId, PunctuationType, Record, StoreSpec, Streams,
    StreamsConfig, StreamsError, Topology,
};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Extra polling after the expected output, to catch duplicates that arrive late.
const SETTLE: Duration = Duration::from_secs(3);
/// How long a child process may take to stop after SIGTERM.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A commit interval no test waits for: the only commits are the ones the test causes (a
/// processor's request, a revoke, a shutdown).
const NEVER: Duration = Duration::from_secs(60);

/// One application's topics on the shared broker.
struct App {
    settings: StackSettings,
    input: String,
    output: String,
    app: String,
    partitions: i32,
    harness: TestTopics,
}

impl App {
    async fn new(prefix: &str, partitions: i32) -> Self {
        // RUST_LOG=paystream_topology=info shows what the runtime did about each fault.
        init_tracing();
        let harness = TestTopics::create(
            &format!("it.topology.fail.{prefix}"),
            &[("in", partitions), ("out", partitions)],
        )
        .await;
        App {
            input: harness.name("in"),
            output: harness.name("out"),
            app: harness.app.clone(),
            partitions,
            settings: harness.settings.clone(),
            harness,
        }
    }

    /// A configuration for instance `instance` (so the test knows its `transactional.id`).
    fn config(&self, state_dir: &Path, instance: &str) -> StreamsConfig {
        let mut config = self.harness.config(state_dir);
        config.instance_id = Some(instance.to_string());
        config
    }

    fn changelog(&self, store: &str) -> String {
        format!("{}-{store}-changelog", self.app)
    }

    async fn cleanup(&self, stores: &[&str]) {
        let changelogs: Vec<String> = stores.iter().map(|s| self.changelog(s)).collect();
        let mut topics: Vec<&str> = vec![&self.input, &self.output];
        topics.extend(changelogs.iter().map(String::as_str));
        testkit::delete_topics(&self.settings, &topics).await;
    }
}

/// Sends `per_key` rounds over `keys` keys; `expected` counts what each key should reach.
fn feed(app: &App, keys: usize, per_key: usize, expected: &mut BTreeMap<String, u64>) {
    let producer = producer(&app.settings);
    for round in 0..per_key {
        for k in 0..keys {
            let key = format!("k{k}");
            producer
                .send(BaseRecord::to(&app.input).key(&key).payload(round.to_string().as_bytes()))
                .map_err(|(e, _)| e)
                .expect("send");
            *expected.entry(key).or_default() += 1;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// The changelog reader's context: the end of a partition is how it knows it is done, not an
/// error to log (librdkafka reports it as one).
struct QuietEof;

impl rdkafka::client::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(%error, reason, "changelog reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// A changelog as a `read_committed` restore sees it: the last value per key, a tombstone
/// removing the key. Read from the beginning of every partition to its end.
fn changelog_state(settings: &StackSettings, topic: &str, partitions: i32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let consumer: BaseConsumer<QuietEof> = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_bootstrap)
        .set("group.id", unique("it-changelog-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .expect("changelog reader");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("offset");
    }
    consumer.assign(&assignment).expect("assign");
    let mut state = BTreeMap::new();
    let mut ended = BTreeSet::new();
    let started = Instant::now();
    while ended.len() < partitions as usize {
        assert!(
            started.elapsed() < OUTPUT_TIMEOUT,
            "{topic}: no end of partitions {ended:?} within {OUTPUT_TIMEOUT:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = m.key().expect("changelog records are keyed").to_vec();
                match m.payload() {
                    Some(value) => state.insert(key, value.to_vec()),
                    None => state.remove(&key),
                };
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    state
}

/// The union of store `store` over `instances` (each answers for its own partitions).
fn store_state(instances: &[&Streams], store: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut state = BTreeMap::new();
    for streams in instances {
        state.extend(
            streams.store(store).expect("a store of the topology").range(b"", None, UNLIMITED).expect("scan"),
        );
    }
    state
}

/// The stores of `instances` equal the changelog (once the last commit is applied, which follows
/// its visibility by a moment: waited for, boundedly).
fn assert_store_equals_changelog(app: &App, instances: &[&Streams], store: &str) {
    let changelog = app.changelog(store);
    let started = Instant::now();
    loop {
        let (held, logged) =
            (store_state(instances, store), changelog_state(&app.settings, &changelog, app.partitions));
        if held == logged {
            return;
        }
        if started.elapsed() > OUTPUT_TIMEOUT {
            assert_eq!(held, logged, "store {store} (left) must equal its changelog {changelog} (right)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The committed counts equal what was sent.
fn assert_counts(instances: &[&Streams], expected: &BTreeMap<String, u64>) {
    let counts: BTreeMap<String, u64> = store_state(instances, "counts")
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap().parse().unwrap()))
        .collect();
    assert_eq!(&counts, expected, "each key's count in the store is the number of records sent");
}

// ---------------------------------------------------------------------------------------------
// Ambiguous and abortable commits.

/// Feeds a first batch, arms `faults` for the next commit (and, for a failing abort, the
/// recovery's abort), feeds a second batch (the faults hit its commit), then a third, and checks
/// outputs, stores and the commit's recorded outcome.
async fn commit_fault_keeps_exactly_once(prefix: &str, faults: &[CommitFault], outcome: &str) {
    let app = App::new(prefix, 2).await;
    let state = tempfile::tempdir().unwrap();
    let config = app.config(state.path(), "a");
    let transactional_id = config.transactional_id();
    let streams = start_running(counting(&app.input, &app.output), config);
    let reader = testkit::consumer(&app.settings, &app.output, "read_committed");
    let mut expected = BTreeMap::new();
    feed(&app, 10, 3, &mut expected);
    let mut seen = consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(30));

    for fault in faults {
        arm_commit_fault(&transactional_id, *fault);
    }
    feed(&app, 10, 3, &mut expected);
    wait_for("a commit to meet the injected fault", OUTPUT_TIMEOUT, || {
        armed_commit_faults(&transactional_id) == 0
    });
    feed(&app, 10, 3, &mut expected);
    seen.extend(consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(60)));

    assert_exactly_once(&seen, &expected);
    assert_store_equals_changelog(&app, &[&streams], "counts");
    assert_counts(&[&streams], &expected);
    assert_eq!(
        streams.metrics().commits.with_label_values(&[outcome]).get(),
        1,
        "the failed commit was recovered as {outcome}"
    );
    assert_eq!(streams.state(), StreamsState::Running, "a failed commit does not stop the runtime");
    streams.close().unwrap();
    app.cleanup(&["counts"]).await;
}

/// The broker committed, the answer was lost: the new producer's `init_transactions` finds the
/// transaction complete, the committed offsets (read with `require_stable`) equal those the
/// transaction carried, so its buffered store writes are applied, not dropped. Dropping them was
/// the old behaviour: the offsets had moved past records whose counts the store then lacked, and
/// the next outputs of those keys repeated counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_times_out_after_the_broker_committed_keeps_its_store_writes() {
    commit_fault_keeps_exactly_once("after", &[CommitFault::TimeoutAfterCommit], "ambiguous_committed").await;
}

/// The EndTxn never reached the broker: the new producer aborts the open transaction, the
/// committed offsets are those of before, the buffer is dropped and the records are processed
/// again, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_times_out_before_the_broker_committed_is_redone_once() {
    commit_fault_keeps_exactly_once("before", &[CommitFault::TimeoutBeforeCommit], "ambiguous_aborted").await;
}

/// An abortable failure: aborted on the producer, which is then replaced (a new epoch, so no
/// delayed request of the aborted transaction can land in the next one: KAFKA-17754).
#[tokio::test(flavor = "multi_thread")]
async fn an_abortable_commit_failure_aborts_replaces_the_producer_and_redoes_the_work_once() {
    commit_fault_keeps_exactly_once("abortable", &[CommitFault::Abortable], "aborted").await;
}

/// `send_offsets_to_transaction` times out: the outcome is unknown, so the producer is replaced
/// (its `init_transactions` aborts the open transaction, which never got its offsets) and the
/// committed offsets, behind those carried, say it aborted: redone once.
#[tokio::test(flavor = "multi_thread")]
async fn a_send_offsets_that_times_out_is_resolved_as_aborted_and_redone_once() {
    commit_fault_keeps_exactly_once(
        "offsetstimeout",
        &[CommitFault::SendOffsetsTimeout],
        "ambiguous_aborted",
    )
    .await;
}

/// `send_offsets_to_transaction` is refused in a way that needs an abort (a stale generation
/// does that): aborted, the producer replaced, redone once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_send_offsets_aborts_and_redoes_the_work_once() {
    commit_fault_keeps_exactly_once("offsetsrefused", &[CommitFault::SendOffsetsAbortable], "aborted").await;
}

/// The commit fails abortably and then the abort fails too (a timeout): the transaction is left
/// open, and the new producer's `init_transactions` aborts it before anything else is written,
/// so the redone work is still output once.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_abort_leaves_the_transaction_to_the_new_producer_and_the_work_is_redone_once() {
    commit_fault_keeps_exactly_once(
        "abortfails",
        &[CommitFault::Abortable, CommitFault::AbortFails],
        "aborted",
    )
    .await;
}

/// The store of the tick counter.
const TICKS: &str = "ticks";
/// How often the tick counter counts.
const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Where the tick counter stops counting, so that the test can compare a store at rest with its
/// changelog.
const TICKS_MAX: u64 = 40;

/// Counts its wall-clock punctuations in store `ticks` (key `p<partition>`) and outputs each
/// count, up to [`TICKS_MAX`]. It consumes nothing: its transactions carry no offsets of their
/// own, so an ambiguous commit of one cannot be judged by them.
struct TickCounter;

impl Processor<String, String> for TickCounter {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<(), ProcessError> {
        let _: PunctuationId = ctx.schedule(TICK_INTERVAL, PunctuationType::WallClock);
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
        _: PunctuationId,
        timestamp_ms: i64,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        let key = format!("p{}", ctx.partition());
        let store = ctx.store(TICKS)?;
        let count = store
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0))
            .unwrap_or(0);
        if count >= TICKS_MAX {
            return Ok(());
        }
        let next = (count + 1).to_string();
        store.put(key.as_bytes(), next.as_bytes())?;
        ctx.forward(Record::new(key, next, timestamp_ms));
        Ok(())
    }
}

fn tick_counter(input: &str, output: &str) -> Topology<String, String> {
    let mut builder = Topology::builder();
    builder
        .add_source("in", &[input], utf8)
        .add_processor("ticks", || TickCounter, &["in"])
        .add_state_store(StoreSpec::persistent(TICKS), &["ticks"])
        .add_sink("out", output, to_bytes, &["ticks"]);
    builder.build().expect("valid topology")
}

/// An ambiguous commit of a punctuation-only transaction: it carried no consumed offsets, so the
/// committed offsets cannot tell whether it committed. Every active task is marked corrupted:
/// closed and restored from its checkpoint to its changelog's end, which holds exactly what
/// committed. Counted as `ambiguous_restored`; the counts go on without a duplicate or a gap.
async fn unjudgeable_commit_is_restored(prefix: &str, fault: CommitFault) {
    let app = App::new(prefix, 1).await;
    let state = tempfile::tempdir().unwrap();
    let config = app.config(state.path(), "a");
    let transactional_id = config.transactional_id();
    let streams = start_running(tick_counter(&app.input, &app.output), config);
    let reader = testkit::consumer(&app.settings, &app.output, "read_committed");
    let mut seen = consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(5));
    arm_commit_fault(&transactional_id, fault);
    wait_for("a punctuation commit to meet the injected fault", OUTPUT_TIMEOUT, || {
        armed_commit_faults(&transactional_id) == 0
    });
    let left = TICKS_MAX as usize - seen.len();
    seen.extend(consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(left)));

    let expected: BTreeMap<String, u64> = [("p0".to_string(), TICKS_MAX)].into();
    assert_exactly_once(&seen, &expected);
    assert_eq!(
        streams.metrics().commits.with_label_values(&["ambiguous_restored"]).get(),
        1,
        "the commit its offsets could not judge was settled by restoring the task"
    );
    assert_store_equals_changelog(&app, &[&streams], TICKS);
    assert_eq!(
        store_state(&[&streams], TICKS),
        [(b"p0".to_vec(), TICKS_MAX.to_string().into_bytes())].into(),
        "the store counted every tick once"
    );
    assert_eq!(streams.state(), StreamsState::Running);
    streams.close().unwrap();
    app.cleanup(&[TICKS]).await;
}

/// The punctuation-only transaction committed and the answer was lost: the restore brings the
/// committed tick into the store (its buffered write was dropped with the corrupted task).
#[tokio::test(flavor = "multi_thread")]
async fn a_punctuation_commit_that_times_out_after_committing_is_restored_from_the_changelog() {
    unjudgeable_commit_is_restored("unknownafter", CommitFault::TimeoutAfterCommit).await;
}

/// The punctuation-only transaction never committed: the new producer aborts it, the restore
/// brings nothing of it, and the tick is counted again, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_punctuation_commit_that_times_out_before_committing_is_restored_and_redone_once() {
    unjudgeable_commit_is_restored("unknownbefore", CommitFault::TimeoutBeforeCommit).await;
}

/// Instance A commits only when it must (a long commit interval), so its first commit is the one
/// the revoke makes when B joins; that commit times out after the broker committed. A must close
/// the tasks (and restore those it gets back from their changelogs) rather than suspend them with
/// stores that miss the committed writes; B restores the others from the changelogs.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_failing_during_a_revoke_closes_the_tasks_and_restores_those_that_come_back() {
    revoke_with_a_failing_commit("revoke", CommitFault::TimeoutAfterCommit).await;
}

/// As above, with the revoke's commit refused (abortable) instead: aborted, the producer
/// replaced, the tasks closed; the work is redone once from the committed state, by A for the
/// partitions it gets back (restored from their changelogs) and by B for the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_refused_during_a_revoke_closes_the_tasks_and_the_work_is_redone_once() {
    revoke_with_a_failing_commit("revokerefused", CommitFault::Abortable).await;
}

/// A's first commit is the revoke's when B joins, and `fault` makes it fail: see the tests above.
async fn revoke_with_a_failing_commit(prefix: &str, fault: CommitFault) {
    let app = App::new(prefix, 4).await;
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config_a = app.config(state_a.path(), "a");
    config_a.commit_interval = NEVER;
    let transactional_id = config_a.transactional_id();
    let a = start_running(counting(&app.input, &app.output), config_a);
    let mut expected = BTreeMap::new();
    feed(&app, 40, 2, &mut expected);
    // Processed and produced, not committed: the revoke's commit is the first.
    let uncommitted = testkit::consumer(&app.settings, &app.output, "read_uncommitted");
    consume_until(&uncommitted, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(80));

    arm_commit_fault(&transactional_id, fault);
    let b = Streams::start(counting(&app.input, &app.output), app.config(state_b.path(), "b")).unwrap();
    wait_for("a 2/2 split with both instances running", RUNNING_TIMEOUT, || {
        a.assigned_partitions().len() == 2
            && b.assigned_partitions().len() == 2
            && a.state() == StreamsState::Running
            && b.state() == StreamsState::Running
    });
    assert_eq!(armed_commit_faults(&transactional_id), 0, "the revoke's commit met the fault");
    assert!(
        a.metrics().restore_partitions.with_label_values(&["counts"]).get() > 0,
        "A's tasks were closed, and those it kept were restored from their changelogs, not resumed"
    );

    // Both go on from the committed state; A commits its part when it stops, and B does what A
    // had not reached.
    feed(&app, 40, 2, &mut expected);
    a.close().unwrap();
    let reader = testkit::consumer(&app.settings, &app.output, "read_committed");
    let seen = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(160));
    assert_exactly_once(&seen, &expected);

    // B now holds every partition, A's restored from their changelogs.
    wait_for("B to take every partition", RUNNING_TIMEOUT, || {
        b.assigned_partitions().len() == 4 && b.state() == StreamsState::Running
    });
    assert_store_equals_changelog(&app, &[&b], "counts");
    assert_counts(&[&b], &expected);
    b.close().unwrap();
    app.cleanup(&["counts"]).await;
}

// ---------------------------------------------------------------------------------------------
// Restore faults: a broker away mid-restore, a changelog truncated beyond the restore.

/// Changelog records the restore-fault tests write: several restore turns' worth
/// (`RESTORE_RECORDS_PER_TURN` is 10,000), so each fault strikes a restore in the middle.
const RESTORED_RECORDS: usize = 50_000;

/// A one-partition app whose changelog holds [`RESTORED_RECORDS`] records (keys `big<i>`, each
/// once) and whose input holds 5 keys × 2, started on an empty state directory with `faults`
/// armed for its restore: the instance must restore the whole changelog, meeting the faults on
/// the way, then count the input. Returns what the test checks: the instance, the app, the
/// outputs, and what they should count.
async fn restore_through(
    prefix: &str,
    faults: &[RestoreFault],
) -> (Streams, App, tempfile::TempDir, Vec<Received>, BTreeMap<String, u64>) {
    let app = App::new(prefix, 1).await;
    // A first run creates the changelog (with the configuration the runtime checks).
    let first = tempfile::tempdir().unwrap();
    let streams = start_running(counting(&app.input, &app.output), app.config(first.path(), "a"));
    streams.close().unwrap();
    fill_changelog(&app.settings, &app.changelog("counts"), 0, RESTORED_RECORDS);
    let mut expected = BTreeMap::new();
    feed(&app, 5, 2, &mut expected);

    let state = tempfile::tempdir().unwrap();
    let config = app.config(state.path(), "a");
    let transactional_id = config.transactional_id();
    for fault in faults {
        arm_restore_fault(&transactional_id, *fault);
    }
    let streams = start_running(counting(&app.input, &app.output), config);
    assert_eq!(armed_restore_faults(&transactional_id), 0, "every fault struck the restore");
    let reader = testkit::consumer(&app.settings, &app.output, "read_committed");
    let seen = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(10));
    (streams, app, state, seen, expected)
}

/// The restore consumer loses its broker three times in the middle of a restore (a transport
/// failure, all brokers down, a fenced leader epoch: what a broker restart gives), each time with
/// the records of the failed fetch lost. The thread keeps running: it backs off, goes back to
/// each store's restored position and reads on from there. Exactly the changelog's records are
/// applied, each once (a resume from the consumer's fetch position would skip the lost fetch's
/// records; one from the checkpoint would apply records twice), the store equals the changelog,
/// and the input is then counted exactly once. Before, the first error stopped the thread.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_cut_by_broker_errors_reads_on_from_its_position_and_the_thread_keeps_running() {
    let faults = [RestoreFault::Transport, RestoreFault::AllBrokersDown, RestoreFault::FencedLeaderEpoch];
    let (streams, app, _state, seen, expected) = restore_through("restorecut", &faults).await;
    let metrics = streams.metrics();
    assert_eq!(
        metrics.retriable_errors.with_label_values(&["restore"]).get(),
        faults.len() as u64,
        "each fault was retried"
    );
    assert_eq!(
        metrics.restore_records.with_label_values(&["counts"]).get(),
        RESTORED_RECORDS as u64,
        "every changelog record applied exactly once across the interruptions"
    );
    assert_eq!(streams.state(), StreamsState::Running, "the stream thread kept running");
    assert_exactly_once(&seen, &expected);
    assert_store_equals_changelog(&app, &[&streams], "counts");
    let held = store_state(&[&streams], "counts");
    assert_eq!(held.len(), RESTORED_RECORDS + expected.len(), "the restored keys and the counted ones");
    assert_counts_of(&held, &expected);
    streams.close().unwrap();
    app.cleanup(&["counts"]).await;
}

/// The changelog no longer holds the restore's position (offset out of range: truncated beyond
/// it) in the middle of a restore: the task's store is wiped and restored from the changelog's
/// beginning, so what was applied before is applied again from a clean store (more records
/// applied than the changelog holds), the store equals the changelog, and the thread goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_changelog_out_of_range_mid_restore_wipes_the_store_and_restores_it_from_the_beginning() {
    let (streams, app, _state, seen, expected) =
        restore_through("restoreoor", &[RestoreFault::OffsetOutOfRange]).await;
    let restored = streams.metrics().restore_records.with_label_values(&["counts"]).get();
    assert!(
        restored > RESTORED_RECORDS as u64,
        "restored again from the beginning after the wipe ({restored} records applied)"
    );
    assert_eq!(streams.state(), StreamsState::Running, "the stream thread kept running");
    assert_exactly_once(&seen, &expected);
    assert_store_equals_changelog(&app, &[&streams], "counts");
    assert_counts_of(&store_state(&[&streams], "counts"), &expected);
    streams.close().unwrap();
    app.cleanup(&["counts"]).await;
}

/// The counted keys of `held` (a store's content) equal `expected`; the changelog's `big<i>`
/// keys the restore tests planted are left out.
fn assert_counts_of(held: &BTreeMap<Vec<u8>, Vec<u8>>, expected: &BTreeMap<String, u64>) {
    let counts: BTreeMap<String, u64> = held
        .iter()
        .filter(|(k, _)| !k.starts_with(b"big"))
        .map(|(k, v)| {
            (String::from_utf8(k.clone()).unwrap(), String::from_utf8(v.clone()).unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(&counts, expected, "each key's count in the store is the number of records sent");
}

// ---------------------------------------------------------------------------------------------
// A zombie timers instance: punctuation-only transactions are fenced too.

/// Store of the timers topology: timer id → due time (ms since the epoch).
const TIMERS: &str = "timers";
/// How often the timers processor looks for due timers.
const TIMER_TICK: Duration = Duration::from_millis(100);
/// How far ahead the test schedules its timers: after their puts are committed, before the
/// instance that fires them is paused.
const TIMER_DELAY: Duration = Duration::from_secs(3);

/// The timers app in miniature: a record schedules timer `key` at `value` (ms); a wall-clock
/// punctuation fires each due timer once (a `fired` record) and deletes it. Its transactions carry
/// no offsets of their own: only punctuation output and changelog deletes.
struct Timers;

impl Processor<String, String> for Timers {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<(), ProcessError> {
        let _: PunctuationId = ctx.schedule(TIMER_TICK, PunctuationType::WallClock);
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        ctx.store(TIMERS)?.put(record.key.as_bytes(), record.value.as_bytes())?;
        // The schedule is committed at once, in a transaction of its own, before any timer fires.
        ctx.commit();
        Ok(())
    }

    fn punctuate(
        &mut self,
        _: PunctuationId,
        timestamp_ms: i64,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        let store = ctx.store(TIMERS)?;
        let mut fired = Vec::new();
        for (key, due) in store.range_from(b"", UNLIMITED)? {
            let due: i64 = std::str::from_utf8(&due).ok().and_then(|d| d.parse().ok()).unwrap_or(i64::MAX);
            if due <= timestamp_ms {
                store.delete(&key)?;
                fired.push(String::from_utf8_lossy(&key).into_owned());
            }
        }
        for id in fired {
            ctx.forward(Record::new(id, "fired".to_string(), timestamp_ms));
        }
        Ok(())
    }
}

fn timers(input: &str, output: &str) -> Topology<String, String> {
    let mut builder = Topology::builder();
    builder
        .add_source("schedules", &[input], utf8)
        .add_processor("timers", || Timers, &["schedules"])
        .add_state_store(StoreSpec::persistent(TIMERS), &["timers"])
        .add_sink("fired", output, to_bytes, &["timers"]);
    builder.build().expect("valid topology")
}

/// Environment variables of the child process.
const CHILD_BOOTSTRAP: &str = "TOPOLOGY_FAIL_CHILD_BOOTSTRAP";
const CHILD_APP: &str = "TOPOLOGY_FAIL_CHILD_APP";
const CHILD_INPUT: &str = "TOPOLOGY_FAIL_CHILD_INPUT";
const CHILD_OUTPUT: &str = "TOPOLOGY_FAIL_CHILD_OUTPUT";
const CHILD_STATE: &str = "TOPOLOGY_FAIL_CHILD_STATE";

/// Not a test of its own: the timers instance the zombie test pauses (`--ignored --exact`).
#[test]
#[ignore = "run by a_zombie_timers_instance_cannot_commit_what_its_successor_did as a child process"]
fn child_timers_app() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set by the parent test"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut config = StreamsConfig::new(&env(CHILD_APP), &env(CHILD_BOOTSTRAP), Path::new(&env(CHILD_STATE)));
    config.instance_id = Some("a".to_string());
    config.session_timeout = Duration::from_secs(6);
    // Fired timers stay in an open transaction until the test has paused this instance, and the
    // pause outlasts the session (so the group moves on) but not the transaction (so only the
    // group generation can fence what it does when it wakes up).
    config.commit_interval = NEVER;
    config.transaction_timeout = Duration::from_secs(120);
    let streams = Streams::start(timers(&env(CHILD_INPUT), &env(CHILD_OUTPUT)), config).expect("start");
    let shutdown = streams.shutdown_handle();
    let term = Term::new();
    while !streams.is_finished() {
        if term.received() {
            shutdown.request();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    streams.join().expect("clean stop");
}

/// A SIGTERM latch for the child, with tokio's signal handling on a small runtime of its own.
struct Term {
    rx: std::sync::mpsc::Receiver<()>,
}

impl Term {
    fn new() -> Self {
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

    fn received(&self) -> bool {
        self.rx.try_recv().is_ok()
    }
}

/// The child instance, killed if the test ends without stopping it (a failed assertion), so no
/// paused or running instance outlives its test.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child runs until stopped")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SIGCONT first: a stopped process would not act on SIGKILL's effects until resumed.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args([name, &pid]).status().expect("kill").success(), "kill {name} {pid}");
}

fn stop_child(guard: &mut ChildGuard) {
    signal(guard.child(), "-TERM");
    let started = Instant::now();
    loop {
        if let Some(status) = guard.child().try_wait().expect("child status") {
            guard.0 = None;
            assert!(status.success(), "the child stops cleanly on SIGTERM: {status:?}");
            return;
        }
        assert!(
            started.elapsed() < CHILD_STOP_TIMEOUT,
            "the child did not stop within {CHILD_STOP_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the group `group` is stable with `members` members.
fn group_is_stable(consumer: &BaseConsumer, group: &str, members: usize) -> bool {
    match consumer.fetch_group_list(Some(group), Duration::from_secs(5)) {
        Ok(list) => list.groups().iter().any(|g| g.state() == "Stable" && g.members().len() == members),
        Err(_) => false,
    }
}

/// Instance A fires its timers inside a transaction and is paused (SIGSTOP) before committing
/// it, longer than its session: B takes the partition over, restores the timers (A's deletes
/// were never committed) and fires them. When A wakes up, its transaction carries no consumed
/// offsets, yet it must not commit: the runtime sends the task's input offsets with the group
/// metadata anyway, so the group generation fences it. Every timer fires exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_zombie_timers_instance_cannot_commit_what_its_successor_did() {
    let app = App::new("zombie-timers", 1).await;
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = ChildGuard(Some(
        Command::new(std::env::current_exe().expect("test binary path"))
            .args(["--ignored", "--exact", "child_timers_app", "--nocapture", "--test-threads=1"])
            .env(CHILD_BOOTSTRAP, &app.settings.kafka_bootstrap)
            .env(CHILD_APP, &app.app)
            .env(CHILD_INPUT, &app.input)
            .env(CHILD_OUTPUT, &app.output)
            .env(CHILD_STATE, state_a.path())
            .spawn()
            .expect("starting instance A"),
    ));
    let admin: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &app.settings.kafka_bootstrap).create().expect("client");
    wait_for("instance A to own the partition", RUNNING_TIMEOUT, || group_is_stable(&admin, &app.app, 1));

    let ids: BTreeSet<String> = (0..5).map(|i| format!("timer-{i}")).collect();
    let due_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap() + TIMER_DELAY;
    let producer = producer(&app.settings);
    for id in &ids {
        let due = due_ms.as_millis().to_string();
        producer.send(BaseRecord::to(&app.input).key(id).payload(&due)).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let changelog = testkit::consumer(&app.settings, &app.changelog(TIMERS), "read_committed");
    consume_until(&changelog, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(ids.len()));
    let uncommitted = testkit::consumer(&app.settings, &app.output, "read_uncommitted");
    let mut written = consume_until(&uncommitted, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(ids.len()));
    signal(a.child(), "-STOP");

    // B takes over once A's session has expired, restores the timers and fires them too.
    let b = Streams::start(timers(&app.input, &app.output), app.config(state_b.path(), "b")).unwrap();
    wait_for("B to own the partition", RUNNING_TIMEOUT, || {
        b.assigned_partitions() == vec![0] && b.state() == StreamsState::Running
    });
    written.extend(consume_until(&uncommitted, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(ids.len())));
    assert_eq!(written.len(), 2 * ids.len(), "both A (the zombie) and B fired every timer");

    // A wakes up with its transaction open. B's committed fires sit behind it in the partition,
    // so read_committed sees them only once A's transaction is over, committed or aborted.
    signal(a.child(), "-CONT");
    let reader = testkit::consumer(&app.settings, &app.output, "read_committed");
    let fired = consume_until(&reader, OUTPUT_TIMEOUT, SETTLE, total_reached(ids.len()));
    let fired_ids: Vec<String> =
        fired.iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect();
    assert_eq!(fired_ids.len(), ids.len(), "every timer fired exactly once: {fired_ids:?}");
    assert_eq!(fired_ids.iter().cloned().collect::<BTreeSet<_>>(), ids);

    // Every timer is gone from the changelog, and from whichever store holds the partition now.
    wait_for("A to rejoin the group", RUNNING_TIMEOUT, || group_is_stable(&admin, &app.app, 2));
    assert!(
        changelog_state(&app.settings, &app.changelog(TIMERS), 1).is_empty(),
        "every fired timer is deleted"
    );
    assert_store_equals_changelog(&app, &[&b], TIMERS);
    stop_child(&mut a);
    b.close().unwrap();
    app.cleanup(&[TIMERS]).await;
}

// ---------------------------------------------------------------------------------------------
// The changelog's configuration.

/// An existing changelog with a delete policy may already have lost records: start refuses it,
/// naming the topic and the setting.
#[tokio::test(flavor = "multi_thread")]
async fn start_refuses_a_changelog_that_is_not_compacted() {
    let app = App::new("policy", 1).await;
    paystream_stack::kafka::ensure_topics(
        &app.settings.kafka_bootstrap,
        &[TopicSpec::new(app.changelog("counts"), 1).with_config("cleanup.policy", "delete")],
    )
    .await
    .expect("creating a delete-policy changelog");
    let state = tempfile::tempdir().unwrap();
    match Streams::start(counting(&app.input, &app.output), app.config(state.path(), "a")) {
        Err(StreamsError::Changelog { topic, reason }) => {
            assert_eq!(topic, app.changelog("counts"));
            assert!(reason.contains("cleanup.policy") && reason.contains("delete"), "{reason}");
        }
        other => panic!("expected a changelog refusal, got {:?}", other.map(|_| ())),
    }
    app.cleanup(&["counts"]).await;
}

/// An existing changelog that keeps tombstones for a second is mended: `delete.retention.ms` is
/// raised to a day, and the topic's other settings of its own survive the change.
#[tokio::test(flavor = "multi_thread")]
async fn start_raises_a_too_short_tombstone_retention_and_keeps_the_other_settings() {
    let app = App::new("retention", 1).await;
    let changelog = app.changelog("counts");
    paystream_stack::kafka::ensure_topics(
        &app.settings.kafka_bootstrap,
        &[TopicSpec::new(&changelog, 1)
            .with_config("cleanup.policy", "compact")
            .with_config("delete.retention.ms", "1000")
            .with_config("segment.ms", "3600000")],
    )
    .await
    .expect("creating a changelog with a short tombstone retention");
    let state = tempfile::tempdir().unwrap();
    let streams = start_running(counting(&app.input, &app.output), app.config(state.path(), "a"));
    streams.close().unwrap();

    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &app.settings.kafka_bootstrap).create().expect("admin");
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&changelog)], &AdminOptions::new())
        .await
        .expect("describe")
        .pop()
        .expect("one resource")
        .expect("described");
    let value = |name: &str| described.get(name).and_then(|e| e.value.clone());
    assert_eq!(value("delete.retention.ms").as_deref(), Some("86400000"));
    assert_eq!(value("segment.ms").as_deref(), Some("3600000"), "the topic's own settings survive");
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact"));
    app.cleanup(&["counts"]).await;
}

/// A checkpoint older than half the changelog's `delete.retention.ms` may sit before a tombstone
/// the cleaner has dropped since: restoring from it would keep the deleted key alive. Such a store
/// is wiped and restored from the changelog's beginning. The test plants a key the changelog
/// does not have (what a dropped tombstone leaves behind), shows that a fresh checkpoint keeps it,
/// then ages the checkpoint and shows the key gone and every count right.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_older_than_the_tombstone_retention_allows_is_rebuilt_from_the_changelog() {
    let app = App::new("stale", 1).await;
    let state = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    feed(&app, 5, 2, &mut expected);
    let streams = Streams::start(counting(&app.input, &app.output), app.config(state.path(), "a")).unwrap();
    let reader = testkit::consumer(&app.settings, &app.output, "read_committed");
    consume_until(&reader, OUTPUT_TIMEOUT, Duration::ZERO, total_reached(10));
    streams.close().unwrap();

    let task_dir = state.path().join(&app.app).join("0_0");
    {
        let store = RocksBackend::open("counts", &task_dir.join("counts")).expect("opening the task's store");
        store.write_batch(&mut std::iter::once((&b"ghost"[..], Some(&b"1"[..])))).unwrap();
        store.sync().unwrap();
    }
    let streams = start_running(counting(&app.input, &app.output), app.config(state.path(), "a"));
    let query = streams.store("counts").unwrap();
    assert_eq!(query.get(b"ghost").unwrap(), Some(b"1".to_vec()), "a fresh checkpoint is trusted");
    assert_eq!(streams.metrics().restore_records.with_label_values(&["counts"]).get(), 0);
    streams.close().unwrap();

    // Half the default retention (a day) and an hour more.
    let checkpoint = task_dir.join(".checkpoint");
    let aged = SystemTime::now() - Duration::from_secs(13 * 60 * 60);
    std::fs::File::options()
        .write(true)
        .open(&checkpoint)
        .expect("the checkpoint")
        .set_modified(aged)
        .unwrap();
    let streams = start_running(counting(&app.input, &app.output), app.config(state.path(), "a"));
    let query = streams.store("counts").unwrap();
    assert_eq!(query.get(b"ghost").unwrap(), None, "the store was rebuilt, not trusted");
    assert_counts(&[&streams], &expected);
    assert!(
        streams.metrics().restore_records.with_label_values(&["counts"]).get() >= 5,
        "restored from the changelog's beginning"
    );
    assert_store_equals_changelog(&app, &[&streams], "counts");
    streams.close().unwrap();
    app.cleanup(&["counts"]).await;
}
