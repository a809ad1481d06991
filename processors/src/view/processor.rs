//! The payment view as a topology: seven co-partitioned inputs keyed by paymentId, one RocksDB
//! store of each payment's facts (`<application.id>-views-changelog`), and two outputs —
//! the payment's `PaymentView` on `payments.view` (compacted) and its `PaymentTimelineEvent`s on
//! `payments.timeline`.
//!
//! Why one store entry per payment: every input is keyed and partitioned by paymentId, so a
//! payment's events all reach the same task, whatever topic they come on, and its entry is
//! the only state its view depends on. No join across partitions, no global table, no
//! coordination: the view scales by partition like the saga. The entry is the set of facts
//! applied, which is both the deduplication set and everything the view is derived from, so the
//! view and its deduplication can never disagree; both commit in one Kafka transaction with the
//! records they cause.
//!
//! Per input record: decode it, turn it into a [`Fact`], skip it if its payment's entry has it
//! already (a redelivery, a replay), fold it in, derive the view and the timeline again, publish
//! the view and the timeline entries that are new or moved, store the entry. The outputs carry
//! the input's `traceparent` header and its timestamp, so a replay writes the same records.

use std::sync::Arc;

use paystream_schemas::events::{topics, PaymentTimelineEvent, PaymentView};
use paystream_topology::topology::Serialized;
use paystream_topology::{
    BoxError, ProcessError, Processor, ProcessorContext, RawRecord, Record, StoreSpec, Topology,
    TopologyError,
};
use uuid::Uuid;

use super::fact::{self, Fact, InputEvent};
use super::fold::{self, Admission, ViewState};
use super::metrics::ViewMetrics;

/// The store of each payment's facts, keyed by paymentId.
pub const STORE: &str = "views";
/// The header the outbox router and the processors carry a W3C trace context in.
pub const TRACEPARENT: &str = "traceparent";

/// Everything that flows through the view's graph.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewRecord {
    /// An event from one of the inputs.
    Input(InputEvent),
    /// To payments.view.
    View(PaymentView),
    /// To payments.timeline.
    Timeline(PaymentTimelineEvent),
}

/// Which input a record came from (and so which contract its bytes carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `PaymentInitiated`.
    Initiated,
    /// `DispatchOutcome`.
    Outcome,
    /// `ProviderCallbackReceived`.
    Callback,
    /// `TimerEvent`.
    Timer,
    /// `ProviderRequest`.
    Request,
    /// `ReconciliationEvent`.
    Reconciliation,
    /// `PaymentResult`.
    Result,
}

impl Input {
    /// Every input, in the order of [`ViewTopics::inputs`].
    pub const ALL: [Input; 7] = [
        Input::Initiated,
        Input::Outcome,
        Input::Callback,
        Input::Timer,
        Input::Request,
        Input::Reconciliation,
        Input::Result,
    ];

    /// A stable name: the source node's name and the metric label.
    pub fn label(self) -> &'static str {
        match self {
            Input::Initiated => "initiated",
            Input::Outcome => "outcomes",
            Input::Callback => "callbacks",
            Input::Timer => "timers",
            Input::Request => "requests",
            Input::Reconciliation => "reconciliation",
            Input::Result => "results",
        }
    }

    fn of(event: &InputEvent) -> Self {
        match event {
            InputEvent::Initiated(_) => Input::Initiated,
            InputEvent::Outcome(_) => Input::Outcome,
            InputEvent::Callback(_) => Input::Callback,
            InputEvent::Timer(_) => Input::Timer,
            InputEvent::Request(_) => Input::Request,
            InputEvent::Reconciliation(_) => Input::Reconciliation,
            InputEvent::Result(_) => Input::Result,
        }
    }
}

/// The topics the view reads and writes; `Default` is the production names.
#[derive(Debug, Clone)]
pub struct ViewTopics {
    pub initiated: String,
    pub outcomes: String,
    pub callbacks: String,
    pub timers: String,
    pub requests: String,
    pub reconciliation: String,
    pub results: String,
    /// PaymentView out (compacted).
    pub view: String,
    /// PaymentTimelineEvent out.
    pub timeline: String,
}

impl ViewTopics {
    /// The inputs' topics named as `SagaTopics::prefixed` names them (`<prefix>.initiated`, …),
    /// so a test's view reads its own saga's topics, and outputs `<prefix>.view`, `<prefix>.timeline`.
    pub fn prefixed(prefix: &str) -> Self {
        let name = |t: &str| format!("{prefix}.{t}");
        Self {
            initiated: name("initiated"),
            outcomes: name("outcomes"),
            callbacks: name("callbacks"),
            timers: name("timers"),
            requests: name("requests"),
            reconciliation: name("reconciliation"),
            results: name("results"),
            view: name("view"),
            timeline: name("timeline"),
        }
    }

    /// The same inputs, writing to `view` and `timeline` instead.
    pub fn with_outputs(mut self, view: &str, timeline: &str) -> Self {
        self.view = view.to_owned();
        self.timeline = timeline.to_owned();
        self
    }

    /// The input topics with their inputs, in [`Input::ALL`]'s order.
    pub fn inputs(&self) -> [(Input, &str); 7] {
        [
            (Input::Initiated, &self.initiated),
            (Input::Outcome, &self.outcomes),
            (Input::Callback, &self.callbacks),
            (Input::Timer, &self.timers),
            (Input::Request, &self.requests),
            (Input::Reconciliation, &self.reconciliation),
            (Input::Result, &self.results),
        ]
    }
}

impl Default for ViewTopics {
    fn default() -> Self {
        Self {
            initiated: topics::PAYMENTS_INITIATED.into(),
            outcomes: topics::PAYMENTS_DISPATCH_OUTCOMES.into(),
            callbacks: topics::PAYMENTS_CALLBACKS.into(),
            timers: topics::PAYMENTS_TIMERS.into(),
            requests: topics::PAYMENTS_PROVIDER_REQUESTS.into(),
            reconciliation: topics::PAYMENTS_RECONCILIATION.into(),
            results: topics::PAYMENTS_RESULTS.into(),
            view: topics::PAYMENTS_VIEW.into(),
            timeline: topics::PAYMENTS_TIMELINE.into(),
        }
    }
}

/// Bytes ↔ events. Production uses the registry's Confluent wire format ([`super::codec`]).
pub trait ViewCodec: Send + Sync + 'static {
    /// Decodes a record of one of the inputs.
    fn decode(&self, input: Input, bytes: &[u8]) -> Result<InputEvent, BoxError>;
    /// Encodes an output.
    fn encode(&self, record: &ViewRecord) -> Result<Vec<u8>, BoxError>;
}

/// The view's processor: one per task.
struct Projection {
    metrics: ViewMetrics,
}

type Ctx<'a> = ProcessorContext<'a, Uuid, ViewRecord>;

fn corrupt(e: serde_json::Error) -> ProcessError {
    ProcessError::Fatal(format!("corrupt view state: {e}").into())
}

impl Projection {
    fn load(ctx: &mut Ctx<'_>, id: Uuid) -> Result<ViewState, ProcessError> {
        match ctx.store(STORE)?.get(id.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(corrupt),
            None => Ok(ViewState::default()),
        }
    }

    fn save(ctx: &mut Ctx<'_>, id: Uuid, state: &ViewState) -> Result<(), ProcessError> {
        let bytes = serde_json::to_vec(state).map_err(corrupt)?;
        ctx.store(STORE)?.put(id.as_bytes(), &bytes)?;
        Ok(())
    }

    /// A record carrying `value`, with the input's timestamp and trace context.
    fn output(id: Uuid, value: ViewRecord, input: &Record<Uuid, ViewRecord>) -> Record<Uuid, ViewRecord> {
        let record = Record::new(id, value, input.timestamp_ms);
        match input.header(TRACEPARENT) {
            Some(traceparent) => record.with_header(TRACEPARENT, traceparent.to_vec()),
            None => record,
        }
    }
}

impl Processor<Uuid, ViewRecord> for Projection {
    fn process(&mut self, record: Record<Uuid, ViewRecord>, ctx: &mut Ctx<'_>) -> Result<(), ProcessError> {
        let ViewRecord::Input(event) = &record.value else {
            return Err(ProcessError::poison("an output of the view on one of its inputs"));
        };
        let id = record.key;
        let input = Input::of(event).label();
        let trace_id = fact::trace_id(record.header(TRACEPARENT));
        let Some(fact) = Fact::of(event, trace_id).map_err(ProcessError::poison)? else {
            self.metrics.events.with_label_values(&[input, "ignored"]).inc();
            return Ok(());
        };
        let state = Self::load(ctx, id)?;
        let admission = state.admit(&fact);
        self.metrics.events.with_label_values(&[input, admission.label()]).inc();
        if admission != Admission::Apply {
            if admission == Admission::OverBound {
                tracing::warn!(payment_id = %id, facts = state.facts().len(), input, "a routine event past the per-payment bound; left out of the view");
            }
            return Ok(());
        }
        let before = fold::timeline(&state, id);
        let state = fold::fold(state, fact);
        let after = fold::timeline(&state, id);
        let changed = fold::changed(&before, &after);
        for entry in changed {
            let change = if entry.seq as usize > before.len() { "new" } else { "moved" };
            self.metrics.timeline_entries.with_label_values(&[change]).inc();
            ctx.forward_to("timeline", Self::output(id, ViewRecord::Timeline(entry.clone()), &record))?;
        }
        let Some(view) = fold::view(&state, id) else {
            return Err(ProcessError::Fatal(format!("payment {id} has facts but no view").into()));
        };
        ctx.forward_to("view", Self::output(id, ViewRecord::View(view), &record))?;
        Self::save(ctx, id, &state)?;
        let lag_ms = ctx.wall_clock_ms().saturating_sub(record.timestamp_ms).max(0);
        // Milliseconds to seconds for the histogram: a lag is far below f64's exact-integer range.
        self.metrics.projection_lag.observe(lag_ms as f64 / 1_000.0);
        Ok(())
    }
}

/// The view's topology over `codec`, on `topics`.
pub fn topology<C: ViewCodec>(
    codec: C,
    metrics: ViewMetrics,
    topics: &ViewTopics,
) -> Result<Topology<Uuid, ViewRecord>, TopologyError> {
    let codec = Arc::new(codec);
    let mut builder = Topology::builder();
    for (input, topic) in topics.inputs() {
        builder.add_source(input.label(), &[topic], deserializer(codec.clone(), input));
    }
    let sources: Vec<&str> = Input::ALL.iter().map(|i| i.label()).collect();
    builder
        .add_processor("projection", move || Projection { metrics: metrics.clone() }, &sources)
        .add_state_store(StoreSpec::persistent(STORE), &["projection"])
        .add_sink("view", &topics.view, serializer(codec.clone()), &["projection"])
        .add_sink("timeline", &topics.timeline, serializer(codec), &["projection"]);
    builder.build()
}

/// Reads the paymentId key (UTF-8 UUID) and the value; an event filed under another payment's
/// key is poison (it would change that payment's view).
fn deserializer<C: ViewCodec>(
    codec: Arc<C>,
    input: Input,
) -> impl Fn(&RawRecord) -> Result<(Uuid, ViewRecord), BoxError> + Send + Sync + 'static {
    move |raw: &RawRecord| {
        let id = Uuid::parse_str(std::str::from_utf8(raw.key.as_deref().unwrap_or_default())?)?;
        let bytes = raw.value.as_deref().ok_or("a tombstone on a view input")?;
        let event = codec.decode(input, bytes)?;
        let payment_id = event.payment_id();
        if payment_id != id {
            return Err(format!("the record's key {id} is not its event's paymentId {payment_id}").into());
        }
        Ok((id, ViewRecord::Input(event)))
    }
}

/// Writes the paymentId key as UTF-8 and the record through the codec.
fn serializer<C: ViewCodec>(
    codec: Arc<C>,
) -> impl Fn(&Record<Uuid, ViewRecord>) -> Result<Serialized, BoxError> + Send + Sync + 'static {
    move |record: &Record<Uuid, ViewRecord>| {
        Ok((Some(record.key.to_string().into_bytes()), Some(codec.encode(&record.value)?)))
    }
}
