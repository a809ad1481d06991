//! The provider dispatcher against the real stack (Kafka, the Schema Registry) and the
//! real provider simulator over HTTP.
//!
//! Every test makes its own commands, outcomes and DLQ topics and its own consumer group;
//! the simulator runs in-process on port 0, and its callbacks go to a small axum receiver
//! that checks each signature with the API's verifier. Commands are produced as the saga
//! will write them: Avro in the Confluent wire format, keyed by paymentId.
//!
//! Waits are bounded and poll a condition (counters, topics); nothing sleeps to assert.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use paystream_api::signature::{self, Verifier};
use paystream_processors::dispatcher::{self, DispatchError, DispatcherConfig, DispatcherMetrics};
use paystream_processors::dlq;
use paystream_processors::retry::RetryPolicy;
use paystream_provider_sim::{SimConfig, SimMetrics};
use paystream_schemas::events::{ChargeCommand, DispatchOutcome, DispatchResult};
use paystream_schemas::{time, EventCodec};
use paystream_stack::testkit::{self, Received};
use paystream_stack::{kafka, StackSettings};
use paystream_topology::ShutdownHandle;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const SECRET: &[u8] = b"dispatcher-test-secret";
/// Budget for an expected state to be reached.
const WAIT: Duration = Duration::from_secs(60);
/// Budget for `run` to return after shutdown was requested.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a topic reader keeps reading after it has what it expects, to catch extras.
const SETTLE: Duration = Duration::from_secs(2);
const PARTITIONS: i32 = 3;
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// The stack, the test's topics, the simulator and the callback receiver
// ---------------------------------------------------------------------------------------

struct Stack {
    settings: StackSettings,
    codec: EventCodec,
    producer: FutureProducer,
}

async fn stack() -> Stack {
    let settings = testkit::kafka_stack().await;
    common::registry_ready(&settings).await;
    let codec = EventCodec::new(&settings.schema_registry_url).expect("codec");
    let producer = kafka::idempotent_producer(&settings.kafka_bootstrap).create().expect("producer");
    Stack { settings, codec, producer }
}

struct Topics {
    commands: String,
    /// The saga's provider requests (the dispatcher's second loop reads them).
    requests: String,
    outcomes: String,
    dlq: String,
}

impl Topics {
    async fn create(stack: &Stack) -> Self {
        Self::create_with(stack, PARTITIONS).await
    }

    async fn create_with(stack: &Stack, partitions: i32) -> Self {
        let topics = Self {
            commands: testkit::unique("it.commands"),
            requests: testkit::unique("it.requests"),
            outcomes: testkit::unique("it.outcomes"),
            dlq: testkit::unique("it.dlq"),
        };
        for topic in [&topics.commands, &topics.requests, &topics.outcomes, &topics.dlq] {
            testkit::create_topic(&stack.settings, topic, partitions).await;
        }
        topics
    }

    async fn delete(self, stack: &Stack) {
        testkit::delete_topics(&stack.settings, &[&self.commands, &self.requests, &self.outcomes, &self.dlq])
            .await;
    }
}

/// A callback as the receiver got it, after its signature verified.
#[derive(Clone, Debug)]
struct Callback {
    body: Value,
}

/// The API's callback endpoint reduced to verifying signatures and recording bodies.
struct Receiver {
    url: String,
    callbacks: Arc<Mutex<Vec<Callback>>>,
    forged: Arc<Mutex<u32>>,
}

#[derive(Clone)]
struct ReceiverState {
    callbacks: Arc<Mutex<Vec<Callback>>>,
    forged: Arc<Mutex<u32>>,
    verifier: Arc<Verifier>,
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    if state.verifier.verify(header, &body, unix_now_s()).is_err() {
        *state.forged.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let body: Value = serde_json::from_slice(&body).expect("a callback is JSON");
    state.callbacks.lock().unwrap().push(Callback { body });
    StatusCode::OK
}

fn unix_now_s() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    i64::try_from(since_epoch.as_secs()).expect("seconds fit in i64")
}

impl Receiver {
    async fn start() -> Self {
        let state = ReceiverState {
            callbacks: Arc::default(),
            forged: Arc::default(),
            verifier: Arc::new(Verifier::new(vec![SECRET.to_vec()])),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/callback", listener.local_addr().unwrap());
        let router = Router::new().route("/api/v1/callback", post(receive)).with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, callbacks: state.callbacks, forged: state.forged }
    }

    fn callbacks_for(&self, payment_id: Uuid) -> Vec<Callback> {
        let id = Value::String(payment_id.to_string());
        self.callbacks.lock().unwrap().iter().filter(|c| c.body["paymentId"] == id).cloned().collect()
    }
}

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

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(STOP_TIMEOUT, self.task)
            .await
            .expect("the simulator stops")
            .expect("no panic")
            .expect("a clean stop");
    }
}

/// A provider written for one test, for what the simulator does not do: it answers `409`
/// (idempotency key in use) to each key's first `conflicts_first` attempts and `202`
/// afterwards, each after `latency`, and records every attempt by its `Idempotency-Key`
/// and by the dispatcher instance that made it (the first path segment: each instance is
/// given `{base_url}/{instance}` as its provider URL).
struct ScriptedProvider {
    base_url: String,
    /// Idempotency key → the instances of its attempts, in order.
    attempts: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

#[derive(Clone)]
struct ScriptState {
    attempts: Arc<Mutex<HashMap<String, Vec<String>>>>,
    conflicts_first: usize,
    latency: Duration,
}

async fn scripted_charge(
    State(state): State<ScriptState>,
    Path(instance): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, &'static str) {
    let key = headers
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .expect("every charge carries an Idempotency-Key")
        .to_owned();
    let seen = {
        let mut attempts = state.attempts.lock().unwrap();
        let of_key = attempts.entry(key).or_default();
        of_key.push(instance);
        of_key.len()
    };
    // The provider's own processing time, so that commands are in flight when the test acts.
    tokio::time::sleep(state.latency).await;
    if seen <= state.conflicts_first {
        (StatusCode::CONFLICT, r#"{"type":"idempotency-key-in-use"}"#)
    } else {
        (StatusCode::ACCEPTED, r#"{"status":"pending"}"#)
    }
}

impl ScriptedProvider {
    async fn start(conflicts_first: usize, latency: Duration) -> Self {
        let attempts: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let state = ScriptState { attempts: attempts.clone(), conflicts_first, latency };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let router = Router::new().route("/{instance}/v1/charges", post(scripted_charge)).with_state(state);
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { base_url, attempts }
    }

    fn url_for(&self, instance: &str) -> String {
        format!("{}/{instance}", self.base_url)
    }

    fn attempts_total(&self) -> usize {
        self.attempts.lock().unwrap().values().map(Vec::len).sum()
    }

    fn attempts(&self) -> HashMap<String, Vec<String>> {
        self.attempts.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// The dispatcher
// ---------------------------------------------------------------------------------------

struct Running {
    metrics: DispatcherMetrics,
    stop: ShutdownHandle,
    task: JoinHandle<Result<(), DispatchError>>,
}

/// The deployed configuration on the test's topics, with short pauses between attempts so
/// the retry tests take milliseconds.
fn config(stack: &Stack, topics: &Topics, provider_url: &str) -> DispatcherConfig {
    let metrics = DispatcherMetrics::register(&prometheus::Registry::new()).expect("metrics");
    let mut config = DispatcherConfig::new(&stack.settings, provider_url, metrics);
    config.commands_topic = topics.commands.clone();
    config.requests_topic = topics.requests.clone();
    config.outcomes_topic = topics.outcomes.clone();
    config.dlq_topic = topics.dlq.clone();
    config.group_id = testkit::unique("it-dispatch");
    // Generous: a loaded 2-core CI machine must not turn a slow answer into a retry that
    // changes the attempt counts the tests assert.
    config.request_timeout = Duration::from_secs(10);
    config.http_retry.backoff_initial = Duration::from_millis(10);
    config.http_retry.backoff_max = Duration::from_millis(50);
    config.retry = RetryPolicy { backoff_initial: Duration::from_millis(50), ..RetryPolicy::default() };
    config
}

fn start(config: DispatcherConfig) -> Running {
    let metrics = config.metrics.clone();
    let stop = ShutdownHandle::new();
    let task = tokio::spawn(dispatcher::run(config, stop.clone()));
    Running { metrics, stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.request();
        tokio::time::timeout(STOP_TIMEOUT, self.task)
            .await
            .unwrap_or_else(|_| panic!("the dispatcher did not return within {STOP_TIMEOUT:?}"))
            .expect("the dispatcher panicked")
            .expect("a clean stop");
    }

    /// Waits until `count` commands were finished and committed, and no more.
    async fn wait_for_records(&mut self, count: u64) {
        let started = Instant::now();
        while self.metrics.records_total() < count {
            if self.task.is_finished() {
                let ended = (&mut self.task).await;
                panic!("the dispatcher stopped after {} records: {ended:?}", self.metrics.records_total());
            }
            assert!(
                started.elapsed() < WAIT,
                "the dispatcher finished {} of {count} commands in {WAIT:?}",
                self.metrics.records_total()
            );
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(self.metrics.records_total(), count, "more commands than produced were finished");
    }
}

// ---------------------------------------------------------------------------------------
// Commands in, outcomes and dead letters out
// ---------------------------------------------------------------------------------------

fn command(currency: &str) -> ChargeCommand {
    ChargeCommand {
        command_id: Uuid::new_v4(),
        payment_id: Uuid::new_v4(),
        wallet_id: Uuid::new_v4(),
        amount: "42.50".parse().unwrap(),
        currency: currency.to_owned(),
        description: "dispatcher test".to_owned(),
        issued_at: time::now(),
        not_after: None,
    }
}

/// Where a record landed, and its bytes.
#[derive(Clone, Debug)]
struct Produced {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

async fn produce_raw(
    stack: &Stack,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: Option<&[u8]>,
) -> Produced {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).partition(partition).key(key);
    if let Some(value) = value {
        record = record.payload(value);
    }
    let delivery = stack
        .producer
        .send(record, Timeout::After(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    Produced { partition, offset: delivery.offset, key: Some(key.to_vec()), value: value.map(<[u8]>::to_vec) }
}

/// Produces `command` keyed by its paymentId to `partition`.
async fn produce(stack: &Stack, topic: &str, partition: i32, command: &ChargeCommand) -> Produced {
    let value = stack.codec.encode(command).await.expect("encode");
    produce_raw(stack, topic, partition, command.payment_id.to_string().as_bytes(), Some(&value)).await
}

/// Reads `topic` (read_committed) until `count` records arrived, and `SETTLE` more.
async fn read(stack: &Stack, topic: &str, count: usize) -> Vec<Received> {
    let reader = testkit::consumer(&stack.settings, topic, "read_committed");
    tokio::task::spawn_blocking(move || testkit::consume_until(&reader, WAIT, SETTLE, |r| r.len() >= count))
        .await
        .unwrap()
}

/// The outcomes on `topics.outcomes`, decoded, after checking each is keyed by its payment.
async fn outcomes(stack: &Stack, topics: &Topics, count: usize) -> Vec<DispatchOutcome> {
    let mut decoded = Vec::new();
    for record in read(stack, &topics.outcomes, count).await {
        let outcome: DispatchOutcome =
            stack.codec.decode(record.value.as_deref().unwrap()).await.expect("decode");
        assert_eq!(
            record.key.as_deref(),
            Some(outcome.payment_id.to_string().as_bytes()),
            "keyed by paymentId"
        );
        decoded.push(outcome);
    }
    decoded
}

fn assert_outcome(outcome: &DispatchOutcome, command: &ChargeCommand, result: DispatchResult, attempts: i32) {
    assert_eq!(outcome.command_id, command.command_id, "{outcome:?}");
    assert_eq!(outcome.payment_id, command.payment_id, "{outcome:?}");
    assert_eq!(outcome.outcome, result, "{outcome:?}");
    assert_eq!(outcome.attempts, attempts, "{outcome:?}");
    assert!(!outcome.detail.is_empty());
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "gave up waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// A charge the provider takes: one HTTP attempt, an ACCEPTED outcome keyed by the
/// payment, and later the provider's callback, signed so the API's verifier accepts it.
#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_charge_is_reported_and_the_provider_calls_back_signed() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let receiver = Receiver::start().await;
    let sim = Simulator::start(SimConfig::reliable(&receiver.url, SECRET, 11)).await;
    let charge = command("RUB");
    produce(&stack, &topics.commands, 0, &charge).await;

    let mut running = start(config(&stack, &topics, &sim.base_url));
    running.wait_for_records(1).await;
    let outcomes = outcomes(&stack, &topics, 1).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_outcome(&outcomes[0], &charge, DispatchResult::Accepted, 1);
    assert_eq!(running.metrics.attempts_total(), 1);
    assert_eq!(running.metrics.retries_total(), 0);
    assert_eq!(running.metrics.in_flight_now(), 0);

    wait_until("the provider's callback", || !receiver.callbacks_for(charge.payment_id).is_empty()).await;
    let callback = &receiver.callbacks_for(charge.payment_id)[0];
    assert_eq!(callback.body["status"], "SUCCEEDED");
    assert_eq!(*receiver.forged.lock().unwrap(), 0, "the signature verifies");
    assert_eq!(sim.metrics.charges_total("accepted"), 1);

    running.stop().await;
    sim.stop().await;
    topics.delete(&stack).await;
}

/// The provider answers 503 twice, then takes the charge: ACCEPTED after 3 attempts,
/// two 5xx errors and two retries counted.
#[tokio::test(flavor = "multi_thread")]
async fn five_hundreds_then_success_is_accepted_after_n_plus_one_attempts() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let receiver = Receiver::start().await;
    let mut sim_config = SimConfig::reliable(&receiver.url, SECRET, 12);
    sim_config.rates.charge_5xx_first = 2;
    let sim = Simulator::start(sim_config).await;
    let charge = command("RUB");
    produce(&stack, &topics.commands, 1, &charge).await;

    let mut running = start(config(&stack, &topics, &sim.base_url));
    running.wait_for_records(1).await;
    let outcomes = outcomes(&stack, &topics, 1).await;
    assert_outcome(&outcomes[0], &charge, DispatchResult::Accepted, 3);
    assert_eq!(running.metrics.errors_total("5xx"), 2);
    assert_eq!(running.metrics.retries_total(), 2);
    assert_eq!(sim.metrics.charges_total("unavailable"), 2);
    assert_eq!(sim.metrics.charges_total("accepted"), 1);

    running.stop().await;
    sim.stop().await;
    topics.delete(&stack).await;
}

/// A provider that always fails: RETRIES_EXHAUSTED after exactly the attempt cap; nothing
/// was taken, so no callback will come. An unreachable provider ends the same way, with
/// connection errors counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_or_unreachable_provider_exhausts_the_attempts() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let receiver = Receiver::start().await;
    let mut sim_config = SimConfig::reliable(&receiver.url, SECRET, 13);
    sim_config.rates.charge_5xx_rate = 1.0;
    let sim = Simulator::start(sim_config).await;
    let (down, unreachable) = (command("RUB"), command("RUB"));
    produce(&stack, &topics.commands, 0, &down).await;

    let mut failing = config(&stack, &topics, &sim.base_url);
    failing.http_retry.attempts_max = 4;
    let mut running = start(failing);
    running.wait_for_records(1).await;
    let outcome = &outcomes(&stack, &topics, 1).await[0];
    assert_outcome(outcome, &down, DispatchResult::RetriesExhausted, 4);
    assert!(outcome.detail.contains("503"), "{}", outcome.detail);
    assert_eq!(running.metrics.errors_total("5xx"), 4);
    assert_eq!(running.metrics.retries_total(), 3, "no pause after the last attempt");
    assert_eq!(sim.metrics.charges_total("unavailable"), 4);
    assert_eq!(sim.metrics.charges_total("accepted"), 0);
    assert_eq!(sim.metrics.pending_total(), 0, "nothing taken, nothing to call back");
    running.stop().await;
    sim.stop().await;

    // A port nobody listens on: bound, then released.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    produce(&stack, &topics.commands, 1, &unreachable).await;
    let mut nowhere = config(&stack, &topics, &format!("http://{closed}"));
    nowhere.http_retry.attempts_max = 3;
    let mut running = start(nowhere);
    running.wait_for_records(2).await; // a new group: the first command again, and this one
    let all = outcomes(&stack, &topics, 3).await;
    let outcome = all.iter().find(|o| o.payment_id == unreachable.payment_id).expect("an outcome");
    assert_outcome(outcome, &unreachable, DispatchResult::RetriesExhausted, 3);
    assert_eq!(running.metrics.errors_total("connect"), 6, "3 attempts for each of the 2 commands");
    running.stop().await;
    topics.delete(&stack).await;
}

/// A 4xx other than 408/429 (here 422: the provider refuses the currency) is REJECTED at
/// once: one attempt, no retry.
#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_is_rejected_without_a_retry() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let receiver = Receiver::start().await;
    let sim = Simulator::start(SimConfig::reliable(&receiver.url, SECRET, 14)).await;
    let charge = command("EURO");
    produce(&stack, &topics.commands, 2, &charge).await;

    let mut running = start(config(&stack, &topics, &sim.base_url));
    running.wait_for_records(1).await;
    let outcome = &outcomes(&stack, &topics, 1).await[0];
    assert_outcome(outcome, &charge, DispatchResult::Rejected, 1);
    assert!(
        outcome.detail.contains("422") && outcome.detail.contains("invalid-currency"),
        "{}",
        outcome.detail
    );
    assert_eq!(running.metrics.errors_total("4xx"), 1);
    assert_eq!(running.metrics.retries_total(), 0);
    assert_eq!(sim.metrics.charges_total("invalid"), 1);

    running.stop().await;
    sim.stop().await;
    topics.delete(&stack).await;
}

/// The same command twice (same commandId) is charged once and answered once. A second
/// command for the same payment (a new commandId) is charged again, and the provider's
/// idempotency key makes that harmless: a replayed answer and still one callback.
#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_command_is_charged_once_and_the_provider_dedups_the_rest() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let receiver = Receiver::start().await;
    let sim = Simulator::start(SimConfig::reliable(&receiver.url, SECRET, 15)).await;
    let charge = command("RUB");
    let reissued = ChargeCommand { command_id: Uuid::new_v4(), ..charge.clone() };
    produce(&stack, &topics.commands, 0, &charge).await;
    produce(&stack, &topics.commands, 0, &charge).await;
    produce(&stack, &topics.commands, 0, &reissued).await;

    let mut running = start(config(&stack, &topics, &sim.base_url));
    running.wait_for_records(3).await;
    let outcomes = outcomes(&stack, &topics, 2).await;
    assert_eq!(outcomes.len(), 2, "one outcome per commandId: {outcomes:?}");
    assert_outcome(&outcomes[0], &charge, DispatchResult::Accepted, 1);
    assert_outcome(&outcomes[1], &reissued, DispatchResult::Accepted, 1);
    assert_eq!(running.metrics.duplicates_total(), 1);
    assert_eq!(running.metrics.attempts_total(), 2, "the duplicate made no HTTP call");
    assert_eq!(sim.metrics.charges_total("accepted"), 1);
    assert_eq!(sim.metrics.charges_total("replayed"), 1);

    wait_until("the callback", || !receiver.callbacks_for(charge.payment_id).is_empty()).await;
    wait_until("the simulator idle", || sim.metrics.pending_total() == 0).await;
    assert_eq!(receiver.callbacks_for(charge.payment_id).len(), 1, "one charge, one callback");

    running.stop().await;
    sim.stop().await;
    topics.delete(&stack).await;
}

/// Records that are not ChargeCommands (not Avro; no value) go to the DLQ byte for byte
/// with the reason and their source in headers, and the command after them on the same
/// partition is still dispatched.
#[tokio::test(flavor = "multi_thread")]
async fn poison_commands_are_dead_lettered_and_dispatching_continues() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let receiver = Receiver::start().await;
    let sim = Simulator::start(SimConfig::reliable(&receiver.url, SECRET, 16)).await;
    let garbage = produce_raw(&stack, &topics.commands, 1, b"k1", Some(b"{\"not\":\"avro\"}")).await;
    let tombstone = produce_raw(&stack, &topics.commands, 1, b"k2", None).await;
    let charge = command("RUB");
    produce(&stack, &topics.commands, 1, &charge).await;

    let mut running = start(config(&stack, &topics, &sim.base_url));
    running.wait_for_records(3).await;
    let outcomes = outcomes(&stack, &topics, 1).await;
    assert_outcome(&outcomes[0], &charge, DispatchResult::Accepted, 1);
    assert_eq!(running.metrics.dead_lettered_total("wrong-magic-byte"), 1);
    assert_eq!(running.metrics.dead_lettered_total("empty"), 1);

    let letters = read(&stack, &topics.dlq, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let header = |letter: &Received, name: &str| {
        std::str::from_utf8(letter.header(name).unwrap_or_default()).unwrap().to_owned()
    };
    for (original, reason) in [(&garbage, "wrong-magic-byte"), (&tombstone, "empty")] {
        // The letters keep their original keys, so they may sit on different DLQ partitions.
        let letter = letters
            .iter()
            .find(|l| header(l, dlq::HEADER_REASON) == reason)
            .unwrap_or_else(|| panic!("no letter for {reason}: {letters:?}"));
        let field = |name: &str| header(letter, name);
        assert!(!field(dlq::HEADER_DETAIL).is_empty());
        assert_eq!(field(dlq::HEADER_SOURCE_TOPIC), topics.commands);
        assert_eq!(field(dlq::HEADER_SOURCE_PARTITION), original.partition.to_string());
        assert_eq!(field(dlq::HEADER_SOURCE_OFFSET), original.offset.to_string());
        assert_eq!(field(dlq::HEADER_PROCESSOR), "dispatcher");
        assert_eq!(letter.key, original.key, "the original key");
        assert_eq!(letter.value, original.value, "the original bytes");
    }

    running.stop().await;
    sim.stop().await;
    topics.delete(&stack).await;
}

/// A 409 is the provider saying the idempotency key is in use: another request with it is
/// being processed, and may charge. It is retried with back-off on the same key, never
/// reported REJECTED (which would fail and refund a payment the provider charges): a 409
/// followed by a 202 ends ACCEPTED after two attempts with the same key.
#[tokio::test(flavor = "multi_thread")]
async fn a_409_key_in_use_is_retried_on_the_same_key_and_ends_accepted() {
    let stack = stack().await;
    let topics = Topics::create(&stack).await;
    let provider = ScriptedProvider::start(1, Duration::ZERO).await;
    let charge = command("RUB");
    produce(&stack, &topics.commands, 0, &charge).await;

    let mut running = start(config(&stack, &topics, &provider.url_for("a")));
    running.wait_for_records(1).await;
    let outcomes = outcomes(&stack, &topics, 1).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_outcome(&outcomes[0], &charge, DispatchResult::Accepted, 2);
    let attempts = provider.attempts();
    assert_eq!(
        attempts.get(&charge.payment_id.to_string()).map(Vec::len),
        Some(2),
        "two attempts, both with Idempotency-Key = paymentId: {attempts:?}"
    );
    assert_eq!(attempts.len(), 1, "no other key was used: {attempts:?}");
    assert_eq!(running.metrics.errors_total("key-in-use"), 1);
    assert_eq!(running.metrics.retries_total(), 1);
    assert_eq!(running.metrics.outcomes_total(DispatchResult::Rejected), 0);

    running.stop().await;
    topics.delete(&stack).await;
}

/// Issue 11, scenario 5: two dispatchers in one group, the second joining while the first
/// has commands in flight and more queued. The partitions that move are given up only
/// after their worker stopped, dropped its queue, finished its call in flight and
/// committed, so no payment is charged by both instances, each command is finished once,
/// and every payment gets its outcome.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_never_lets_two_dispatchers_charge_the_same_payment() {
    /// Six partitions, so there is something to move.
    const REBALANCE_PARTITIONS: i32 = 6;
    /// Commands per partition: with the provider's latency, several seconds of work each,
    /// longer than a rebalance takes.
    const PER_PARTITION: usize = 40;
    /// Attempts the first instance makes before the second joins.
    const BEFORE_JOIN: usize = 12;
    let stack = stack().await;
    let topics = Topics::create_with(&stack, REBALANCE_PARTITIONS).await;
    let provider = ScriptedProvider::start(0, Duration::from_millis(200)).await;
    let total = PER_PARTITION * REBALANCE_PARTITIONS as usize;
    let mut commands = Vec::new();
    for i in 0..total {
        let charge = command("RUB");
        let partition = i32::try_from(i).unwrap() % REBALANCE_PARTITIONS;
        produce(&stack, &topics.commands, partition, &charge).await;
        commands.push(charge);
    }
    let group = testkit::unique("it-dispatch-rebalance");
    let config_for = |instance: &str| {
        let mut config = config(&stack, &topics, &provider.url_for(instance));
        config.group_id = group.clone();
        config
    };

    let first = start(config_for("a"));
    wait_until("the first dispatcher charging", || provider.attempts_total() >= BEFORE_JOIN).await;
    let second = start(config_for("b"));
    let (first_metrics, second_metrics) = (first.metrics.clone(), second.metrics.clone());
    let finished = || first_metrics.records_total() + second_metrics.records_total();
    wait_until("every command finished by one of the two", || {
        assert!(!first.task.is_finished() && !second.task.is_finished(), "a dispatcher stopped early");
        finished() >= total as u64
    })
    .await;
    second.stop().await;
    first.stop().await;

    let attempts = provider.attempts();
    let by_both: Vec<_> =
        attempts.iter().filter(|(_, instances)| instances.iter().collect::<HashSet<_>>().len() > 1).collect();
    assert!(by_both.is_empty(), "payments charged by both dispatchers: {by_both:?}");
    let charged_twice: Vec<_> = attempts.iter().filter(|(_, instances)| instances.len() > 1).collect();
    assert!(charged_twice.is_empty(), "payments charged more than once: {charged_twice:?}");
    for charge in &commands {
        assert!(attempts.contains_key(&charge.payment_id.to_string()), "{} never charged", charge.payment_id);
    }
    let charged_by = |instance: &str| attempts.values().filter(|i| i[0] == instance).count();
    assert!(charged_by("b") > 0, "the second dispatcher took no partition: nothing was tested");
    assert!(charged_by("a") >= BEFORE_JOIN, "the first charged before the join");
    assert!(first_metrics.consumer().partitions_revoked_total() > 0, "the first gave partitions up");
    assert_eq!(first_metrics.consumer().revoke_timeouts_total(), 0, "no call in flight was abandoned");
    assert_eq!(finished(), total as u64, "a command was finished by both");

    let outcomes = outcomes(&stack, &topics, total).await;
    assert_eq!(outcomes.len(), total, "one outcome per command");
    let answered: HashSet<Uuid> = outcomes.iter().map(|o| o.payment_id).collect();
    assert_eq!(answered.len(), total, "every payment answered once");
    assert!(outcomes.iter().all(|o| o.outcome == DispatchResult::Accepted), "{outcomes:?}");
    topics.delete(&stack).await;
}
