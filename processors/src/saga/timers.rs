//! The timer processor: durable timers on `payments.timers`.
//!
//! It reads `TimerScheduled` events, keeps them in a RocksDB store ordered by due time (key:
//! due time in big-endian milliseconds, then paymentId, then kind, so a range scan from zero to
//! "now" is exactly the due timers), and a wall-clock punctuator fires them back as `TimerFired`
//! on the same topic, deleting them in the same transaction. The store has a changelog like any
//! other, so timers survive restarts and moves of every process. A timer fires at most one
//! punctuation interval plus one commit interval after its due time (while the process runs).
//! Whether the payment is still waiting is the saga's business: it absorbs a late timer.
//!
//! A registry that is away while a `TimerScheduled` is decoded, or while a timer is encoded into
//! the index or fired, is retried by the runtime (see `codec`), never dead-lettered: a lost
//! `TimerScheduled` would be a payment that never times out.

use std::time::Duration;

use paystream_schemas::events::{TimerChange, TimerKind};
use paystream_topology::{
    ProcessError, Processor, ProcessorContext, PunctuationId, PunctuationType, Record, StoreSpec, Topology,
    TopologyError,
};
use uuid::Uuid;

use super::processor::{deserializer, serializer, Input, SagaCodec, SagaEvent};

/// The due-index store.
pub const STORE: &str = "due";
/// How often due timers are looked for.
pub const PUNCTUATION_INTERVAL: Duration = Duration::from_millis(100);
/// Most timers fired by one punctuation (the rest wait for the next one).
pub const MAX_FIRED_PER_PUNCTUATION: usize = 1_000;

/// The due-index key of a timer.
fn due_key(due_ms: i64, payment_id: Uuid, kind: TimerKind) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 16 + 1);
    key.extend_from_slice(&(due_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(payment_id.as_bytes());
    key.push(kind as u8);
    key
}

/// A codec error inside the processor: retriable when the registry is away (the runtime retries
/// the record or the punctuation), fatal otherwise (the due index holds only what this processor
/// encoded itself, so bytes it cannot read mean a bug, not a bad record).
fn codec_error(error: paystream_topology::BoxError) -> ProcessError {
    ProcessError::retriable_or(error, ProcessError::Fatal)
}

struct Timers {
    codec: std::sync::Arc<dyn SagaCodec>,
}

impl Processor<Uuid, SagaEvent> for Timers {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, Uuid, SagaEvent>) -> Result<(), ProcessError> {
        ctx.schedule(PUNCTUATION_INTERVAL, PunctuationType::WallClock);
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<Uuid, SagaEvent>,
        ctx: &mut ProcessorContext<'_, Uuid, SagaEvent>,
    ) -> Result<(), ProcessError> {
        // A scheduling joins the payment's trace (the saga's timer record carries it); a fired
        // timer is not traced: the due index keeps no trace context.
        let scheduled =
            matches!(&record.value, SagaEvent::Timer(t) if matches!(t.change, TimerChange::Scheduled { .. }));
        let span = scheduled.then(|| super::processor::record_span("timers", &record, ctx));
        let _entered = span.as_ref().map(tracing::Span::enter);
        let SagaEvent::Timer(timer) = record.value else {
            return Err(ProcessError::poison("not a timer event"));
        };
        if let TimerChange::Scheduled { .. } = timer.change {
            let key = due_key(timer.due_at.timestamp_millis(), timer.payment_id, timer.kind);
            let value = self.codec.encode(&SagaEvent::Timer(timer)).map_err(codec_error)?;
            ctx.store(STORE)?.put(&key, &value)?;
        }
        Ok(())
    }

    fn punctuate(
        &mut self,
        _: PunctuationId,
        now_ms: i64,
        ctx: &mut ProcessorContext<'_, Uuid, SagaEvent>,
    ) -> Result<(), ProcessError> {
        let upper = due_key(now_ms.saturating_add(1), Uuid::nil(), TimerKind::Unknown);
        let due = ctx.store(STORE)?.range(&[], &upper[..8], MAX_FIRED_PER_PUNCTUATION)?;
        let fired_at = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_else(chrono::Utc::now);
        for (key, value) in due {
            ctx.store(STORE)?.delete(&key)?;
            let SagaEvent::Timer(mut timer) = self.codec.decode(Input::Timer, &value).map_err(codec_error)?
            else {
                return Err(ProcessError::Fatal("the due index holds a non-timer".into()));
            };
            timer.change = TimerChange::Fired { fired_at };
            ctx.forward(Record::new(timer.payment_id, SagaEvent::Timer(timer), now_ms));
        }
        Ok(())
    }
}

/// The timer processor's topology over `codec`, on `timers_topic` (in and out).
pub fn topology<C: SagaCodec>(
    codec: C,
    timers_topic: &str,
) -> Result<Topology<Uuid, SagaEvent>, TopologyError> {
    let codec: std::sync::Arc<dyn SagaCodec> = std::sync::Arc::new(codec);
    let proc_codec = codec.clone();
    let mut builder = Topology::builder();
    builder
        .add_source("timer-events", &[timers_topic], deserializer(codec.clone(), Input::Timer))
        .add_processor("timers", move || Timers { codec: proc_codec.clone() }, &["timer-events"])
        .add_state_store(StoreSpec::persistent(STORE), &["timers"])
        .add_sink("fired", timers_topic, serializer(codec), &["timers"]);
    builder.build()
}
