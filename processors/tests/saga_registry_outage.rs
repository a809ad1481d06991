//! The saga and the timer processor while the Schema Registry is away: a registry outage is not
//! a poison record. Each runs with the dead-letter policy and a fresh codec (cold schema cache)
//! whose registry connection goes through a fault proxy that the test switches off for
//! [`OUTAGE`] in the middle of a flow of payments, and on again. Nothing may reach the DLQ (a
//! dead-lettered PaymentInitiated strands its reservation, a dead-lettered callback turns a charge
//! into a timeout refund, a dead-lettered TimerScheduled never times out), and afterwards every
//! payment has exactly one PaymentResult: COMPLETED for those called back, FAILED_TIMEOUT (after
//! the provider's "not charged", which the test answers as the dispatcher would) for the others.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{callback, initiated, Stack, SETTLE, TIMEOUT};
use paystream_schemas::events::{PaymentResult, PaymentResultStatus, ProviderStatus};
use paystream_stack::fault_proxy::FaultProxy;
use paystream_stack::testkit::{self, consume_until, Received};
use paystream_topology::runtime::StreamsState;
use paystream_topology::Streams;
use rdkafka::consumer::Consumer;
use uuid::Uuid;

/// How long the registry stays away.
const OUTAGE: Duration = Duration::from_secs(20);
/// The payment timeout: long enough that a payment called back during the outage completes by
/// its callback once the registry is back (the outage plus the runtime's longest back-off, 5 s,
/// plus catching up) rather than times out; short enough that the payments never called back
/// time out within the test.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(40);
/// Payments in each group.
const PER_GROUP: usize = 4;
/// How long the test waits for the saga and the timer processor to meet the outage.
const MEET_OUTAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until `done` holds, for at most `timeout`; panics naming `what` otherwise.
async fn await_condition(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "{what}: not the case after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retriable errors a runtime met, over every step.
fn retriable_errors(streams: &Streams) -> u64 {
    ["deserialization", "processing", "serialization", "punctuation"]
        .iter()
        .map(|kind| streams.metrics().retriable_errors.with_label_values(&[kind]).get())
        .sum()
}

/// Dead letters a runtime wrote, over every reason.
fn dead_letters(streams: &Streams) -> u64 {
    ["deserialization", "processing", "serialization"]
        .iter()
        .map(|reason| streams.metrics().dead_letters.with_label_values(&[reason]).get())
        .sum()
}

/// The records of `topic` whose keys are all of `ids`, read committed, once each id has one.
fn until_each_has_one(stack: &Stack, topic: &str, ids: &[Uuid], settle: Duration) -> Vec<Received> {
    let keys: Vec<Vec<u8>> = ids.iter().map(|id| id.to_string().into_bytes()).collect();
    let reader = testkit::consumer(&stack.settings, topic, "read_committed");
    consume_until(&reader, TIMEOUT, settle, |records| {
        keys.iter().all(|key| records.iter().any(|r| r.key.as_deref() == Some(&key[..])))
    })
}

/// Records ever written to the DLQ, committed or aborted: its high watermark.
fn dlq_high_watermark(stack: &Stack) -> i64 {
    let dlq = stack.dlq();
    let consumer = testkit::consumer(&stack.settings, &dlq, "read_uncommitted");
    let (_, high) = consumer.fetch_watermarks(&dlq, 0, Duration::from_secs(10)).expect("DLQ watermarks");
    high
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_outage_dead_letters_nothing_and_every_payment_gets_exactly_one_result() {
    let stack = Stack::new().await;
    let (proxy, registry_url) =
        FaultProxy::in_front_of_url(&stack.settings.schema_registry_url).expect("fault proxy");
    let saga = stack.start_saga_on(&registry_url, PAYMENT_TIMEOUT).await;
    let new_ids = || (0..PER_GROUP).map(|_| Uuid::new_v4()).collect::<Vec<_>>();
    // Produced before the outage: payments that will be called back during it, and payments that
    // will never be called back (their timeout fires after it).
    let (called_back_before, timing_out) = (new_ids(), new_ids());
    for id in called_back_before.iter().chain(&timing_out) {
        stack.send(&stack.topics.initiated, *id, &initiated(*id)).await;
    }
    let charged: Vec<Uuid> = called_back_before.iter().chain(&timing_out).copied().collect();
    until_each_has_one(&stack, &stack.topics.commands, &charged, Duration::ZERO);

    proxy.set_up(false);
    let outage_started = Instant::now();
    // Produced during the outage (the test's own codec goes straight to the registry): the
    // callbacks of the first payments, and new payments with their callbacks.
    let called_back_during = new_ids();
    for id in &called_back_during {
        stack.send(&stack.topics.initiated, *id, &initiated(*id)).await;
    }
    for id in called_back_before.iter().chain(&called_back_during) {
        stack.send(&stack.topics.callbacks, *id, &callback(*id, ProviderStatus::Succeeded)).await;
    }
    // The timer processor starts during the outage, cold: every TimerScheduled it reads needs
    // the registry.
    let timer_state = tempfile::tempdir().unwrap();
    let timers = stack.start_timers_on(&registry_url, timer_state.path()).await;
    await_condition("the saga met the outage (a retriable error)", MEET_OUTAGE_TIMEOUT, || {
        retriable_errors(&saga) > 0
    })
    .await;
    await_condition("the timer processor met the outage (a retriable error)", MEET_OUTAGE_TIMEOUT, || {
        retriable_errors(&timers) > 0
    })
    .await;
    // The outage itself: a set time, not a condition to await.
    tokio::time::sleep(OUTAGE.saturating_sub(outage_started.elapsed())).await;
    assert!(proxy.refused() > 0, "the registry was away for the saga's codec");
    assert_eq!(dlq_high_watermark(&stack), 0, "nothing dead-lettered during the outage");
    assert_eq!((saga.state(), timers.state()), (StreamsState::Running, StreamsState::Running));
    proxy.set_up(true);

    // A timed-out payment is verified with the provider before it fails: the test plays the
    // dispatcher and answers "not charged".
    for id in &timing_out {
        stack.confirm_no_charge(*id).await;
    }
    let all: Vec<Uuid> =
        called_back_before.iter().chain(&called_back_during).chain(&timing_out).copied().collect();
    let records = until_each_has_one(&stack, &stack.topics.results, &all, SETTLE);
    let mut results: BTreeMap<Uuid, Vec<PaymentResultStatus>> = BTreeMap::new();
    for record in &records {
        let result = stack.codec.decode::<PaymentResult>(record.value.as_deref().unwrap()).await.unwrap();
        results.entry(result.payment_id).or_default().push(result.status);
    }
    for id in called_back_before.iter().chain(&called_back_during) {
        assert_eq!(results.get(id), Some(&vec![PaymentResultStatus::Completed]), "payment {id}");
    }
    for id in &timing_out {
        assert_eq!(results.get(id), Some(&vec![PaymentResultStatus::FailedTimeout]), "payment {id}");
    }
    assert_eq!(results.len(), all.len(), "no result for a payment never made");
    assert_eq!(dlq_high_watermark(&stack), 0, "nothing reached the dead-letter topic");
    assert_eq!((dead_letters(&saga), dead_letters(&timers)), (0, 0));
    saga.close().unwrap();
    timers.close().unwrap();
    stack.cleanup().await;
}
