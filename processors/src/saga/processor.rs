//! The saga as a topology: four co-partitioned inputs keyed by paymentId, one RocksDB store of
//! payment state, and three outputs — the charge command, timers, and exactly one result.
//!
//! Everything a payment's fate depends on is in its store entry, written in the same Kafka
//! transaction as the records it causes (the topology runtime's exactly-once v2). The result's id
//! is `PaymentResult::id_for(paymentId, status)`: a replay yields the same id, so even a
//! duplicate that escaped the transaction would be a no-op for settlement.

use std::time::Duration;

use paystream_schemas::events::{
    topics, ChargeCommand, DispatchOutcome, DispatchResult, PaymentInitiated, PaymentResult,
    ProviderCallbackReceived, ProviderStatus, TimerChange, TimerEvent, TimerKind,
};
use paystream_schemas::money::Amount;
use paystream_topology::topology::Serialized;
use paystream_topology::{
    BoxError, ProcessError, Processor, ProcessorContext, RawRecord, Record, StoreSpec, Topology,
    TopologyError,
};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::{next, Decision, PaymentStatus, Signal};

/// The store of payment state, keyed by paymentId.
pub const STORE: &str = "payments";
/// Namespace of the charge command ids (UUIDv5 of the paymentId: one command per payment).
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x0b3c_58a1_7d2e_4f60_9a11_5c7e_2b4d_8e90);
/// Namespace of timer ids (UUIDv5 of paymentId and kind).
const TIMER_NAMESPACE: Uuid = Uuid::from_u128(0x5e2a_9c14_3b7f_4d81_a6c0_1f9e_7d3b_2c58);

/// Everything that flows through the saga's graph.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaEvent {
    /// From payments.initiated.
    Initiated(PaymentInitiated),
    /// From payments.callbacks.
    Callback(ProviderCallbackReceived),
    /// From payments.dispatch-outcomes.
    Outcome(DispatchOutcome),
    /// From and to payments.timers.
    Timer(TimerEvent),
    /// To payments.provider-commands.
    Charge(ChargeCommand),
    /// To payments.results.
    Result(PaymentResult),
}

/// Which input a record came from (and so which contract its bytes carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `PaymentInitiated`.
    Initiated,
    /// `ProviderCallbackReceived`.
    Callback,
    /// `DispatchOutcome`.
    Outcome,
    /// `TimerEvent`.
    Timer,
}

/// The topics the saga reads and writes; `Default` is the production names.
#[derive(Debug, Clone)]
pub struct SagaTopics {
    /// PaymentInitiated in.
    pub initiated: String,
    /// ProviderCallbackReceived in.
    pub callbacks: String,
    /// DispatchOutcome in.
    pub outcomes: String,
    /// TimerEvent in and out.
    pub timers: String,
    /// ChargeCommand out.
    pub commands: String,
    /// PaymentResult out.
    pub results: String,
}

impl SagaTopics {
    /// Topics named `<prefix>.initiated`, `<prefix>.callbacks`, …: a saga of its own on a shared
    /// cluster (tests, a second tenant).
    pub fn prefixed(prefix: &str) -> Self {
        let name = |t: &str| format!("{prefix}.{t}");
        Self {
            initiated: name("initiated"),
            callbacks: name("callbacks"),
            outcomes: name("outcomes"),
            timers: name("timers"),
            commands: name("commands"),
            results: name("results"),
        }
    }
}

impl Default for SagaTopics {
    fn default() -> Self {
        Self {
            initiated: topics::PAYMENTS_INITIATED.into(),
            callbacks: topics::PAYMENTS_CALLBACKS.into(),
            outcomes: topics::PAYMENTS_DISPATCH_OUTCOMES.into(),
            timers: topics::PAYMENTS_TIMERS.into(),
            commands: topics::PAYMENTS_PROVIDER_COMMANDS.into(),
            results: topics::PAYMENTS_RESULTS.into(),
        }
    }
}

/// Bytes ↔ events. Production uses the registry's Confluent wire format; unit tests plain Avro.
pub trait SagaCodec: Send + Sync + 'static {
    /// Decodes a record of one of the saga's inputs.
    fn decode(&self, input: Input, bytes: &[u8]) -> Result<SagaEvent, BoxError>;
    /// Encodes an output event.
    fn encode(&self, event: &SagaEvent) -> Result<Vec<u8>, BoxError>;
}

/// The saga's settings.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// How long a payment may wait for the provider's verdict before it fails with FAILED_TIMEOUT.
    pub payment_timeout: Duration,
    /// How long a callback that arrived before its payment is kept.
    pub callback_retention: Duration,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self { payment_timeout: Duration::from_secs(30), callback_retention: Duration::from_secs(600) }
    }
}

/// Counters of what the saga decided.
#[derive(Clone)]
pub struct SagaMetrics {
    /// Signals by kind and decision (transition, duplicate, absorbed, illegal, kept).
    pub signals: IntCounterVec,
    /// Results emitted by status.
    pub results: IntCounterVec,
    /// Early callbacks whose payment never appeared.
    pub expired_callbacks: IntCounterVec,
}

impl SagaMetrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let signals = IntCounterVec::new(
            Opts::new("paystream_saga_signals_total", "Signals by kind and what the state machine decided"),
            &["signal", "decision"],
        )?;
        let results = IntCounterVec::new(
            Opts::new("paystream_saga_results_total", "Payment results emitted"),
            &["status"],
        )?;
        let expired_callbacks = IntCounterVec::new(
            Opts::new("paystream_saga_expired_callbacks_total", "Callbacks whose payment never appeared"),
            &["status"],
        )?;
        registry.register(Box::new(signals.clone()))?;
        registry.register(Box::new(results.clone()))?;
        registry.register(Box::new(expired_callbacks.clone()))?;
        Ok(Self { signals, results, expired_callbacks })
    }
}

/// A payment's state in the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Stored {
    /// `None` while only an early callback is known.
    status: Option<PaymentStatus>,
    /// The payment, once initiated.
    payment: Option<Payment>,
    /// A callback that arrived before the payment: `true` for SUCCEEDED.
    early_callback: Option<EarlyCallback>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Payment {
    wallet_id: Uuid,
    amount_minor: i64,
    currency: String,
    description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct EarlyCallback {
    succeeded: bool,
    description: String,
}

/// The saga's processor: one per task.
struct Saga {
    settings: SagaSettings,
    metrics: SagaMetrics,
}

type Ctx<'a> = ProcessorContext<'a, Uuid, SagaEvent>;

fn store_error(e: serde_json::Error) -> ProcessError {
    ProcessError::Fatal(format!("corrupt saga state: {e}").into())
}

impl Saga {
    fn load(ctx: &mut Ctx<'_>, id: Uuid) -> Result<Stored, ProcessError> {
        match ctx.store(STORE)?.get(id.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(store_error),
            None => Ok(Stored::default()),
        }
    }

    fn save(ctx: &mut Ctx<'_>, id: Uuid, state: &Stored) -> Result<(), ProcessError> {
        let bytes = serde_json::to_vec(state).map_err(store_error)?;
        ctx.store(STORE)?.put(id.as_bytes(), &bytes)?;
        Ok(())
    }

    fn now(ctx: &Ctx<'_>) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(ctx.wall_clock_ms()).unwrap_or_else(chrono::Utc::now)
    }

    fn schedule(
        &self,
        ctx: &mut Ctx<'_>,
        id: Uuid,
        kind: TimerKind,
        after: Duration,
        timestamp_ms: i64,
    ) -> Result<(), ProcessError> {
        let now = Self::now(ctx);
        let due_at = now + chrono::Duration::from_std(after).map_err(|e| ProcessError::Fatal(e.into()))?;
        let timer = TimerEvent {
            timer_id: Uuid::new_v5(&TIMER_NAMESPACE, format!("{id}/{}", kind.symbol()).as_bytes()),
            payment_id: id,
            kind,
            due_at,
            change: TimerChange::Scheduled { scheduled_at: now },
        };
        ctx.forward_to("timers", Record::new(id, SagaEvent::Timer(timer), timestamp_ms))
    }

    /// Applies `signal`; on a terminal transition emits the one result.
    fn apply(
        &self,
        ctx: &mut Ctx<'_>,
        id: Uuid,
        mut state: Stored,
        signal: Signal,
        reason: &str,
        ts: i64,
    ) -> Result<(), ProcessError> {
        let decision = next(state.status, signal);
        self.metrics.signals.with_label_values(&[signal_name(signal), decision_name(decision)]).inc();
        match decision {
            Decision::Transition(to) => {
                state.status = Some(to);
                if let (Some(status), Some(payment)) = (to.result_status(), &state.payment) {
                    let result = PaymentResult {
                        payment_result_id: PaymentResult::id_for(id, status),
                        payment_id: id,
                        wallet_id: payment.wallet_id,
                        amount: Amount::from_minor(payment.amount_minor)
                            .map_err(|e| ProcessError::Fatal(e.into()))?,
                        status,
                        reason: reason.to_string(),
                        decided_at: Self::now(ctx),
                    };
                    self.metrics.results.with_label_values(&[status.symbol()]).inc();
                    ctx.forward_to("results", Record::new(id, SagaEvent::Result(result), ts))?;
                }
                Self::save(ctx, id, &state)
            }
            Decision::Absorbed(_) | Decision::Duplicate | Decision::Illegal => {
                tracing::info!(payment_id = %id, ?signal, ?decision, "signal changes nothing");
                Ok(())
            }
            Decision::KeepForLater => {
                state.early_callback = Some(EarlyCallback {
                    succeeded: signal == Signal::ProviderSucceeded,
                    description: reason.into(),
                });
                Self::save(ctx, id, &state)?;
                self.schedule(ctx, id, TimerKind::CallbackRetention, self.settings.callback_retention, ts)
            }
        }
    }

    fn initiated(&self, ctx: &mut Ctx<'_>, p: PaymentInitiated, ts: i64) -> Result<(), ProcessError> {
        let id = p.payment_id;
        let mut state = Self::load(ctx, id)?;
        if next(state.status, Signal::Initiated) != Decision::Transition(PaymentStatus::New) {
            return self.apply(ctx, id, state, Signal::Initiated, "", ts);
        }
        state.payment = Some(Payment {
            wallet_id: p.wallet_id,
            amount_minor: p.amount.minor(),
            currency: p.currency.clone(),
            description: p.description.clone(),
        });
        let early = state.early_callback.take();
        self.apply(ctx, id, state, Signal::Initiated, "", ts)?;
        let command = ChargeCommand {
            command_id: Uuid::new_v5(&COMMAND_NAMESPACE, id.as_bytes()),
            payment_id: id,
            wallet_id: p.wallet_id,
            amount: p.amount,
            currency: p.currency,
            description: p.description,
            issued_at: Self::now(ctx),
        };
        ctx.forward_to("commands", Record::new(id, SagaEvent::Charge(command), ts))?;
        self.schedule(ctx, id, TimerKind::PaymentTimeout, self.settings.payment_timeout, ts)?;
        if let Some(early) = early {
            let signal = if early.succeeded { Signal::ProviderSucceeded } else { Signal::ProviderFailed };
            let state = Self::load(ctx, id)?;
            self.apply(ctx, id, state, signal, &early.description, ts)?;
        }
        Ok(())
    }
}

impl Processor<Uuid, SagaEvent> for Saga {
    fn process(&mut self, record: Record<Uuid, SagaEvent>, ctx: &mut Ctx<'_>) -> Result<(), ProcessError> {
        let (id, ts) = (record.key, record.timestamp_ms);
        match record.value {
            SagaEvent::Initiated(p) => self.initiated(ctx, p, ts),
            SagaEvent::Callback(c) => {
                let signal = match c.status {
                    ProviderStatus::Succeeded => Signal::ProviderSucceeded,
                    ProviderStatus::Failed => Signal::ProviderFailed,
                    ProviderStatus::Unknown => {
                        return Err(ProcessError::poison("callback with an unknown status"))
                    }
                };
                let state = Self::load(ctx, id)?;
                self.apply(ctx, id, state, signal, &c.description, ts)
            }
            SagaEvent::Outcome(o) => {
                let signal = match o.outcome {
                    DispatchResult::Accepted => Signal::DispatchAccepted,
                    DispatchResult::Rejected => Signal::DispatchRejected,
                    DispatchResult::RetriesExhausted => Signal::DispatchExhausted,
                    DispatchResult::Unknown => return Err(ProcessError::poison("dispatch outcome UNKNOWN")),
                };
                let state = Self::load(ctx, id)?;
                self.apply(ctx, id, state, signal, &o.detail, ts)
            }
            SagaEvent::Timer(t) => match (t.change, t.kind) {
                // Our own schedules come back on the same topic: the timer processor's business.
                (TimerChange::Scheduled { .. }, _) => Ok(()),
                (TimerChange::Fired { .. }, TimerKind::PaymentTimeout) => {
                    let state = Self::load(ctx, id)?;
                    self.apply(ctx, id, state, Signal::TimerFired, "no verdict from the provider in time", ts)
                }
                (TimerChange::Fired { .. }, TimerKind::CallbackRetention) => {
                    let state = Self::load(ctx, id)?;
                    if state.status.is_none() {
                        if let Some(early) = &state.early_callback {
                            let status = if early.succeeded { "SUCCEEDED" } else { "FAILED" };
                            self.metrics.expired_callbacks.with_label_values(&[status]).inc();
                            tracing::warn!(payment_id = %id, "a callback's payment never appeared; dropped");
                            ctx.store(STORE)?.delete(id.as_bytes())?;
                        }
                    }
                    Ok(())
                }
                (TimerChange::Fired { .. }, TimerKind::Unknown) => {
                    Err(ProcessError::poison("timer of an unknown kind"))
                }
            },
            SagaEvent::Charge(_) | SagaEvent::Result(_) => {
                Err(ProcessError::poison("an output event on an input topic"))
            }
        }
    }
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Initiated => "initiated",
        Signal::DispatchAccepted => "dispatch_accepted",
        Signal::DispatchRejected => "dispatch_rejected",
        Signal::DispatchExhausted => "dispatch_exhausted",
        Signal::ProviderSucceeded => "provider_succeeded",
        Signal::ProviderFailed => "provider_failed",
        Signal::TimerFired => "timer_fired",
    }
}

fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Transition(_) => "transition",
        Decision::KeepForLater => "kept",
        Decision::Duplicate => "duplicate",
        Decision::Absorbed(_) => "absorbed",
        Decision::Illegal => "illegal",
    }
}

/// The saga's topology over `codec`, on `topics`.
pub fn topology<C: SagaCodec>(
    codec: C,
    settings: SagaSettings,
    metrics: SagaMetrics,
    topics: &SagaTopics,
) -> Result<Topology<Uuid, SagaEvent>, TopologyError> {
    let codec = std::sync::Arc::new(codec);
    let mut builder = Topology::builder();
    builder
        .add_source("initiated", &[&topics.initiated], deserializer(codec.clone(), Input::Initiated))
        .add_source("callbacks", &[&topics.callbacks], deserializer(codec.clone(), Input::Callback))
        .add_source("outcomes", &[&topics.outcomes], deserializer(codec.clone(), Input::Outcome))
        .add_source("timer-events", &[&topics.timers], deserializer(codec.clone(), Input::Timer))
        .add_processor(
            "saga",
            move || Saga { settings: settings.clone(), metrics: metrics.clone() },
            &["initiated", "callbacks", "outcomes", "timer-events"],
        )
        .add_state_store(StoreSpec::persistent(STORE), &["saga"])
        .add_sink("commands", &topics.commands, serializer(codec.clone()), &["saga"])
        .add_sink("timers", &topics.timers, serializer(codec.clone()), &["saga"])
        .add_sink("results", &topics.results, serializer(codec), &["saga"]);
    builder.build()
}

/// Reads the paymentId key (UTF-8 UUID, as Debezium's outbox router writes it) and the value.
pub fn deserializer<C: SagaCodec + ?Sized>(
    codec: std::sync::Arc<C>,
    input: Input,
) -> impl Fn(&RawRecord) -> Result<(Uuid, SagaEvent), BoxError> + Send + Sync + 'static {
    move |raw: &RawRecord| {
        let id = Uuid::parse_str(std::str::from_utf8(raw.key.as_deref().unwrap_or_default())?)?;
        let bytes = raw.value.as_deref().ok_or("a tombstone on a saga input")?;
        Ok((id, codec.decode(input, bytes)?))
    }
}

/// Writes the paymentId key as UTF-8 and the event through the codec.
pub fn serializer<C: SagaCodec + ?Sized>(
    codec: std::sync::Arc<C>,
) -> impl Fn(&Record<Uuid, SagaEvent>) -> Result<Serialized, BoxError> + Send + Sync + 'static {
    move |record: &Record<Uuid, SagaEvent>| {
        Ok((Some(record.key.to_string().into_bytes()), Some(codec.encode(&record.value)?)))
    }
}

/// Plain Avro datums with the contract's schema, no registry: for the test driver and for tools.
/// Production uses the registry's Confluent wire format.
#[derive(Debug, Clone, Copy, Default)]
pub struct AvroDatumCodec;

impl AvroDatumCodec {
    fn read<E: paystream_schemas::event::Event>(bytes: &[u8]) -> Result<E, BoxError> {
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(E::schema()).build()?;
        let value = reader.read_value(&mut &bytes[..])?;
        Ok(E::from_avro(value)?)
    }

    fn write<E: paystream_schemas::event::Event>(event: &E) -> Result<Vec<u8>, BoxError> {
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(E::schema()).build()?;
        Ok(writer.write_value_to_vec(event.to_avro())?)
    }
}

impl SagaCodec for AvroDatumCodec {
    fn decode(&self, input: Input, bytes: &[u8]) -> Result<SagaEvent, BoxError> {
        Ok(match input {
            Input::Initiated => SagaEvent::Initiated(Self::read(bytes)?),
            Input::Callback => SagaEvent::Callback(Self::read(bytes)?),
            Input::Outcome => SagaEvent::Outcome(Self::read(bytes)?),
            Input::Timer => SagaEvent::Timer(Self::read(bytes)?),
        })
    }

    fn encode(&self, event: &SagaEvent) -> Result<Vec<u8>, BoxError> {
        match event {
            SagaEvent::Initiated(e) => Self::write(e),
            SagaEvent::Callback(e) => Self::write(e),
            SagaEvent::Outcome(e) => Self::write(e),
            SagaEvent::Timer(e) => Self::write(e),
            SagaEvent::Charge(e) => Self::write(e),
            SagaEvent::Result(e) => Self::write(e),
        }
    }
}
