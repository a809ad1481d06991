//! The payment view on the real stack: Kafka transactions, the Schema Registry's wire format, a
//! RocksDB store with its changelog. Each test has topics and an application id of its own
//! (`it.view-…`), and plays the saga, the dispatcher and the timers by writing their events to
//! its inputs, in whatever order the test needs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paystream_processors::view::codec::RegistryViewCodec;
use paystream_processors::view::fact::{Fact, InputEvent};
use paystream_processors::view::fold::{self, ViewState};
use paystream_processors::view::metrics::ViewMetrics;
use paystream_processors::view::processor::{self, ViewTopics, TRACEPARENT};
use paystream_processors::view::rebuild;
use paystream_schemas::events::{
    DispatchOutcome, DispatchResult, PaymentInitiated, PaymentResult, PaymentResultStatus,
    PaymentTimelineEvent, PaymentView, ProviderAction, ProviderCallbackReceived, ProviderRequest,
    ProviderStatus, TimerChange, TimerEvent, TimerKind,
};
use paystream_schemas::money::Amount;
use paystream_schemas::time::from_micros;
use paystream_schemas::{Event, EventCodec};
use paystream_stack::kafka::{idempotent_producer, read_committed_consumer, TopicSpec};
use paystream_stack::settings::StackSettings;
use paystream_stack::testkit::{self, unique};
use paystream_stack::wait;
use paystream_topology::runtime::StreamsState;
use paystream_topology::{ErrorPolicy, Streams, StreamsConfig};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

/// How long a test waits for the view to reach a state.
const TIMEOUT: Duration = Duration::from_secs(90);
/// After the view has caught up, how long a reader keeps listening for records that should not come.
const SETTLE: Duration = Duration::from_secs(2);
/// Partitions of the test's topics: several, so payments land on different tasks.
const PARTITIONS: i32 = 3;
/// A rebuild that makes no progress for this long fails the test.
const STALL: Duration = Duration::from_secs(60);

struct Stack {
    settings: StackSettings,
    codec: EventCodec,
    topics: ViewTopics,
    /// The rebuild's outputs, so that its records can be told from the live view's.
    rebuilt: (String, String),
    producer: BaseProducer,
    state: tempfile::TempDir,
    app: String,
    dlq: String,
}

impl Stack {
    async fn new() -> Self {
        let settings = testkit::kafka_stack().await;
        let registry =
            paystream_schemas::registry::RegistryClient::new(&settings.schema_registry_url).unwrap();
        let what = format!("Schema Registry at {}", settings.schema_registry_url);
        if let Err(not_ready) =
            wait::until_ready(what, testkit::STACK_TIMEOUT, || registry.global_compatibility()).await
        {
            panic!("{not_ready}");
        }
        let base = unique("it.view");
        let topics = ViewTopics::prefixed(&base);
        let rebuilt = (format!("{base}.view-rebuilt"), format!("{base}.timeline-rebuilt"));
        let dlq = format!("{base}.dlq");
        let compacted = [&topics.view, &rebuilt.0];
        let specs: Vec<TopicSpec> = topics
            .inputs()
            .iter()
            .map(|(_, t)| t.to_string())
            .chain([topics.timeline.clone(), rebuilt.1.clone()])
            .map(|t| TopicSpec::new(t, PARTITIONS))
            .chain(
                compacted
                    .iter()
                    .map(|t| TopicSpec::new(t.as_str(), PARTITIONS).with_config("cleanup.policy", "compact")),
            )
            .chain([TopicSpec::new(dlq.clone(), 1)])
            .collect();
        paystream_stack::kafka::ensure_topics(&settings.kafka_bootstrap, &specs).await.expect("topics");
        Self {
            codec: EventCodec::new(&settings.schema_registry_url).expect("codec"),
            producer: idempotent_producer(&settings.kafka_bootstrap).create().expect("producer"),
            state: tempfile::tempdir().unwrap(),
            app: base.replace('.', "-"),
            topics,
            rebuilt,
            dlq,
            settings,
        }
    }

    fn config(&self, application_id: &str, state: &std::path::Path) -> StreamsConfig {
        let mut config = StreamsConfig::new(application_id, &self.settings.kafka_bootstrap, state);
        config.error_policy = ErrorPolicy::DeadLetter { topic: self.dlq.clone() };
        config
    }

    fn topology(&self, topics: &ViewTopics) -> paystream_topology::Topology<Uuid, processor::ViewRecord> {
        self.topology_with(topics, ViewMetrics::new(&prometheus::Registry::new()).unwrap())
    }

    fn topology_with(
        &self,
        topics: &ViewTopics,
        metrics: ViewMetrics,
    ) -> paystream_topology::Topology<Uuid, processor::ViewRecord> {
        let codec = RegistryViewCodec::new(
            EventCodec::new(&self.settings.schema_registry_url).unwrap(),
            tokio::runtime::Handle::current(),
        );
        processor::topology(codec, metrics, topics).unwrap()
    }

    /// The live view under the test's application id and state directory.
    async fn start_view(&self) -> Streams {
        self.start_view_with(ViewMetrics::new(&prometheus::Registry::new()).unwrap()).await
    }

    async fn start_view_with(&self, metrics: ViewMetrics) -> Streams {
        self.start_view_as(&self.app, metrics).await
    }

    /// The view under `application_id`, on the live topics and the test's state directory.
    async fn start_view_as(&self, application_id: &str, metrics: ViewMetrics) -> Streams {
        let topology = self.topology_with(&self.topics, metrics);
        let config = self.config(application_id, self.state.path());
        let streams =
            tokio::task::spawn_blocking(move || Streams::start(topology, config)).await.unwrap().unwrap();
        let started = Instant::now();
        while streams.state() != StreamsState::Running {
            assert!(!streams.is_finished(), "the view stopped before running");
            assert!(started.elapsed() < TIMEOUT, "the view is not running after {TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        streams
    }

    fn inputs(&self) -> Vec<&str> {
        self.topics.inputs().iter().map(|(_, t)| *t).collect()
    }

    /// Writes `event` to its input topic, keyed by its payment, with `traceparent` if given.
    async fn send(&self, event: &InputEvent, traceparent: Option<&str>) {
        let t = &self.topics;
        let (topic, bytes) = match event {
            InputEvent::Initiated(e) => (&t.initiated, self.codec.encode(e).await),
            InputEvent::Outcome(e) => (&t.outcomes, self.codec.encode(e).await),
            InputEvent::Callback(e) => (&t.callbacks, self.codec.encode(e).await),
            InputEvent::Timer(e) => (&t.timers, self.codec.encode(e).await),
            InputEvent::Request(e) => (&t.requests, self.codec.encode(e).await),
            InputEvent::Reconciliation(e) => (&t.reconciliation, self.codec.encode(e).await),
            InputEvent::Result(e) => (&t.results, self.codec.encode(e).await),
        };
        let bytes = bytes.expect("encode");
        let key = event.payment_id().to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(&bytes);
        if let Some(traceparent) = traceparent {
            record = record
                .headers(OwnedHeaders::new().insert(Header { key: TRACEPARENT, value: Some(traceparent) }));
        }
        self.producer.send(record).map_err(|(e, _)| e).expect("send");
        self.producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// Waits until application `group` has consumed every input record written so far: its
    /// outputs commit with its offsets, so they are all readable then.
    async fn caught_up(&self, group: &str) {
        let (bootstrap, inputs) = (self.settings.kafka_bootstrap.clone(), self.inputs().join(","));
        let ends = tokio::task::spawn_blocking(move || {
            rebuild::ends(&bootstrap, &inputs.split(',').collect::<Vec<_>>()).expect("end offsets")
        })
        .await
        .unwrap();
        let started = Instant::now();
        loop {
            let (bootstrap, name, ends) =
                (self.settings.kafka_bootstrap.clone(), group.to_owned(), ends.clone());
            let left = tokio::task::spawn_blocking(move || {
                rebuild::remaining(&bootstrap, &name, &ends).expect("remaining")
            })
            .await
            .unwrap();
            if left == 0 {
                return;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{group} still has {left} input records to consume after {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every record of `topic` now: read from the beginning until nothing more comes for
    /// [`SETTLE`] (the view has caught up, so everything it wrote is committed and readable).
    fn records(&self, topic: &str) -> Vec<Vec<u8>> {
        let reader = testkit::consumer(&self.settings, topic, "read_committed");
        let (started, mut quiet, mut values) = (Instant::now(), Instant::now(), Vec::new());
        while quiet.elapsed() < SETTLE {
            assert!(started.elapsed() < TIMEOUT, "{topic} kept delivering records for {TIMEOUT:?}");
            if let Some(message) = reader.poll(Duration::from_millis(100)) {
                let message = message.unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
                values.push(message.payload().expect("a value").to_vec());
                quiet = Instant::now();
            }
        }
        values
    }

    fn count(&self, topic: &str) -> usize {
        self.records(topic).len()
    }

    async fn all<E: Event>(&self, topic: &str) -> Vec<E> {
        let mut events = Vec::new();
        for value in self.records(topic) {
            events.push(self.codec.decode::<E>(&value).await.expect("decode"));
        }
        events
    }

    /// The latest view of every payment in `topic` (a compacted topic's meaning).
    async fn latest_views(&self, topic: &str) -> BTreeMap<Uuid, PaymentView> {
        let mut latest = BTreeMap::new();
        for view in self.all::<PaymentView>(topic).await {
            latest.insert(view.payment_id, view);
        }
        latest
    }

    /// The latest entry of every (payment, seq) in `topic`, as the read database's upsert keeps them.
    async fn latest_timeline(&self, topic: &str) -> BTreeMap<(Uuid, i32), PaymentTimelineEvent> {
        let mut latest = BTreeMap::new();
        for entry in self.all::<PaymentTimelineEvent>(topic).await {
            latest.insert((entry.payment_id, entry.seq), entry);
        }
        latest
    }

    /// Rewinds application `group` to the earliest offset of every input (it must be stopped):
    /// its next run reads everything again, as after a crash before a commit, with its store as it was.
    fn rewind(&self, group: &str) {
        let consumer: BaseConsumer =
            read_committed_consumer(&self.settings.kafka_bootstrap, group).create().expect("consumer");
        let mut offsets = TopicPartitionList::new();
        for topic in self.inputs() {
            for partition in 0..PARTITIONS {
                offsets.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
            }
        }
        // Offset::Beginning is not committable: resolve it to each partition's low watermark.
        let mut resolved = TopicPartitionList::new();
        for element in offsets.elements() {
            let (low, _) = consumer
                .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(10))
                .expect("watermarks");
            resolved.add_partition_offset(element.topic(), element.partition(), Offset::Offset(low)).unwrap();
        }
        consumer.commit(&resolved, CommitMode::Sync).expect("rewinding the view's group");
    }

    async fn cleanup(&self) {
        let mut names: Vec<String> = self.inputs().iter().map(|t| t.to_string()).collect();
        names.extend([
            self.topics.view.clone(),
            self.topics.timeline.clone(),
            self.rebuilt.0.clone(),
            self.rebuilt.1.clone(),
            self.dlq.clone(),
            format!("{}-{}-changelog", self.app, processor::STORE),
            format!("{}-rebuild-{}-changelog", self.app, processor::STORE),
            format!("{}-r1-{}-changelog", self.app, processor::STORE),
        ]);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = paystream_stack::kafka::delete_topics(&self.settings.kafka_bootstrap, &names).await;
    }
}

fn at(base: DateTime<Utc>, ms: i64) -> DateTime<Utc> {
    from_micros(base.timestamp_micros() + ms * 1_000).unwrap()
}

fn traceparent(trace: u128) -> String {
    format!("00-{trace:032x}-00f067aa0ba902b7-01")
}

/// A payment the provider charges: initiated, accepted, called back, completed.
fn completed_payment(id: Uuid, base: DateTime<Utc>) -> Vec<InputEvent> {
    let command = Uuid::new_v4();
    vec![
        InputEvent::Initiated(PaymentInitiated {
            event_id: Uuid::new_v4(),
            payment_id: id,
            wallet_id: Uuid::from_u128(0x3a11e7),
            amount: Amount::from_minor(12_345).unwrap(),
            currency: "RUB".into(),
            kind: "purchase".into(),
            description: "green tea".into(),
            requested_at: base,
            initiated_at: at(base, 1),
        }),
        InputEvent::Outcome(DispatchOutcome {
            command_id: command,
            payment_id: id,
            outcome: DispatchResult::Accepted,
            attempts: 1,
            detail: "202 Accepted".into(),
            decided_at: at(base, 200),
        }),
        InputEvent::Callback(ProviderCallbackReceived {
            event_id: Uuid::new_v4(),
            payment_id: id,
            provider_event_id: "evt_1".into(),
            status: ProviderStatus::Succeeded,
            description: "charged".into(),
            provider_timestamp: at(base, 900),
            received_at: at(base, 1_000),
        }),
        InputEvent::Result(PaymentResult {
            payment_result_id: PaymentResult::id_for(id, PaymentResultStatus::Completed),
            payment_id: id,
            wallet_id: Uuid::from_u128(0x3a11e7),
            amount: Amount::from_minor(12_345).unwrap(),
            status: PaymentResultStatus::Completed,
            reason: "charged".into(),
            decided_at: at(base, 1_010),
        }),
    ]
}

/// A payment whose timer fires: verified, voided, failed with FAILED_TIMEOUT.
fn timed_out_payment(id: Uuid, base: DateTime<Utc>) -> Vec<InputEvent> {
    let mut events = completed_payment(id, base);
    events.truncate(2);
    let (query, void) = (Uuid::new_v4(), Uuid::new_v4());
    let answer = |command, outcome, ms| {
        InputEvent::Outcome(DispatchOutcome {
            command_id: command,
            payment_id: id,
            outcome,
            attempts: 1,
            detail: format!("provider: {}", outcome.symbol()),
            decided_at: at(base, ms),
        })
    };
    let request = |request_id, action, ms| {
        InputEvent::Request(ProviderRequest { request_id, payment_id: id, action, issued_at: at(base, ms) })
    };
    events.extend([
        InputEvent::Timer(TimerEvent {
            timer_id: Uuid::new_v4(),
            payment_id: id,
            kind: TimerKind::PaymentTimeout,
            due_at: at(base, 60_000),
            change: TimerChange::Fired { fired_at: at(base, 60_050) },
        }),
        request(
            query,
            ProviderAction::StatusQuery { reason: "no verdict from the provider in time".into() },
            60_060,
        ),
        answer(query, DispatchResult::NotCharged, 60_300),
        request(void, ProviderAction::Void { reason: "no verdict from the provider in time".into() }, 60_310),
        answer(void, DispatchResult::Voided, 60_600),
        InputEvent::Result(PaymentResult {
            payment_result_id: PaymentResult::id_for(id, PaymentResultStatus::FailedTimeout),
            payment_id: id,
            wallet_id: Uuid::from_u128(0x3a11e7),
            amount: Amount::from_minor(12_345).unwrap(),
            status: PaymentResultStatus::FailedTimeout,
            reason: "no verdict from the provider in time; the provider holds no charge".into(),
            decided_at: at(base, 60_610),
        }),
    ]);
    events
}

/// What the view must show for `events`: the pure fold over them, as the unit tests prove it.
fn expected(
    id: Uuid,
    events: &[InputEvent],
    trace: Option<&str>,
) -> (PaymentView, Vec<PaymentTimelineEvent>) {
    let trace_id = paystream_processors::view::fact::trace_id(trace.map(str::as_bytes));
    let state = events
        .iter()
        .map(|e| Fact::of(e, trace_id.clone()).unwrap().unwrap())
        .fold(ViewState::default(), fold::fold);
    (fold::view(&state, id).unwrap(), fold::timeline(&state, id))
}

fn timeline_of(latest: &BTreeMap<(Uuid, i32), PaymentTimelineEvent>, id: Uuid) -> Vec<PaymentTimelineEvent> {
    latest.range((id, i32::MIN)..=(id, i32::MAX)).map(|(_, e)| e.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_in_order_and_out_of_order_converge_to_the_same_view() {
    let stack = Stack::new().await;
    let view = stack.start_view().await;
    let base = Utc::now();
    let (in_order, reversed, early_result) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let trace = traceparent(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
    let payments = [
        (in_order, timed_out_payment(in_order, base)),
        (reversed, timed_out_payment(reversed, base)),
        (early_result, completed_payment(early_result, base)),
    ];
    for event in &payments[0].1 {
        stack.send(event, Some(&trace)).await;
    }
    for event in payments[1].1.iter().rev() {
        stack.send(event, Some(&trace)).await;
    }
    // The result first, then (once the view has shown it) the rest.
    let (result, rest) = payments[2].1.split_last().unwrap();
    stack.send(result, Some(&trace)).await;
    stack.caught_up(&stack.app).await;
    let early = stack.latest_views(&stack.topics.view).await[&early_result].clone();
    assert_eq!(early.status, "COMPLETED", "a result before its payment: {early:?}");
    assert_eq!((early.kind.as_deref(), early.created_at, early.version), (None, None, 1));
    assert_eq!(early.amount.map(Amount::minor), Some(12_345), "the result carries the amount");
    for event in rest {
        stack.send(event, Some(&trace)).await;
    }
    stack.caught_up(&stack.app).await;

    let views = stack.latest_views(&stack.topics.view).await;
    let timelines = stack.latest_timeline(&stack.topics.timeline).await;
    for (id, events) in &payments {
        let (view, timeline) = expected(*id, events, Some(&trace));
        assert_eq!(views[id], view, "the view of {id}");
        assert_eq!(timeline_of(&timelines, *id), timeline, "the timeline of {id}");
    }
    let (a, b) = (&views[&in_order], &views[&reversed]);
    assert_eq!((a.status.as_str(), b.status.as_str()), ("FAILED_TIMEOUT", "FAILED_TIMEOUT"));
    assert_eq!((a.version, b.version), (8, 8), "eight distinct events each");
    assert_eq!(a.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(
        timeline_of(&timelines, reversed).iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["INITIATED", "DISPATCHED", "TIMER", "PROVIDER_ANSWER", "PROVIDER_ANSWER", "RESULT"],
        "arrived backwards, shown in the order it happened"
    );
    assert_eq!(views[&early_result].status, "COMPLETED");
    assert_eq!(views[&early_result].kind.as_deref(), Some("purchase"), "filled in once the payment arrived");
    view.close().unwrap();
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_and_a_replay_change_nothing() {
    let stack = Stack::new().await;
    let view = stack.start_view().await;
    let id = Uuid::new_v4();
    let events = timed_out_payment(id, Utc::now());
    for event in &events {
        stack.send(event, None).await;
    }
    stack.caught_up(&stack.app).await;
    let (views_before, timeline_before) =
        (stack.count(&stack.topics.view), stack.count(&stack.topics.timeline));
    let latest_before = stack.latest_views(&stack.topics.view).await;

    // Every event again (a redelivery), and the payment's PaymentInitiated under a new event id
    // (an operator's nudge).
    for event in &events {
        stack.send(event, None).await;
    }
    let InputEvent::Initiated(initiated) = &events[0] else { panic!("the first event is the payment") };
    let nudge = PaymentInitiated { event_id: Uuid::new_v4(), ..initiated.clone() };
    stack.send(&InputEvent::Initiated(nudge), None).await;
    stack.caught_up(&stack.app).await;
    assert_eq!(stack.count(&stack.topics.view), views_before, "a duplicate publishes no view");
    assert_eq!(stack.count(&stack.topics.timeline), timeline_before, "nor a timeline entry");

    // A replay: the view reads all its inputs again with its store as it was.
    view.close().unwrap();
    stack.rewind(&stack.app);
    let metrics = ViewMetrics::new(&prometheus::Registry::new()).unwrap();
    let view = stack.start_view_with(metrics.clone()).await;
    stack.caught_up(&stack.app).await;
    let replayed: u64 = processor::Input::ALL
        .iter()
        .map(|input| metrics.events.with_label_values(&[input.label(), "duplicate"]).get())
        .sum();
    assert_eq!(
        replayed,
        (2 * events.len() + 1) as u64,
        "every input record was read again and found applied already"
    );
    assert_eq!(stack.count(&stack.topics.view), views_before, "a replay publishes no view");
    assert_eq!(stack.count(&stack.topics.timeline), timeline_before, "nor a timeline entry");
    assert_eq!(stack.latest_views(&stack.topics.view).await, latest_before);
    assert_eq!(latest_before[&id].version, 8);
    view.close().unwrap();
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_equals_the_live_view_and_keeps_every_timeline_seq() {
    let stack = Stack::new().await;
    let view = stack.start_view().await;
    let base = Utc::now();
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    for (n, id) in ids.iter().enumerate() {
        let events = if n % 2 == 0 { completed_payment(*id, base) } else { timed_out_payment(*id, base) };
        // Half of them arrive backwards, and one event of each twice.
        let mut order: Vec<&InputEvent> = events.iter().collect();
        if n % 3 == 0 {
            order.reverse();
        }
        order.push(order[1]);
        for event in order {
            stack.send(event, Some(&traceparent(0xabc0 + n as u128))).await;
        }
    }
    stack.caught_up(&stack.app).await;
    let live_views = stack.latest_views(&stack.topics.view).await;
    let live_timeline = stack.latest_timeline(&stack.topics.timeline).await;
    assert_eq!(live_views.len(), ids.len());

    let rebuild_state = tempfile::tempdir().unwrap();
    let application_id = format!("{}-rebuild", stack.app);
    let topics = stack.topics.clone().with_outputs(&stack.rebuilt.0, &stack.rebuilt.1);
    let config = stack.config(&application_id, rebuild_state.path());
    let rebuilt =
        rebuild::rebuild(stack.topology(&topics), config, &stack.inputs(), STALL).await.expect("rebuild");
    assert_eq!(rebuilt.application_id, application_id);
    assert!(rebuilt.records >= 6 * 4, "it replayed every input record: {rebuilt:?}");

    assert_eq!(stack.latest_views(&stack.rebuilt.0).await, live_views, "the rebuilt views are the live ones");
    assert_eq!(
        stack.latest_timeline(&stack.rebuilt.1).await,
        live_timeline,
        "every event has the seq the live view gave it"
    );
    // Swapped in, the rebuilt application is the one a restarted view runs.
    rebuild::swap_in(stack.state.path(), &rebuilt.application_id).unwrap();
    assert_eq!(rebuild::current_application_id(stack.state.path()).unwrap(), application_id);
    view.close().unwrap();
    stack.cleanup().await;
}

/// What `paystream view` does when a rebuild swaps itself in: the rebuild ran beside the live
/// view into the same outputs and the same state directory; the live view stops its application
/// and starts the rebuilt one, which carries on from the rebuild's state and offsets.
#[tokio::test(flavor = "multi_thread")]
async fn a_swapped_in_rebuild_carries_on_from_its_own_state_and_offsets() {
    let stack = Stack::new().await;
    let live = stack.start_view().await;
    let id = Uuid::new_v4();
    let events = timed_out_payment(id, Utc::now());
    let (before, after) = events.split_at(4);
    for event in before {
        stack.send(event, None).await;
    }
    stack.caught_up(&stack.app).await;

    let rebuilt_id = format!("{}-r1", stack.app);
    let config = stack.config(&rebuilt_id, stack.state.path());
    let rebuilt = rebuild::rebuild(stack.topology(&stack.topics), config, &stack.inputs(), STALL)
        .await
        .expect("rebuild");
    rebuild::swap_in(stack.state.path(), &rebuilt.application_id).unwrap();
    assert_eq!(rebuild::current_application_id(stack.state.path()).unwrap(), rebuilt_id);
    live.close().unwrap();
    let views_at_swap = stack.count(&stack.topics.view);

    let swapped =
        stack.start_view_as(&rebuilt_id, ViewMetrics::new(&prometheus::Registry::new()).unwrap()).await;
    stack.send(&before[1], None).await;
    stack.caught_up(&rebuilt_id).await;
    assert_eq!(
        stack.count(&stack.topics.view),
        views_at_swap,
        "the rebuilt store knows the payment's events"
    );
    for event in after {
        stack.send(event, None).await;
    }
    stack.caught_up(&rebuilt_id).await;
    assert_eq!(
        stack.count(&stack.topics.view),
        views_at_swap + after.len(),
        "one view per new event, none replayed at the swap"
    );
    let (view, timeline) = expected(id, &events, None);
    assert_eq!(stack.latest_views(&stack.topics.view).await[&id], view);
    assert_eq!(timeline_of(&stack.latest_timeline(&stack.topics.timeline).await, id), timeline);
    swapped.close().unwrap();
    stack.cleanup().await;
}
