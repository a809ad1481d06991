//! Shared by the stack's integration tests: unique names (tests run in any order and
//! twice in a row against one long-lived stack), bounded readiness checks with a clear
//! message when the stack is missing, and bounded consumption.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::{Duration, Instant};

use paystream_stack::kafka::{self, TopicSpec};
use paystream_stack::StackSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

/// Budget for a dependency of the tests to answer.
pub const STACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A name no other test run has used: `<prefix>-<8 hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The stack's addresses, after checking that Kafka answers (panics with the reason and
/// "start the local stack with `dev/up`" otherwise).
pub async fn kafka_stack() -> StackSettings {
    let settings = StackSettings::from_env();
    if let Err(not_ready) = kafka::wait_until_ready(&settings.kafka_bootstrap, STACK_TIMEOUT).await {
        panic!("{not_ready}");
    }
    settings
}

/// Creates `name` with `partitions` partitions.
pub async fn create_topic(settings: &StackSettings, name: &str, partitions: i32) {
    kafka::ensure_topics(&settings.kafka_bootstrap, &[TopicSpec::new(name, partitions)])
        .await
        .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
}

/// Deletes topics a test created.
pub async fn delete_topics(settings: &StackSettings, names: &[&str]) {
    kafka::delete_topics(&settings.kafka_bootstrap, names)
        .await
        .unwrap_or_else(|e| panic!("deleting topics {names:?}: {e}"));
}

/// A consumed record, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Received {
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(self.value.as_deref().unwrap_or_default()).expect("utf-8 value")
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }
}

/// Polls `consumer` until `done(&received)` holds, then keeps polling for `settle` more
/// to catch duplicates that would arrive late. Panics when `timeout` passes first.
pub fn consume_until(
    consumer: &BaseConsumer,
    timeout: Duration,
    settle: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut settled_at: Option<Instant> = None;
    loop {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            let message = result.unwrap_or_else(|e| panic!("consuming: {e}"));
            received.push(Received {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect()
                    })
                    .unwrap_or_default(),
            });
        }
        match settled_at {
            None if done(&received) => settled_at = Some(Instant::now()),
            Some(at) if at.elapsed() >= settle => return received,
            _ => {}
        }
        if settled_at.is_none() && started.elapsed() >= timeout {
            panic!("gave up after {timeout:?}; received {} records: {received:#?}", received.len());
        }
    }
}

/// A plain consumer of `topic` from the beginning with the given isolation level.
pub fn consumer(settings: &StackSettings, topic: &str, isolation: &str) -> BaseConsumer {
    let mut config = kafka::read_committed_consumer(&settings.kafka_bootstrap, &unique("it-reader"));
    config.set("isolation.level", isolation);
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}
