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
//!
//! One payment, one trace: a due entry keeps the trace context (`traceparent`) of the scheduling
//! (the `timers payments.timers` span's, or the record's own when traces are not exported), and
//! the firing opens its span (`timers fire`) under it and writes that span's context on the
//! `TimerFired`, so the saga's timeout handling continues the payment's trace. The context is kept
//! beside the encoded `TimerEvent` in the index entry ([`DueEntry`]), not in the contract: it is
//! the index's business, like the key's layout, and entries written before it load unchanged.

use std::time::Duration;

use paystream_schemas::events::{TimerChange, TimerKind};
use paystream_stack::trace;
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

/// The first byte of a due entry that carries a trace context. An entry without one is the encoded
/// `TimerEvent` alone (every entry written before trace contexts were kept), and that never starts
/// with this byte: the registry's Confluent framing starts with its magic byte 0, and a plain Avro
/// datum of `TimerEvent` with the length of its `timerId` string (36 characters: zigzag 72, 0x48).
const TRACED_ENTRY_MARKER: u8 = 0xD1;
/// The longest `traceparent` kept, bytes (its length is one byte; W3C version 00 is 55): a longer
/// one is not kept, and the firing starts a trace of its own.
const TRACEPARENT_BYTES_MAX: usize = u8::MAX as usize;

/// A due-index entry: the encoded `TimerEvent` and the scheduling's trace context, if any.
///
/// Layout: `[TRACED_ENTRY_MARKER, len, traceparent (len bytes), timer…]`, or `timer…` alone.
#[derive(Debug, PartialEq, Eq)]
struct DueEntry<'a> {
    traceparent: Option<&'a str>,
    timer: &'a [u8],
}

impl<'a> DueEntry<'a> {
    fn encode(traceparent: Option<&str>, timer: &[u8]) -> Vec<u8> {
        match traceparent.filter(|t| t.len() <= TRACEPARENT_BYTES_MAX && !t.is_empty()) {
            Some(traceparent) => {
                let mut value = Vec::with_capacity(2 + traceparent.len() + timer.len());
                value.push(TRACED_ENTRY_MARKER);
                value.push(traceparent.len() as u8);
                value.extend_from_slice(traceparent.as_bytes());
                value.extend_from_slice(timer);
                value
            }
            None => timer.to_vec(),
        }
    }

    /// Reads an entry of either layout; a traced entry cut short is a bug of this processor (it
    /// alone writes the index), so it is fatal. A context that is not UTF-8 is dropped.
    fn decode(value: &'a [u8]) -> Result<Self, ProcessError> {
        match value {
            [TRACED_ENTRY_MARKER, len, rest @ ..] => {
                let len = usize::from(*len);
                if rest.len() < len {
                    return Err(ProcessError::Fatal("a due entry cut short in its trace context".into()));
                }
                let (traceparent, timer) = rest.split_at(len);
                Ok(Self { traceparent: std::str::from_utf8(traceparent).ok(), timer })
            }
            timer => Ok(Self { traceparent: None, timer }),
        }
    }
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
        // A scheduling joins the payment's trace (the saga's timer record carries it); the fired
        // timer this processor reads back is its own output, traced when it fired.
        let scheduled =
            matches!(&record.value, SagaEvent::Timer(t) if matches!(t.change, TimerChange::Scheduled { .. }));
        let span = scheduled.then(|| super::processor::record_span("timers", &record, ctx));
        let _entered = span.as_ref().map(tracing::Span::enter);
        // What the firing continues: the scheduling span's context (the record's own without export).
        let traceparent = if scheduled { trace::outgoing(record.header(trace::TRACEPARENT)) } else { None };
        let SagaEvent::Timer(timer) = record.value else {
            return Err(ProcessError::poison("not a timer event"));
        };
        if let TimerChange::Scheduled { .. } = timer.change {
            let key = due_key(timer.due_at.timestamp_millis(), timer.payment_id, timer.kind);
            let encoded = self.codec.encode(&SagaEvent::Timer(timer)).map_err(codec_error)?;
            ctx.store(STORE)?.put(&key, &DueEntry::encode(traceparent.as_deref(), &encoded))?;
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
            let entry = DueEntry::decode(&value)?;
            let SagaEvent::Timer(mut timer) =
                self.codec.decode(Input::Timer, entry.timer).map_err(codec_error)?
            else {
                return Err(ProcessError::Fatal("the due index holds a non-timer".into()));
            };
            let span = fire_span(&timer, now_ms, entry.traceparent);
            let _entered = span.enter();
            let traceparent = trace::outgoing(entry.traceparent.map(str::as_bytes));
            timer.change = TimerChange::Fired { fired_at };
            let fired = Record::new(timer.payment_id, SagaEvent::Timer(timer), now_ms);
            ctx.forward(match traceparent {
                Some(traceparent) => fired.with_header(trace::TRACEPARENT, traceparent.into_bytes()),
                None => fired,
            });
        }
        Ok(())
    }
}

/// The span of one timer's firing, a child of the scheduling's context (a root when the entry kept
/// none: written before contexts were kept, or scheduled without one).
fn fire_span(
    timer: &paystream_schemas::events::TimerEvent,
    now_ms: i64,
    traceparent: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "fire timer",
        otel.name = "timers fire",
        otel.kind = "producer",
        payment_id = %timer.payment_id,
        timer_kind = timer.kind.symbol(),
        timer_late_ms = now_ms.saturating_sub(timer.due_at.timestamp_millis()),
    );
    trace::set_parent(
        &span,
        trace::parent_from_pairs(traceparent.map(|t| (trace::TRACEPARENT, t.as_bytes()))),
    );
    span
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

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn an_entry_keeps_the_trace_context_beside_the_timer() {
        let timer = [0u8, 0, 0, 0, 7, 0x48, 1, 2, 3];
        let value = DueEntry::encode(Some(TRACEPARENT), &timer);
        assert_eq!(
            DueEntry::decode(&value).unwrap(),
            DueEntry { traceparent: Some(TRACEPARENT), timer: &timer }
        );
        // No context, or one too long to keep: the timer alone, the layout of before.
        assert_eq!(DueEntry::encode(None, &timer), timer);
        assert_eq!(DueEntry::encode(Some(&"0".repeat(TRACEPARENT_BYTES_MAX + 1)), &timer), timer);
    }

    /// Entries written before contexts were kept: the registry's framing (magic byte 0) and a plain
    /// Avro datum (the timerId's length first) load as they are, with no context.
    #[test]
    fn an_entry_of_the_old_layout_loads_unchanged() {
        for old in [&[0u8, 0, 0, 0, 7, 0x48, b'a'][..], &[0x48, b'a', b'b'][..], &[][..]] {
            assert_eq!(DueEntry::decode(old).unwrap(), DueEntry { traceparent: None, timer: old });
        }
    }

    #[test]
    fn a_traced_entry_cut_short_is_fatal() {
        let value = DueEntry::encode(Some(TRACEPARENT), b"timer");
        assert!(matches!(DueEntry::decode(&value[..10]), Err(ProcessError::Fatal(_))));
    }
}
