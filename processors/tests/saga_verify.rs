//! Uncertain outcomes on the real stack: the saga, the timer processor and the dispatcher on
//! Kafka with the registry's wire format, charging, asking, voiding and refunding the real
//! provider simulator over HTTP. The simulator's signed callbacks go to a relay that verifies
//! each signature with the API's verifier and writes the `ProviderCallbackReceived` the
//! callback service would (the API, its ledger and Debezium are tested on their own).
//!
//! Every test ends by checking the provider's own ledger (`GET /v1/charges/{key}` of the
//! simulator) against the one result: charged ⇔ COMPLETED.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use common::{callback, initiated, running, Stack};
use paystream_api::signature::{self, Verifier};
use paystream_processors::dispatcher::{self, DispatchError, DispatcherConfig, DispatcherMetrics};
use paystream_processors::retry::RetryPolicy;
use paystream_processors::saga::codec::RegistryCodec;
use paystream_processors::saga::processor::{self, SagaMetrics, SagaSettings};
use paystream_provider_sim::{SimConfig, SimMetrics};
use paystream_schemas::events::{
    ChargeCommand, Discrepancy, DispatchOutcome, DispatchResult, PaymentResult, PaymentResultStatus,
    ProviderAction, ProviderCallbackReceived, ProviderRequest, ProviderStatus, ReconciliationEvent, Remedy,
};
use paystream_schemas::EventCodec;
use paystream_stack::kafka;
use paystream_stack::testkit;
use paystream_topology::ShutdownHandle;
use paystream_topology::Streams;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const SECRET: &[u8] = b"saga-verify-test-secret";
/// Budget for an expected state to be reached.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
/// Budget for a component to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The simulator, the callback relay, the dispatcher and the saga
// ---------------------------------------------------------------------------------------

/// The provider simulator, in-process on port 0.
struct Simulator {
    base_url: String,
    metrics: SimMetrics,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), paystream_provider_sim::ServeError>>,
}

impl Simulator {
    async fn start(config: SimConfig) -> Self {
        let metrics = SimMetrics::register(&prometheus::Registry::new()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task =
            tokio::spawn(paystream_provider_sim::serve(listener, config, metrics.clone(), async move {
                let _ = stopped.await;
            }));
        Self { base_url, metrics, stop, task }
    }

    /// The provider's own ledger entry for `id` (a 404 for a key it never saw).
    async fn ledger(&self, id: Uuid) -> Value {
        reqwest::get(format!("{}/v1/charges/{id}", self.base_url)).await.unwrap().json().await.unwrap()
    }

    /// Charge attempts the simulator answered at all, whatever the answer.
    fn charge_requests(&self) -> u64 {
        paystream_provider_sim::metrics::ANSWERS.iter().map(|answer| self.metrics.charges_total(answer)).sum()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(STOP_TIMEOUT, self.task)
            .await
            .expect("the simulator stops")
            .expect("no panic")
            .expect("a clean stop");
    }
}

#[derive(Clone)]
struct RelayState {
    verifier: Arc<Verifier>,
    codec: Arc<EventCodec>,
    producer: FutureProducer,
    topic: String,
    /// Provider event ids already relayed: a redelivery writes nothing, as in the ledger.
    seen: Arc<Mutex<HashSet<String>>>,
}

/// The callback service reduced to what the saga sees: verify the signature, write one
/// `ProviderCallbackReceived` per provider event, keyed by paymentId, acknowledged before 200.
async fn relay(State(state): State<RelayState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    if state.verifier.verify(header, &body, Utc::now().timestamp()).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let event_id = headers.get("x-provider-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if !state.seen.lock().unwrap().insert(event_id.clone()) {
        return StatusCode::OK;
    }
    let body: Value = serde_json::from_slice(&body).expect("a callback is JSON");
    let payment_id = Uuid::parse_str(body["paymentId"].as_str().unwrap()).unwrap();
    let event = ProviderCallbackReceived {
        event_id: Uuid::new_v4(),
        payment_id,
        provider_event_id: event_id,
        status: ProviderStatus::from_symbol(body["status"].as_str().unwrap()),
        description: body["description"].as_str().unwrap_or_default().to_owned(),
        provider_timestamp: paystream_api::timestamp::parse(body["timestamp"].as_str().unwrap()).unwrap(),
        received_at: Utc::now(),
    };
    let bytes = state.codec.encode(&event).await.expect("encode");
    let key = payment_id.to_string();
    state
        .producer
        .send(FutureRecord::to(&state.topic).key(&key).payload(&bytes), Timeout::After(WAIT))
        .await
        .map_err(|(error, _)| error)
        .expect("the callback is written");
    StatusCode::OK
}

/// Starts the relay; returns its callback URL.
async fn start_relay(stack: &Stack) -> String {
    let state = RelayState {
        verifier: Arc::new(Verifier::new(vec![SECRET.to_vec()])),
        codec: Arc::new(EventCodec::new(&stack.settings.schema_registry_url).unwrap()),
        producer: kafka::idempotent_producer(&stack.settings.kafka_bootstrap).create().unwrap(),
        topic: stack.topics.callbacks.clone(),
        seen: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/callback", listener.local_addr().unwrap());
    let router = Router::new().route("/api/v1/callback", post(relay)).with_state(state);
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    url
}

/// A provider that calls back once, shortly, with the given tweak.
fn provider(relay_url: &str, seed: u64, tweak: impl FnOnce(&mut SimConfig)) -> SimConfig {
    let mut config = SimConfig::reliable(relay_url, SECRET, seed);
    tweak(&mut config);
    config
}

struct Dispatcher {
    metrics: DispatcherMetrics,
    stop: ShutdownHandle,
    task: JoinHandle<Result<(), DispatchError>>,
}

impl Dispatcher {
    /// The deployed dispatcher on the test's topics, charging from `commands_topic`.
    fn start(stack: &Stack, sim: &Simulator, commands_topic: &str) -> Self {
        let metrics = DispatcherMetrics::register(&prometheus::Registry::new()).unwrap();
        let mut config = DispatcherConfig::new(&stack.settings, &sim.base_url, metrics.clone());
        config.commands_topic = commands_topic.to_owned();
        config.requests_topic = stack.topics.requests.clone();
        config.outcomes_topic = stack.topics.outcomes.clone();
        config.dlq_topic = stack.dlq();
        config.group_id = testkit::unique("it-verify-dispatch");
        config.request_timeout = Duration::from_secs(10);
        config.http_retry.backoff_initial = Duration::from_millis(10);
        config.http_retry.backoff_max = Duration::from_millis(50);
        config.retry = RetryPolicy { backoff_initial: Duration::from_millis(50), ..RetryPolicy::default() };
        let stop = ShutdownHandle::new();
        let task = tokio::spawn(dispatcher::run(config, stop.clone()));
        Self { metrics, stop, task }
    }

    async fn stop(self) {
        self.stop.request();
        tokio::time::timeout(STOP_TIMEOUT, self.task)
            .await
            .expect("the dispatcher stops")
            .expect("no panic")
            .expect("a clean stop");
    }
}

/// The saga with `settings`, its metrics kept for the test.
async fn start_saga(stack: &Stack, settings: SagaSettings) -> (Streams, SagaMetrics) {
    let metrics = SagaMetrics::new(&prometheus::Registry::new()).unwrap();
    let codec = RegistryCodec::new(
        EventCodec::new(&stack.settings.schema_registry_url).unwrap(),
        tokio::runtime::Handle::current(),
    );
    let topology = processor::topology(codec, settings, metrics.clone(), &stack.topics).unwrap();
    let config = stack.config("saga", stack.state.path());
    let streams = running(
        tokio::task::spawn_blocking(move || Streams::start(topology, config)).await.unwrap().unwrap(),
    )
    .await;
    (streams, metrics)
}

/// Settings for tests that take seconds: short timeout, quick re-asking.
fn settings(payment_timeout: Duration) -> SagaSettings {
    SagaSettings {
        payment_timeout,
        charge_deadline: payment_timeout / 2,
        verify_backoff_initial: Duration::from_millis(200),
        verify_backoff_max: Duration::from_secs(1),
        ..SagaSettings::default()
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "gave up waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

async fn decoded<E: paystream_schemas::Event>(stack: &Stack, topic: &str, id: Uuid, n: usize) -> Vec<E> {
    let mut events = Vec::new();
    for record in stack.records_for(topic, id, n) {
        events.push(stack.codec.decode::<E>(record.value.as_deref().unwrap()).await.unwrap());
    }
    events
}

/// The one result agrees with the provider's ledger: charged ⇔ COMPLETED.
async fn assert_the_ledger_agrees(sim: &Simulator, id: Uuid, results: &[PaymentResult]) -> Value {
    assert_eq!(results.len(), 1, "exactly one result: {results:?}");
    let ledger = sim.ledger(id).await;
    let charged =
        ledger["charged"].as_bool().unwrap_or_else(|| panic!("the ledger says charged or not: {ledger}"));
    assert_eq!(
        charged,
        results[0].status == PaymentResultStatus::Completed,
        "the provider's ledger {ledger} disagrees with the result {:?}",
        results[0]
    );
    ledger
}

// ---------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------

/// Seed 000's lost callback: the provider charged but never said so. The timer fires, the saga
/// asks, the provider says charged: COMPLETED (the wallet is debited, not refunded).
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_callback_is_verified_and_completes_because_the_provider_charged() {
    let stack = Stack::new().await;
    let relay_url = start_relay(&stack).await;
    let sim = Simulator::start(provider(&relay_url, 11, |c| c.rates.lost_rate = 1.0)).await;
    let dispatcher = Dispatcher::start(&stack, &sim, &stack.topics.commands);
    let timer_state = tempfile::tempdir().unwrap();
    let timers = stack.start_timers(timer_state.path()).await;
    let (saga, metrics) = start_saga(&stack, settings(Duration::from_secs(4))).await;

    let id = Uuid::new_v4();
    stack.send(&stack.topics.initiated, id, &initiated(id)).await;
    let results = stack.results_for(id, 1).await;
    assert_eq!(results.iter().map(|r| r.status).collect::<Vec<_>>(), vec![PaymentResultStatus::Completed]);
    let requests: Vec<ProviderRequest> = decoded(&stack, &stack.topics.requests, id, 1).await;
    assert_eq!(requests.len(), 1, "one status query, no void, no refund: {requests:?}");
    assert!(matches!(requests[0].action, ProviderAction::StatusQuery { .. }));
    assert_eq!(metrics.signals.with_label_values(&["timer_fired", "transition"]).get(), 1, "the timer fired");
    assert_eq!(dispatcher.metrics.requests_total("status", DispatchResult::Charged), 1);
    assert_eq!(sim.metrics.deliveries_total("delivered"), 0, "the callback was lost");
    let ledger = assert_the_ledger_agrees(&sim, id, &results).await;
    assert_eq!(ledger["charge"], "SUCCEEDED");

    saga.close().unwrap();
    timers.close().unwrap();
    dispatcher.stop().await;
    sim.stop().await;
    stack.cleanup().await;
}

/// The charge never reached the provider (stuck behind others): the timer fires, the provider
/// holds nothing, the saga voids it and only then fails it FAILED_TIMEOUT. When the stuck
/// command finally gets through, the simulator refuses it for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_with_no_charge_is_voided_then_failed_and_the_key_can_never_be_charged() {
    let stack = Stack::new().await;
    let relay_url = start_relay(&stack).await;
    let sim = Simulator::start(provider(&relay_url, 12, |_| {})).await;
    // The charges go where nobody dispatches them; the provider requests are answered.
    let stuck = format!("{}.stuck", stack.topics.commands);
    testkit::create_topic(&stack.settings, &stuck, 3).await;
    let verifier = Dispatcher::start(&stack, &sim, &stuck);
    let timer_state = tempfile::tempdir().unwrap();
    let timers = stack.start_timers(timer_state.path()).await;
    let mut saga_settings = settings(Duration::from_secs(2));
    saga_settings.charge_deadline = Duration::from_secs(60);
    let (saga, _) = start_saga(&stack, saga_settings).await;

    let id = Uuid::new_v4();
    stack.send(&stack.topics.initiated, id, &initiated(id)).await;
    let results = stack.results_for(id, 1).await;
    assert_eq!(
        results.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![PaymentResultStatus::FailedTimeout]
    );
    let requests: Vec<ProviderRequest> = decoded(&stack, &stack.topics.requests, id, 2).await;
    assert_eq!(requests.iter().map(|r| r.action.label()).collect::<Vec<_>>(), vec!["status", "void"]);
    let ledger = assert_the_ledger_agrees(&sim, id, &results).await;
    assert_eq!(ledger["charge"], "VOIDED");
    assert_eq!(sim.charge_requests(), 0, "nothing was charged before the void");

    // The stuck command gets through at last (an old dispatcher, say, that ignores deadlines
    // would send it too): the simulator refuses it for good, and the result stands.
    let charger = Dispatcher::start(&stack, &sim, &stack.topics.commands);
    let outcomes: Vec<DispatchOutcome> = decoded(&stack, &stack.topics.outcomes, id, 3).await;
    let refused = outcomes
        .iter()
        .find(|o| o.command_id == processor::charge_command_id(id))
        .expect("the charge's outcome");
    assert_eq!((refused.outcome, refused.attempts), (DispatchResult::Rejected, 1), "{refused:?}");
    assert!(refused.detail.contains("410") && refused.detail.contains("charge-voided"), "{}", refused.detail);
    assert_eq!(sim.metrics.charges_total("voided"), 1);
    let (code, _) = charge_directly(&sim, id).await;
    assert_eq!(code, 410, "and so is any other attempt with the key");
    let results = stack.results_for(id, 1).await;
    assert_the_ledger_agrees(&sim, id, &results).await;

    saga.close().unwrap();
    timers.close().unwrap();
    verifier.stop().await;
    charger.stop().await;
    sim.stop().await;
    testkit::delete_topics(&stack.settings, &[&stuck]).await;
    stack.cleanup().await;
}

async fn charge_directly(sim: &Simulator, id: Uuid) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/charges", sim.base_url))
        .header("Idempotency-Key", id.to_string())
        .json(&json!({ "paymentId": id, "amount": "42.00", "currency": "RUB", "description": "it" }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The provider's success arrives after the payment failed on a stale FAILED that overtook it:
/// the saga refunds the charge at the provider and publishes one reconciliation event.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_success_after_a_failure_is_refunded_at_the_provider_and_reconciled_once() {
    let stack = Stack::new().await;
    let relay_url = start_relay(&stack).await;
    let sim = Simulator::start(provider(&relay_url, 13, |c| {
        c.rates.delay_min = Duration::from_secs(3);
        c.rates.delay_max = Duration::from_secs(3);
    }))
    .await;
    let dispatcher = Dispatcher::start(&stack, &sim, &stack.topics.commands);
    let (saga, metrics) = start_saga(&stack, settings(Duration::from_secs(60))).await;

    let id = Uuid::new_v4();
    stack.send(&stack.topics.initiated, id, &initiated(id)).await;
    wait_until("the provider took the charge", || sim.metrics.charges_total("accepted") == 1).await;
    // A provisional FAILED overtakes the verdict (the simulator's reordered fault, arriving first).
    stack.send(&stack.topics.callbacks, id, &callback(id, ProviderStatus::Failed)).await;
    let results = stack.results_for(id, 1).await;
    assert_eq!(results.iter().map(|r| r.status).collect::<Vec<_>>(), vec![PaymentResultStatus::Failed]);

    wait_until("the late charge is refunded", || metrics.refunds.with_label_values(&["refunded"]).get() == 1)
        .await;
    let events: Vec<ReconciliationEvent> = decoded(&stack, &stack.topics.reconciliation, id, 1).await;
    assert_eq!(events.len(), 1, "one reconciliation event: {events:?}");
    let requests: Vec<ProviderRequest> = decoded(&stack, &stack.topics.requests, id, 1).await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(matches!(&requests[0].action, ProviderAction::Refund { amount, currency, .. }
        if amount.minor() == 4_200 && currency == "RUB"));
    let event = &events[0];
    assert_eq!(
        (event.discrepancy, event.remedy, event.published_status, event.refund_request_id),
        (
            Discrepancy::ChargedAfterFailure,
            Remedy::RefundRequested,
            PaymentResultStatus::Failed,
            Some(requests[0].request_id)
        )
    );
    assert_eq!(event.amount.minor(), 4_200);
    assert_eq!(metrics.reconciliations.with_label_values(&["CHARGED_AFTER_FAILURE"]).get(), 1);
    assert_eq!(dispatcher.metrics.requests_total("refund", DispatchResult::Refunded), 1);
    let results = stack.results_for(id, 1).await;
    let ledger = assert_the_ledger_agrees(&sim, id, &results).await;
    assert_eq!((&ledger["charge"], &ledger["refunded"]), (&json!("REFUNDED"), &json!(true)));

    saga.close().unwrap();
    dispatcher.stop().await;
    sim.stop().await;
    stack.cleanup().await;
}

/// A command that waited past its deadline is never sent: the dispatcher reports it EXPIRED
/// with no attempt, the saga voids the key (an earlier, crashed run might have sent it) and
/// fails the payment.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_command_is_never_sent() {
    let stack = Stack::new().await;
    let relay_url = start_relay(&stack).await;
    let sim = Simulator::start(provider(&relay_url, 14, |_| {})).await;
    let mut saga_settings = settings(Duration::from_secs(60));
    saga_settings.charge_deadline = Duration::from_millis(300);
    let (saga, _) = start_saga(&stack, saga_settings).await;

    let id = Uuid::new_v4();
    stack.send(&stack.topics.initiated, id, &initiated(id)).await;
    let commands: Vec<ChargeCommand> = decoded(&stack, &stack.topics.commands, id, 1).await;
    let not_after = commands[0].not_after.expect("every command has a deadline");
    let until = (not_after - Utc::now()).to_std().unwrap_or_default();
    // The dispatcher is late: it starts once the deadline has passed.
    tokio::time::sleep(until + Duration::from_millis(100)).await;
    let dispatcher = Dispatcher::start(&stack, &sim, &stack.topics.commands);

    let results = stack.results_for(id, 1).await;
    assert_eq!(results.iter().map(|r| r.status).collect::<Vec<_>>(), vec![PaymentResultStatus::Failed]);
    let outcomes: Vec<DispatchOutcome> = decoded(&stack, &stack.topics.outcomes, id, 2).await;
    let expired =
        outcomes.iter().find(|o| o.command_id == commands[0].command_id).expect("the charge's outcome");
    assert_eq!((expired.outcome, expired.attempts), (DispatchResult::Expired, 0), "{expired:?}");
    assert_eq!(dispatcher.metrics.attempts_total(), 0, "no charge attempt");
    assert_eq!(dispatcher.metrics.expired_total(), 1);
    assert_eq!(sim.charge_requests(), 0, "the provider never saw the charge");
    let requests: Vec<ProviderRequest> = decoded(&stack, &stack.topics.requests, id, 1).await;
    assert_eq!(requests.iter().map(|r| r.action.label()).collect::<Vec<_>>(), vec!["void"]);
    let ledger = assert_the_ledger_agrees(&sim, id, &results).await;
    assert_eq!(ledger["charge"], "VOIDED");

    saga.close().unwrap();
    dispatcher.stop().await;
    sim.stop().await;
    stack.cleanup().await;
}
