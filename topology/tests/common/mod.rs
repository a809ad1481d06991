//! Topologies and the real-broker harness shared by the driver tests and the runtime tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paystream_stack::kafka::idempotent_producer;
use paystream_stack::settings::StackSettings;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use paystream_topology::topology::Serialized;
use paystream_topology::{
    BoxError, ProcessError, Processor, ProcessorContext, PunctuationId, PunctuationType, RawRecord, Record,
    Retriable, StoreSpec, Topology,
};

/// A value that makes the counting processor refuse the record.
pub const POISON: &str = "poison";

pub fn utf8(raw: &RawRecord) -> Result<(String, String), BoxError> {
    let key = String::from_utf8(raw.key.clone().unwrap_or_default())?;
    let value = String::from_utf8(raw.value.clone().unwrap_or_default())?;
    Ok((key, value))
}

pub fn to_bytes(record: &Record<String, String>) -> Result<Serialized, BoxError> {
    Ok((Some(record.key.clone().into_bytes()), Some(record.value.clone().into_bytes())))
}

/// Counts records per key in store `counts` and emits the new count: the outputs of one key
/// must be exactly 1, 2, …, n under exactly-once, whatever crashes.
pub struct Count;

impl Processor<String, String> for Count {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        if record.value == POISON {
            return Err(ProcessError::poison(format!("value {POISON:?} is refused")));
        }
        let store = ctx.store("counts")?;
        let count = match store.get(record.key.as_bytes())? {
            Some(bytes) => parse_count(&bytes)?,
            None => 0,
        } + 1;
        store.put(record.key.as_bytes(), count.to_string().as_bytes())?;
        ctx.forward(record.with_value(count.to_string()));
        Ok(())
    }
}

fn parse_count(bytes: &[u8]) -> Result<u64, ProcessError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProcessError::Fatal(format!("corrupt count {bytes:?}").into()))
}

/// `in` → `count` (store `counts`) → `out`.
pub fn counting(input: &str, output: &str) -> Topology<String, String> {
    let mut builder = Topology::builder();
    builder
        .add_source("in", &[input], utf8)
        .add_processor("count", || Count, &["in"])
        .add_state_store(StoreSpec::persistent("counts"), &["count"])
        .add_sink("out", output, to_bytes, &["count"]);
    builder.build().expect("valid topology")
}

/// Emits `wall:<t>` on every wall-clock punctuation and `stream:<t>` on every stream-time one.
pub struct Ticker {
    pub wall: Duration,
    pub stream: Duration,
    wall_id: Option<PunctuationId>,
}

impl Ticker {
    pub fn new(wall: Duration, stream: Duration) -> Self {
        Self { wall, stream, wall_id: None }
    }
}

impl Processor<String, String> for Ticker {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<(), ProcessError> {
        self.wall_id = Some(ctx.schedule(self.wall, PunctuationType::WallClock));
        ctx.schedule(self.stream, PunctuationType::StreamTime);
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
        id: PunctuationId,
        timestamp_ms: i64,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        let kind = if Some(id) == self.wall_id { "wall" } else { "stream" };
        let key = format!("p{}", ctx.partition());
        ctx.forward(Record::new(key, format!("{kind}:{timestamp_ms}"), timestamp_ms));
        Ok(())
    }
}

/// `in` → `tick` → `out`.
pub fn ticking(input: &str, output: &str, wall: Duration, stream: Duration) -> Topology<String, String> {
    let mut builder = Topology::builder();
    builder
        .add_source("in", &[input], utf8)
        .add_processor("tick", move || Ticker::new(wall, stream), &["in"])
        .add_sink("out", output, to_bytes, &["tick"]);
    builder.build().expect("valid topology")
}

/// A value prefix that makes [`Flaky`] fail retriably before it decodes the record.
pub const FLAKY: &str = "flaky";

/// A record's identity: topic, partition, offset.
type RecordId = (String, i32, i64);

/// A deserializer whose dependency is away for a while: each record whose value starts with
/// [`FLAKY`] fails `failures` times with a [`Retriable`] error (counted per topic, partition and
/// offset, so a retry of the same record counts on), then decodes like [`utf8`].
#[derive(Clone)]
pub struct Flaky {
    failures: u32,
    /// Retriable failures so far, per record.
    failed: Arc<Mutex<HashMap<RecordId, u32>>>,
}

impl Flaky {
    pub fn new(failures: u32) -> Self {
        Self { failures, failed: Arc::default() }
    }

    pub fn deserialize(&self, raw: &RawRecord) -> Result<(String, String), BoxError> {
        if raw.value.as_deref().is_some_and(|v| v.starts_with(FLAKY.as_bytes())) {
            let mut failed = self.failed.lock().unwrap();
            let count = failed.entry((raw.topic.clone(), raw.partition, raw.offset)).or_insert(0);
            if *count < self.failures {
                *count += 1;
                return Err(Retriable::boxed(format!(
                    "registry away (failure {count} of offset {})",
                    raw.offset
                )));
            }
        }
        utf8(raw)
    }

    /// Retriable failures handed out so far, over all records.
    pub fn failures_so_far(&self) -> u32 {
        self.failed.lock().unwrap().values().sum()
    }
}

/// `in` (through `flaky`) → `count` (store `counts`) → `out`.
pub fn flaky_counting(input: &str, output: &str, flaky: Flaky) -> Topology<String, String> {
    let mut builder = Topology::builder();
    builder
        .add_source("in", &[input], move |raw: &RawRecord| flaky.deserialize(raw))
        .add_processor("count", || Count, &["in"])
        .add_state_store(StoreSpec::persistent("counts"), &["count"])
        .add_sink("out", output, to_bytes, &["count"]);
    builder.build().expect("valid topology")
}

/// How long filling a changelog may take to be acknowledged.
const FILL_FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes `count` records `big<i>` → `1` straight to partition `partition` of `topic` (a
/// changelog, as a previous owner would have left it).
pub fn fill_changelog(settings: &StackSettings, topic: &str, partition: i32, count: usize) {
    let producer: BaseProducer = idempotent_producer(&settings.kafka_bootstrap)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    for i in 0..count {
        let key = format!("big{i}");
        let mut record = BaseRecord::to(topic).partition(partition).key(&key).payload("1");
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("filling the changelog: {error}"),
            }
        }
    }
    producer.flush(FILL_FLUSH_TIMEOUT).expect("flushing the changelog records");
}
