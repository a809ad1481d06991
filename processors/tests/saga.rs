//! The saga and the timer processor on the real stack: Kafka transactions, the Schema Registry's
//! wire format, RocksDB stores with changelogs. Each test has topics of its own, so it sees
//! nothing but its own payments. (The full flow with the API, Debezium, the dispatcher and the
//! simulator runs under `dev/run`; see the README.)

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{callback, initiated, Stack, SETTLE, TIMEOUT};
use paystream_processors::saga::codec::RegistryCodec;
use paystream_processors::saga::processor::{self, SagaMetrics, SagaSettings, SagaTopics};
use paystream_schemas::events::{
    DispatchOutcome, DispatchResult, PaymentResult, PaymentResultStatus, ProviderAction, ProviderRequest,
    ProviderStatus, TimerChange, TimerEvent,
};
use paystream_schemas::EventCodec;
use paystream_stack::settings::StackSettings;
use paystream_stack::testkit::{self, consume_until};
use paystream_topology::{Streams, StreamsConfig};
use uuid::Uuid;

const TIMER_TOLERANCE_MS: i64 = 1_000;
/// The payment timeout of the restart test.
const SURVIVAL_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_is_charged_accepted_called_back_and_completed_exactly_once() {
    let stack = Stack::new().await;
    let saga = stack.start_saga().await;
    let id = Uuid::new_v4();
    stack.send(&stack.topics.initiated, id, &initiated(id)).await;
    let commands = stack.records_for(&stack.topics.commands, id, 1);
    assert_eq!(commands.len(), 1, "one charge command");
    let command = stack
        .codec
        .decode::<paystream_schemas::events::ChargeCommand>(commands[0].value.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!((command.payment_id, command.amount.minor()), (id, 4_200));
    let outcome = DispatchOutcome {
        command_id: command.command_id,
        payment_id: id,
        outcome: DispatchResult::Accepted,
        attempts: 1,
        detail: "202".into(),
        decided_at: Utc::now(),
    };
    stack.send(&stack.topics.outcomes, id, &outcome).await;
    stack.send(&stack.topics.callbacks, id, &callback(id, ProviderStatus::Succeeded)).await;
    // A duplicate callback on the way changes nothing.
    stack.send(&stack.topics.callbacks, id, &callback(id, ProviderStatus::Succeeded)).await;
    let results = stack.results_for(id, 1).await;
    assert_eq!(results.len(), 1, "exactly one result: {results:?}");
    assert_eq!(results[0].status, PaymentResultStatus::Completed);
    assert_eq!(results[0].payment_result_id, PaymentResult::id_for(id, PaymentResultStatus::Completed));
    saga.close().unwrap();
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timer_fires_within_tolerance_and_a_late_callback_changes_nothing() {
    let stack = Stack::new().await;
    let timer_state = tempfile::tempdir().unwrap();
    let (saga, timers) = (stack.start_saga().await, stack.start_timers(timer_state.path()).await);
    let id = Uuid::new_v4();
    stack.send(&stack.topics.initiated, id, &initiated(id)).await;
    // The timer makes the saga ask the provider; it fails the payment only once a void confirms
    // that the provider holds no charge.
    stack.confirm_no_charge(id).await;
    let results = stack.results_for(id, 1).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].status, PaymentResultStatus::FailedTimeout);

    let mut fired = Vec::new();
    for r in stack.records_for(&stack.topics.timers, id, 2) {
        let timer = stack.codec.decode::<TimerEvent>(r.value.as_deref().unwrap()).await.unwrap();
        if let TimerChange::Fired { fired_at } = timer.change {
            fired.push((fired_at - timer.due_at).num_milliseconds());
        }
    }
    assert_eq!(fired.len(), 1, "fired once");
    assert!(
        (0..=TIMER_TOLERANCE_MS).contains(&fired[0]),
        "fired {} ms after due (tolerance {TIMER_TOLERANCE_MS} ms)",
        fired[0]
    );

    stack.send(&stack.topics.callbacks, id, &callback(id, ProviderStatus::Succeeded)).await;
    tokio::time::sleep(SETTLE).await;
    let results = stack.results_for(id, 1).await;
    assert_eq!(results.len(), 1, "the late callback made no second result: {results:?}");
    saga.close().unwrap();
    timers.close().unwrap();
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_survives_the_loss_of_its_processor() {
    let stack = Stack::new().await;
    // Long enough to take the timer processor down before the timer is due.
    let saga = stack.start_saga_with(SURVIVAL_TIMEOUT).await;
    let first = tempfile::tempdir().unwrap();
    let timers = stack.start_timers(first.path()).await;
    let id = Uuid::new_v4();
    stack.send(&stack.topics.initiated, id, &initiated(id)).await;
    // The timer is scheduled and stored; the timer processor goes away with its disk before it is due.
    stack.records_for(&stack.topics.timers, id, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    timers.close().unwrap();
    drop(first);
    assert!(stack.results_for_nothing_yet(id).await, "no result while no timer processor runs");
    let second = tempfile::tempdir().unwrap();
    let timers = stack.start_timers(second.path()).await;
    stack.confirm_no_charge(id).await;
    let results = stack.results_for(id, 1).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].status, PaymentResultStatus::FailedTimeout);
    assert!(
        timers.metrics().restore_records.with_label_values(&["due"]).get() >= 1,
        "the due index came back from its changelog"
    );
    saga.close().unwrap();
    timers.close().unwrap();
    stack.cleanup().await;
}

impl Stack {
    /// True if no result for `id` has arrived by the time its timer is due.
    async fn results_for_nothing_yet(&self, id: Uuid) -> bool {
        tokio::time::sleep(SURVIVAL_TIMEOUT).await;
        let key = id.to_string().into_bytes();
        let reader = testkit::consumer(&self.settings, &self.topics.results, "read_committed");
        let all = consume_until(&reader, Duration::from_secs(5), Duration::ZERO, |_| true);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = all.iter().any(|r| r.key.as_deref() == Some(&key[..]));
        while !seen && Instant::now() < deadline {
            let more = consume_until(&reader, Duration::from_secs(5), Duration::ZERO, |_| true);
            seen = more.iter().any(|r| r.key.as_deref() == Some(&key[..]));
        }
        !seen
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9 of the saga process mid-stream.

const CHILD_TOPICS: &str = "SAGA_CHILD_TOPIC_BASE";
const CHILD_STATE: &str = "SAGA_CHILD_STATE";
const CHILD_APP: &str = "SAGA_CHILD_APP";

/// Not a test of its own: the saga process the kill test starts and kills (`--ignored --exact`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by the_saga_killed_mid_stream_still_gives_every_payment_exactly_one_result"]
async fn child_saga_process() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set by the parent test"));
    let base = env(CHILD_TOPICS);
    let topics = SagaTopics::prefixed(&base);
    let settings = StackSettings::from_env();
    let metrics = SagaMetrics::new(&prometheus::Registry::new()).unwrap();
    let codec = RegistryCodec::new(
        EventCodec::new(&settings.schema_registry_url).unwrap(),
        tokio::runtime::Handle::current(),
    );
    let saga_settings = SagaSettings {
        payment_timeout: Duration::from_secs(3600),
        callback_retention: Duration::from_secs(60),
        ..SagaSettings::default()
    };
    let topology = processor::topology(codec, saga_settings, metrics, &topics).unwrap();
    let mut config = StreamsConfig::new(
        &env(CHILD_APP),
        &settings.kafka_bootstrap,
        std::path::Path::new(&env(CHILD_STATE)),
    );
    config.instance_id = Some("child".into());
    // Long transactions: a kill almost surely lands between produce and commit.
    config.commit_interval = Duration::from_millis(1_000);
    let streams =
        tokio::task::spawn_blocking(move || Streams::start(topology, config)).await.unwrap().unwrap();
    streams.run_until(std::future::pending()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_saga_killed_mid_stream_still_gives_every_payment_exactly_one_result() {
    let stack = Stack::new().await;
    let base = stack.topics.initiated.trim_end_matches(".initiated").to_string();
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_saga_process", "--test-threads=1"])
            .env(CHILD_TOPICS, &base)
            .env(CHILD_STATE, stack.state.path())
            .env(CHILD_APP, format!("{}-saga", stack.app))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting the saga process")
    };
    let mut child = spawn();
    let payments: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let uncommitted = testkit::consumer(&stack.settings, &stack.topics.results, "read_uncommitted");
    let committed = testkit::consumer(&stack.settings, &stack.topics.results, "read_committed");
    let (mut seen_uncommitted, mut seen_committed) = (0usize, 0usize);
    let mut killed = false;
    for (i, id) in payments.iter().enumerate() {
        stack.send(&stack.topics.initiated, *id, &initiated(*id)).await;
        stack.send(&stack.topics.callbacks, *id, &callback(*id, ProviderStatus::Succeeded)).await;
        seen_uncommitted += drain(&uncommitted);
        seen_committed += drain(&committed);
        // Kill once some results are committed and more are written but not yet committed.
        if !killed && seen_committed > 0 && seen_uncommitted > seen_committed {
            child.kill().unwrap();
            child.wait().unwrap();
            killed = true;
            child = spawn();
        }
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for _ in 0..50 {
        if killed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen_uncommitted += drain(&uncommitted);
        seen_committed += drain(&committed);
        if seen_committed > 0 && seen_uncommitted > seen_committed {
            child.kill().unwrap();
            child.wait().unwrap();
            killed = true;
            child = spawn();
        }
    }
    assert!(killed, "never caught the saga between produce and commit");

    let reader = testkit::consumer(&stack.settings, &stack.topics.results, "read_committed");
    let results = consume_until(&reader, TIMEOUT, SETTLE, |r| r.len() >= payments.len());
    let mut per_payment = std::collections::BTreeMap::new();
    for r in &results {
        let result = stack.codec.decode::<PaymentResult>(r.value.as_deref().unwrap()).await.unwrap();
        assert_eq!(result.status, PaymentResultStatus::Completed);
        *per_payment.entry(result.payment_id).or_insert(0) += 1;
    }
    for id in &payments {
        assert_eq!(per_payment.get(id), Some(&1), "payment {id}: exactly one result");
    }
    assert_eq!(per_payment.len(), payments.len());
    child.kill().unwrap();
    child.wait().unwrap();
    stack.cleanup().await;
}

/// Records available now.
fn drain(consumer: &rdkafka::consumer::BaseConsumer) -> usize {
    let mut n = 0;
    while let Some(Ok(_)) = consumer.poll(Duration::from_millis(20)) {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_failure_fails_and_a_callback_before_its_payment_is_applied_when_it_appears() {
    let stack = Stack::new().await;
    let saga = stack.start_saga_with(SURVIVAL_TIMEOUT).await;
    let (failed, early) = (Uuid::new_v4(), Uuid::new_v4());
    stack.send(&stack.topics.initiated, failed, &initiated(failed)).await;
    stack.send(&stack.topics.callbacks, failed, &callback(failed, ProviderStatus::Failed)).await;
    // The callback overtakes its payment (two Debezium connectors, two databases: it happens).
    stack.send(&stack.topics.callbacks, early, &callback(early, ProviderStatus::Succeeded)).await;
    stack.send(&stack.topics.initiated, early, &initiated(early)).await;
    let failed_results = stack.results_for(failed, 1).await;
    assert_eq!(
        failed_results.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![PaymentResultStatus::Failed]
    );
    let early_results = stack.results_for(early, 1).await;
    assert_eq!(
        early_results.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![PaymentResultStatus::Completed]
    );
    assert_eq!(
        stack.records_for(&stack.topics.commands, early, 1).len(),
        1,
        "the early payment is still charged once"
    );
    saga.close().unwrap();
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatch_that_exhausts_its_retries_is_verified_and_fails_once() {
    let stack = Stack::new().await;
    let saga = stack.start_saga_with(SURVIVAL_TIMEOUT).await;
    let id = Uuid::new_v4();
    stack.send(&stack.topics.initiated, id, &initiated(id)).await;
    // An outcome answers the charge command, so it can only follow it (the inputs are separate
    // topics: without waiting, the outcome could be read first and would be illegal).
    stack.records_for(&stack.topics.commands, id, 1);
    let exhausted = DispatchOutcome {
        command_id: processor::charge_command_id(id),
        payment_id: id,
        outcome: DispatchResult::RetriesExhausted,
        attempts: 6,
        detail: "503 Service Unavailable".into(),
        decided_at: Utc::now(),
    };
    stack.send(&stack.topics.outcomes, id, &exhausted).await;
    // A redelivered outcome (the dispatcher is at-least-once) changes nothing.
    stack.send(&stack.topics.outcomes, id, &exhausted).await;
    stack.confirm_no_charge(id).await;
    let results = stack.results_for(id, 1).await;
    assert_eq!(results.iter().map(|r| r.status).collect::<Vec<_>>(), vec![PaymentResultStatus::Failed]);
    assert!(
        results[0].reason.starts_with("503 Service Unavailable; the provider holds no charge"),
        "{}",
        results[0].reason
    );
    let requests = stack.records_for(&stack.topics.requests, id, 2);
    assert_eq!(requests.len(), 2, "one status query and one void, despite the redelivered outcome");
    let void = stack.codec.decode::<ProviderRequest>(requests[1].value.as_deref().unwrap()).await.unwrap();
    assert!(matches!(void.action, ProviderAction::Void { .. }));
    saga.close().unwrap();
    stack.cleanup().await;
}
