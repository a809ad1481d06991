//! The saga's real-stack set-up, shared by the saga test binaries: per-test topics
//! (`SagaTopics::prefixed`), a producer writing through the registry, the saga and the timer
//! processor started on the real runtime, and readers of their outputs; and [`settlement`]'s
//! fixture, for the binaries that run settlement.
#![allow(dead_code)]

pub mod settlement;

use std::time::{Duration, Instant};

use chrono::Utc;
use paystream_processors::saga::codec::RegistryCodec;
use paystream_processors::saga::processor::{self, SagaMetrics, SagaSettings, SagaTopics};
use paystream_processors::saga::timers;
use paystream_schemas::events::{
    DispatchOutcome, DispatchResult, PaymentInitiated, PaymentResult, ProviderCallbackReceived,
    ProviderRequest, ProviderStatus,
};
use paystream_schemas::money::Amount;
use paystream_schemas::{Event, EventCodec};
use paystream_stack::kafka::{idempotent_producer, TopicSpec};
use paystream_stack::settings::StackSettings;
use paystream_stack::testkit::{self, consume_until, unique, Received};
use paystream_stack::wait;
use paystream_topology::runtime::StreamsState;
use paystream_topology::{ErrorPolicy, Streams, StreamsConfig};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use uuid::Uuid;

pub const TIMEOUT: Duration = Duration::from_secs(90);
pub const SETTLE: Duration = Duration::from_secs(3);
/// The payment timeout these tests run with, and the lateness a timer is allowed.
pub const PAYMENT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Stack {
    pub settings: StackSettings,
    /// The test's own codec, straight to the registry (the saga's may go through a proxy).
    pub codec: EventCodec,
    pub topics: SagaTopics,
    pub producer: BaseProducer,
    pub state: tempfile::TempDir,
    pub app: String,
}

impl Stack {
    pub async fn new() -> Self {
        let settings = testkit::kafka_stack().await;
        let codec = EventCodec::new(&settings.schema_registry_url).expect("codec");
        registry_ready(&settings).await;
        let base = unique("it.saga");
        let topics = SagaTopics::prefixed(&base);
        let specs: Vec<TopicSpec> = [
            &topics.initiated,
            &topics.callbacks,
            &topics.outcomes,
            &topics.timers,
            &topics.cancel_requests,
            &topics.commands,
            &topics.requests,
            &topics.results,
            &topics.reconciliation,
        ]
        .into_iter()
        .map(|t| TopicSpec::new(t.clone(), 3))
        .chain([TopicSpec::new(format!("{base}.dlq"), 1)])
        .collect();
        paystream_stack::kafka::ensure_topics(&settings.kafka_bootstrap, &specs).await.expect("topics");
        let producer = idempotent_producer(&settings.kafka_bootstrap).create().expect("producer");
        Self {
            codec,
            topics,
            producer,
            state: tempfile::tempdir().unwrap(),
            app: base.replace('.', "-"),
            settings,
        }
    }

    /// The dead-letter topic of this test's saga and timers.
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.topics.initiated.trim_end_matches(".initiated"))
    }

    pub fn config(&self, role: &str, state: &std::path::Path) -> StreamsConfig {
        let mut config =
            StreamsConfig::new(&format!("{}-{role}", self.app), &self.settings.kafka_bootstrap, state);
        config.error_policy = ErrorPolicy::DeadLetter { topic: self.dlq() };
        config
    }

    pub async fn start_saga(&self) -> Streams {
        self.start_saga_with(PAYMENT_TIMEOUT).await
    }

    pub async fn start_saga_with(&self, payment_timeout: Duration) -> Streams {
        self.start_saga_on(&self.settings.schema_registry_url, payment_timeout).await
    }

    /// The saga with a fresh codec (its schema cache cold) talking to the registry at
    /// `registry_url`.
    pub async fn start_saga_on(&self, registry_url: &str, payment_timeout: Duration) -> Streams {
        let metrics = SagaMetrics::new(&prometheus::Registry::new()).unwrap();
        let codec =
            RegistryCodec::new(EventCodec::new(registry_url).unwrap(), tokio::runtime::Handle::current());
        let settings = SagaSettings {
            payment_timeout,
            callback_retention: Duration::from_secs(60),
            ..SagaSettings::default()
        };
        let topology = processor::topology(codec, settings, metrics, &self.topics).unwrap();
        let config = self.config("saga", self.state.path());
        running(tokio::task::spawn_blocking(move || Streams::start(topology, config)).await.unwrap().unwrap())
            .await
    }

    pub async fn start_timers(&self, state: &std::path::Path) -> Streams {
        self.start_timers_on(&self.settings.schema_registry_url, state).await
    }

    /// The timer processor with a fresh codec talking to the registry at `registry_url`.
    pub async fn start_timers_on(&self, registry_url: &str, state: &std::path::Path) -> Streams {
        let codec =
            RegistryCodec::new(EventCodec::new(registry_url).unwrap(), tokio::runtime::Handle::current());
        let topology = timers::topology(codec, &self.topics.timers).unwrap();
        let config = self.config("timers", state);
        running(tokio::task::spawn_blocking(move || Streams::start(topology, config)).await.unwrap().unwrap())
            .await
    }

    pub async fn send<E: Event>(&self, topic: &str, id: Uuid, event: &E) {
        let bytes = self.codec.encode(event).await.expect("encode");
        let key = id.to_string();
        self.producer
            .send(BaseRecord::to(topic).key(&key).payload(&bytes))
            .map_err(|(e, _)| e)
            .expect("send");
        self.producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// Records of `topic` keyed by `id`, once `n` of them arrived (plus a settle time for duplicates).
    pub fn records_for(&self, topic: &str, id: Uuid, n: usize) -> Vec<Received> {
        let key = id.to_string().into_bytes();
        let reader = testkit::consumer(&self.settings, topic, "read_committed");
        let mine = move |r: &[Received]| r.iter().filter(|r| r.key.as_deref() == Some(&key[..])).count() >= n;
        let key = id.to_string().into_bytes();
        consume_until(&reader, TIMEOUT, SETTLE, mine)
            .into_iter()
            .filter(|r| r.key.as_deref() == Some(&key[..]))
            .collect()
    }

    pub async fn results_for(&self, id: Uuid, n: usize) -> Vec<PaymentResult> {
        let mut results = Vec::new();
        for r in self.records_for(&self.topics.results, id, n) {
            results.push(self.codec.decode::<PaymentResult>(r.value.as_deref().unwrap()).await.unwrap());
        }
        results
    }

    /// Plays the dispatcher for a verification the provider answers "no charge": the saga's
    /// status query (its first provider request) is answered NOT_CHARGED, then its void VOIDED.
    /// A timed-out payment gets its FAILED_TIMEOUT only after that.
    pub async fn confirm_no_charge(&self, id: Uuid) {
        for (n, answer) in [(1, DispatchResult::NotCharged), (2, DispatchResult::Voided)] {
            let issued = self.records_for(&self.topics.requests, id, n);
            assert!(issued.len() >= n, "request {n} of {id} was not issued");
            let request =
                self.codec.decode::<ProviderRequest>(issued[n - 1].value.as_deref().unwrap()).await.unwrap();
            assert_eq!(request.action.label(), if n == 1 { "status" } else { "void" }, "{request:?}");
            let outcome = DispatchOutcome {
                command_id: request.request_id,
                payment_id: id,
                outcome: answer,
                attempts: 1,
                detail: format!("provider: {}", answer.symbol()),
                decided_at: Utc::now(),
            };
            self.send(&self.topics.outcomes, id, &outcome).await;
        }
    }

    pub async fn cleanup(&self) {
        let t = &self.topics;
        let dlq = self.dlq();
        let saga_changelog = format!("{}-saga-payments-changelog", self.app);
        let timers_changelog = format!("{}-timers-due-changelog", self.app);
        let names = [
            &t.initiated,
            &t.callbacks,
            &t.outcomes,
            &t.timers,
            &t.cancel_requests,
            &t.commands,
            &t.requests,
            &t.results,
            &t.reconciliation,
            &dlq,
            &saga_changelog,
            &timers_changelog,
        ];
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let _ = paystream_stack::kafka::delete_topics(&self.settings.kafka_bootstrap, &names).await;
    }
}

/// Waits (bounded) until the Schema Registry answers, panicking with what is missing otherwise.
pub async fn registry_ready(settings: &StackSettings) {
    let registry = paystream_schemas::registry::RegistryClient::new(&settings.schema_registry_url)
        .expect("registry client");
    let what = format!("Schema Registry at {}", settings.schema_registry_url);
    if let Err(not_ready) =
        wait::until_ready(what, testkit::STACK_TIMEOUT, || registry.global_compatibility()).await
    {
        panic!("{not_ready}");
    }
}

pub async fn running(streams: Streams) -> Streams {
    let started = Instant::now();
    while streams.state() != StreamsState::Running {
        assert!(!streams.is_finished(), "the runtime stopped before running");
        assert!(started.elapsed() < TIMEOUT, "not running after {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    streams
}

pub fn initiated(id: Uuid) -> PaymentInitiated {
    PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id: id,
        wallet_id: Uuid::new_v4(),
        amount: Amount::from_minor(4_200).unwrap(),
        currency: "RUB".into(),
        kind: "purchase".into(),
        description: "it".into(),
        requested_at: Utc::now(),
        initiated_at: Utc::now(),
    }
}

pub fn callback(id: Uuid, status: ProviderStatus) -> ProviderCallbackReceived {
    ProviderCallbackReceived {
        event_id: Uuid::new_v4(),
        payment_id: id,
        provider_event_id: Uuid::new_v4().to_string(),
        status,
        description: "provider".into(),
        provider_timestamp: Utc::now(),
        received_at: Utc::now(),
    }
}
