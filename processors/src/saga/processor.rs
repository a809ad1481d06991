//! The saga as a topology: five co-partitioned inputs keyed by paymentId, one RocksDB store of
//! payment state, and five outputs — the charge command, provider requests (status query, void,
//! refund), timers, exactly one result, and reconciliation events.
//!
//! Everything a payment's fate depends on is in its store entry, written in the same Kafka
//! transaction as the records it causes (the topology runtime's exactly-once v2). The result's id
//! is `PaymentResult::id_for(paymentId, status)`: a replay yields the same id, so even a
//! duplicate that escaped the transaction would be a no-op for settlement.
//!
//! The answers to provider requests come back on `payments.dispatch-outcomes`, as new
//! `DispatchResult` symbols with the request's id as `commandId`: that topic is already one of
//! the saga's co-partitioned inputs (the runtime refuses sources that are not), it already means
//! "what the dispatcher learnt from the provider", and a reader built before the symbols existed
//! reads them as UNKNOWN and dead-letters them instead of misreading them. Each request has its
//! own id (UUIDv5 of the payment and a round number) and the saga keeps the id of the one it has
//! outstanding: an answer to any other (a redelivery, an answer overtaken by a callback) changes
//! nothing. Answers to the charge itself are idempotent in the state table, so they need no id.

use std::time::Duration;

use paystream_schemas::events::{
    topics, ChargeCommand, Discrepancy, DispatchOutcome, DispatchResult, PaymentCancelRequested,
    PaymentInitiated, PaymentResult, PaymentResultStatus, ProviderAction, ProviderCallbackReceived,
    ProviderRequest, ProviderStatus, ReconciliationEvent, Remedy, TimerChange, TimerEvent, TimerKind,
};
use paystream_schemas::money::Amount;
use paystream_stack::trace;
use paystream_topology::topology::Serialized;
use paystream_topology::{
    BoxError, ProcessError, Processor, ProcessorContext, RawRecord, Record, StoreSpec, Topology,
    TopologyError,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::{effects, next, Decision, Effects, PaymentStatus, Request, Signal};

/// The store of payment state, keyed by paymentId.
pub const STORE: &str = "payments";
/// Namespace of the charge command ids (UUIDv5 of the paymentId: one command per payment).
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x0b3c_58a1_7d2e_4f60_9a11_5c7e_2b4d_8e90);
/// Namespace of timer ids (UUIDv5 of paymentId and kind, and the round of a retry).
const TIMER_NAMESPACE: Uuid = Uuid::from_u128(0x5e2a_9c14_3b7f_4d81_a6c0_1f9e_7d3b_2c58);
/// Namespace of provider request ids (UUIDv5 of paymentId and round: a replay issues the same ids).
const REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x91c4_2e7a_5d03_4b6f_8e1a_c27d_40f9_3b65);

/// The id of the charge command of `payment_id` (one per payment).
pub fn charge_command_id(payment_id: Uuid) -> Uuid {
    Uuid::new_v5(&COMMAND_NAMESPACE, payment_id.as_bytes())
}

/// The id of the `round`-th provider request of `payment_id`.
pub fn request_id(payment_id: Uuid, round: u32) -> Uuid {
    Uuid::new_v5(&REQUEST_NAMESPACE, format!("{payment_id}/{round}").as_bytes())
}

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
    /// From payments.cancel-requests.
    CancelRequested(PaymentCancelRequested),
    /// To payments.provider-commands.
    Charge(ChargeCommand),
    /// To payments.provider-requests.
    Request(ProviderRequest),
    /// To payments.results.
    Result(PaymentResult),
    /// To payments.reconciliation.
    Reconciliation(ReconciliationEvent),
}

impl SagaEvent {
    /// The payment the event is about.
    pub fn payment_id(&self) -> Uuid {
        match self {
            SagaEvent::Initiated(e) => e.payment_id,
            SagaEvent::Callback(e) => e.payment_id,
            SagaEvent::Outcome(e) => e.payment_id,
            SagaEvent::Timer(e) => e.payment_id,
            SagaEvent::CancelRequested(e) => e.payment_id,
            SagaEvent::Charge(e) => e.payment_id,
            SagaEvent::Request(e) => e.payment_id,
            SagaEvent::Result(e) => e.payment_id,
            SagaEvent::Reconciliation(e) => e.payment_id,
        }
    }
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
    /// `PaymentCancelRequested`.
    CancelRequested,
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
    /// PaymentCancelRequested in.
    pub cancel_requests: String,
    /// ChargeCommand out.
    pub commands: String,
    /// ProviderRequest out (status queries, voids, refunds).
    pub requests: String,
    /// PaymentResult out.
    pub results: String,
    /// ReconciliationEvent out.
    pub reconciliation: String,
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
            cancel_requests: name("cancel-requests"),
            commands: name("commands"),
            requests: name("requests"),
            results: name("results"),
            reconciliation: name("reconciliation"),
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
            cancel_requests: topics::PAYMENTS_CANCEL_REQUESTS.into(),
            commands: topics::PAYMENTS_PROVIDER_COMMANDS.into(),
            requests: topics::PAYMENTS_PROVIDER_REQUESTS.into(),
            results: topics::PAYMENTS_RESULTS.into(),
            reconciliation: topics::PAYMENTS_RECONCILIATION.into(),
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

/// The saga's settings. `paystream saga` derives `charge_deadline` from the payment timeout and
/// the dispatcher's budget and refuses inconsistent ones ([`super::deadline`]).
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// How long a payment may wait for the provider's verdict before the saga verifies with the
    /// provider (and, if it holds no charge, voids it and fails with FAILED_TIMEOUT).
    pub payment_timeout: Duration,
    /// A charge command's `notAfter` is its issue time plus this: no attempt starts later, so none
    /// can reach the provider after the payment timer.
    pub charge_deadline: Duration,
    /// How long a callback that arrived before its payment is kept.
    pub callback_retention: Duration,
    /// The first pause before a provider request that got no decision is asked again; it
    /// doubles per inconclusive answer up to `verify_backoff_max`.
    pub verify_backoff_initial: Duration,
    /// The longest pause between two attempts to verify.
    pub verify_backoff_max: Duration,
    /// After this many inconclusive answers for one payment the saga raises
    /// `paystream_saga_verification_overdue_total` (and goes on asking, holding the reservation).
    pub verify_rounds_alert: u32,
}

/// Defaults of [`SagaSettings`], named with their units.
pub mod defaults {
    /// The payment timeout: longer than the dispatcher's 40 s budget plus the 10 s margin.
    pub const PAYMENT_TIMEOUT_MS: u64 = 60_000;
    /// The charge deadline: the payment timeout minus one request timeout (5 s) and the margin.
    pub const CHARGE_DEADLINE_MS: u64 = 45_000;
    pub const CALLBACK_RETENTION_MS: u64 = 600_000;
    pub const VERIFY_BACKOFF_INITIAL_MS: u64 = 1_000;
    pub const VERIFY_BACKOFF_MAX_MS: u64 = 60_000;
    /// With the back-off above: about 5 minutes of asking before the alert.
    pub const VERIFY_ROUNDS_ALERT: u32 = 10;
}

impl Default for SagaSettings {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            payment_timeout: ms(defaults::PAYMENT_TIMEOUT_MS),
            charge_deadline: ms(defaults::CHARGE_DEADLINE_MS),
            callback_retention: ms(defaults::CALLBACK_RETENTION_MS),
            verify_backoff_initial: ms(defaults::VERIFY_BACKOFF_INITIAL_MS),
            verify_backoff_max: ms(defaults::VERIFY_BACKOFF_MAX_MS),
            verify_rounds_alert: defaults::VERIFY_ROUNDS_ALERT,
        }
    }
}

impl SagaSettings {
    /// The pause before asking again after the `inconclusive`-th answer without a decision:
    /// doubling from the initial pause, capped. Deterministic, so a replay schedules the same.
    pub fn verify_backoff(&self, inconclusive: u32) -> Duration {
        let factor = 1u32.checked_shl(inconclusive.saturating_sub(1)).unwrap_or(u32::MAX);
        self.verify_backoff_initial.saturating_mul(factor).min(self.verify_backoff_max)
    }
}

/// Counters of what the saga decided.
#[derive(Clone)]
pub struct SagaMetrics {
    /// Signals by kind and decision (transition, duplicate, superseded, retry_later, reissue,
    /// absorbed, illegal, kept, stale).
    pub signals: IntCounterVec,
    /// Results emitted by status.
    pub results: IntCounterVec,
    /// Early callbacks whose payment never appeared.
    pub expired_callbacks: IntCounterVec,
    /// Provider requests issued, by request (status, void, refund).
    pub provider_requests: IntCounterVec,
    /// Alert: payments whose verification got no decision after `verify_rounds_alert` answers
    /// (their reservation is held and the saga goes on asking).
    pub verification_overdue: IntCounter,
    /// Alert: discrepancies with the provider's ledger, by discrepancy (a charge after a failure).
    pub reconciliations: IntCounterVec,
    /// Refunds of late charges answered, by result (refunded, not_charged).
    pub refunds: IntCounterVec,
    /// POST→result: from the payment's acceptance (`PaymentInitiated.initiatedAt`, the API's
    /// or the inbox's commit) to its result's decision, by status. Payments initiated before
    /// their acceptance time was kept in the saga's store are not observed.
    pub result_latency: HistogramVec,
}

/// Buckets of POST→result, in seconds: a charged payment is decided in about a second (the
/// provider's verdict delay), a timed-out one after its payment timeout (25 s to 60 s as
/// configured here) plus verification, a verification retried with back-off in minutes. The
/// lag exporter's POST→settled buckets (`paystream_payment_settle_latency_seconds`) are the same,
/// so the two can be read side by side.
pub const RESULT_LATENCY_BUCKETS_S: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

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
        let provider_requests = IntCounterVec::new(
            Opts::new("paystream_saga_provider_requests_total", "Status queries, voids and refunds issued"),
            &["request"],
        )?;
        let verification_overdue = IntCounter::new(
            "paystream_saga_verification_overdue_total",
            "Payments whose verification with the provider is still undecided after the alert bound (reservation held)",
        )?;
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "paystream_saga_reconciliations_total",
                "Discrepancies with the provider's ledger, compensated and published on payments.reconciliation",
            ),
            &["discrepancy"],
        )?;
        let refunds = IntCounterVec::new(
            Opts::new("paystream_saga_refunds_total", "Refunds of late charges answered by the provider"),
            &["result"],
        )?;
        registry.register(Box::new(signals.clone()))?;
        registry.register(Box::new(results.clone()))?;
        registry.register(Box::new(expired_callbacks.clone()))?;
        registry.register(Box::new(provider_requests.clone()))?;
        registry.register(Box::new(verification_overdue.clone()))?;
        registry.register(Box::new(reconciliations.clone()))?;
        let result_latency = HistogramVec::new(
            HistogramOpts::new(
                "paystream_payment_result_latency_seconds",
                "From the payment's acceptance (POST or pay.order) to its result, by status",
            )
            .buckets(RESULT_LATENCY_BUCKETS_S.to_vec()),
            &["status"],
        )?;
        registry.register(Box::new(refunds.clone()))?;
        registry.register(Box::new(result_latency.clone()))?;
        for request in ["status", "void", "refund"] {
            provider_requests.with_label_values(&[request]);
        }
        reconciliations.with_label_values(&[Discrepancy::ChargedAfterFailure.symbol()]);
        for result in ["refunded", "not_charged"] {
            refunds.with_label_values(&[result]);
        }
        Ok(Self {
            signals,
            results,
            expired_callbacks,
            provider_requests,
            verification_overdue,
            reconciliations,
            refunds,
            result_latency,
        })
    }
}

/// A payment's state in the store. New fields have serde defaults, so entries written by an
/// older saga (and its changelog) still read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
struct Stored {
    /// `None` while only an early callback is known.
    status: Option<PaymentStatus>,
    /// The payment, once initiated.
    payment: Option<Payment>,
    /// A callback that arrived before the payment: `true` for SUCCEEDED.
    early_callback: Option<EarlyCallback>,
    /// The provider request whose answer the saga waits for; answers to any other are stale.
    outstanding: Option<Uuid>,
    /// Provider requests issued so far (the next one's round).
    requests_issued: u32,
    /// The VERIFY_RETRY timer the saga waits for; any other is stale.
    retry_timer: Option<Uuid>,
    /// Answers without a decision so far (PENDING, UNANSWERED): the back-off's exponent.
    inconclusive: u32,
    /// Why the outcome became uncertain, for the failure's reason if the provider holds no charge.
    uncertainty: Option<String>,
    /// The result published, once there is one.
    published: Option<String>,
    /// The published result's reason and decision time, so that a repeated PaymentInitiated
    /// re-forwards the very same record ([`Saga::reforward`]). `None` in entries written
    /// before they were kept.
    published_reason: Option<String>,
    published_at_ms: Option<i64>,
    /// A cancel that arrived before the payment: its reason.
    early_cancel: Option<String>,
    /// The owner's reason, once a cancel was taken up (for the CANCELED result's reason).
    cancel_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Payment {
    wallet_id: Uuid,
    amount_minor: i64,
    currency: String,
    description: String,
    /// When the payment was accepted (`PaymentInitiated.initiatedAt`), ms: the start of
    /// POST→result. `None` in entries written before it was kept.
    #[serde(default)]
    initiated_at_ms: Option<i64>,
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
    /// The `traceparent` of what the current record makes ([`Saga::traced`]): its span's.
    traceparent: Option<String>,
}

type Ctx<'a> = ProcessorContext<'a, Uuid, SagaEvent>;

fn store_error(e: serde_json::Error) -> ProcessError {
    ProcessError::Fatal(format!("corrupt saga state: {e}").into())
}

fn fatal(e: impl Into<BoxError>) -> ProcessError {
    ProcessError::Fatal(e.into())
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

    fn after(ctx: &Ctx<'_>, delay: Duration) -> Result<chrono::DateTime<chrono::Utc>, ProcessError> {
        Ok(Self::now(ctx) + chrono::Duration::from_std(delay).map_err(fatal)?)
    }

    /// Schedules the timer `timer_id` of `kind`, due `after` from now.
    fn schedule(
        &self,
        ctx: &mut Ctx<'_>,
        id: Uuid,
        (kind, timer_id): (TimerKind, Uuid),
        after: Duration,
        timestamp_ms: i64,
    ) -> Result<(), ProcessError> {
        let timer = TimerEvent {
            timer_id,
            payment_id: id,
            kind,
            due_at: Self::after(ctx, after)?,
            change: TimerChange::Scheduled { scheduled_at: Self::now(ctx) },
        };
        ctx.forward_to("timers", self.traced(Record::new(id, SagaEvent::Timer(timer), timestamp_ms)))
    }

    /// The id of the one timer of `kind` of a payment (retry timers have one per round).
    fn timer_id(id: Uuid, kind: TimerKind, round: Option<u32>) -> Uuid {
        let name = match round {
            None => format!("{id}/{}", kind.symbol()),
            Some(round) => format!("{id}/{}/{round}", kind.symbol()),
        };
        Uuid::new_v5(&TIMER_NAMESPACE, name.as_bytes())
    }

    /// Applies `signal`: decides with the table, then carries out the decision's effects.
    fn apply(
        &self,
        ctx: &mut Ctx<'_>,
        id: Uuid,
        mut state: Stored,
        signal: Signal,
        reason: &str,
        ts: i64,
    ) -> Result<Decision, ProcessError> {
        let current = state.status;
        let decision = next(current, signal);
        self.metrics.signals.with_label_values(&[signal.label(), decision.label()]).inc();
        let effects = effects(current, decision);
        match decision {
            Decision::Transition(to) => {
                tracing::info!(payment_id = %id, from = current.map(PaymentStatus::label), to = to.label(), signal = signal.label(), reason, "transition");
                if current.is_some_and(|from| matches!(from, PaymentStatus::New | PaymentStatus::Sent))
                    && to.outstanding_request().is_some()
                {
                    state.uncertainty = Some(reason.to_owned());
                }
                if to == PaymentStatus::Reconciled {
                    let result = if signal == Signal::Refunded { "refunded" } else { "not_charged" };
                    self.metrics.refunds.with_label_values(&[result]).inc();
                }
                if signal == Signal::CancelRequested {
                    state.cancel_reason = Some(reason.to_owned());
                }
                state.status = Some(to);
                if to.outstanding_request().is_none() {
                    state.outstanding = None;
                    state.retry_timer = None;
                }
            }
            Decision::Absorbed(_) | Decision::Duplicate | Decision::Superseded | Decision::Illegal => {
                tracing::info!(payment_id = %id, signal = signal.label(), ?decision, "signal changes nothing");
                return Ok(decision);
            }
            Decision::Reforward(_) => {
                self.reforward(ctx, id, &state, ts)?;
                return Ok(decision);
            }
            Decision::KeepForLater => {
                if signal == Signal::CancelRequested {
                    state.early_cancel = Some(reason.into());
                } else {
                    state.early_callback = Some(EarlyCallback {
                        succeeded: signal == Signal::ProviderSucceeded,
                        description: reason.into(),
                    });
                }
                Self::save(ctx, id, &state)?;
                let timer =
                    (TimerKind::CallbackRetention, Self::timer_id(id, TimerKind::CallbackRetention, None));
                self.schedule(ctx, id, timer, self.settings.callback_retention, ts)?;
                return Ok(decision);
            }
            Decision::RetryLater | Decision::Reissue => {}
        }
        self.carry_out(ctx, id, &mut state, effects, reason, ts)?;
        Self::save(ctx, id, &state)?;
        Ok(decision)
    }

    /// Carries out `effects` (everything but the charge command, which `initiated` issues).
    fn carry_out(
        &self,
        ctx: &mut Ctx<'_>,
        id: Uuid,
        state: &mut Stored,
        effects: Effects,
        reason: &str,
        ts: i64,
    ) -> Result<(), ProcessError> {
        if let Some(status) = effects.result {
            self.publish(ctx, id, state, status, reason, ts)?;
        }
        let mut issued = None;
        if let Some(request) = effects.request {
            issued = Some(self.request(ctx, id, state, request, reason, ts)?);
        }
        if effects.reconcile {
            self.reconcile(ctx, id, state, issued, reason, ts)?;
        }
        if effects.retry_later {
            state.inconclusive = state.inconclusive.saturating_add(1);
            let delay = self.settings.verify_backoff(state.inconclusive);
            let timer_id = Self::timer_id(id, TimerKind::VerifyRetry, Some(state.inconclusive));
            state.retry_timer = Some(timer_id);
            if state.inconclusive == self.settings.verify_rounds_alert {
                self.metrics.verification_overdue.inc();
                tracing::error!(
                    payment_id = %id,
                    state = state.status.map(PaymentStatus::label),
                    answers = state.inconclusive,
                    "the provider has not decided this payment after the alert bound; the reservation is held and the saga keeps asking"
                );
            }
            self.schedule(ctx, id, (TimerKind::VerifyRetry, timer_id), delay, ts)?;
        }
        Ok(())
    }

    /// Publishes the payment's one result.
    fn publish(
        &self,
        ctx: &mut Ctx<'_>,
        id: Uuid,
        state: &mut Stored,
        status: PaymentResultStatus,
        reason: &str,
        ts: i64,
    ) -> Result<(), ProcessError> {
        let Some(payment) = &state.payment else {
            return Err(fatal(format!("payment {id} reached a result without being initiated")));
        };
        let reason = match (&state.uncertainty, status) {
            (_, PaymentResultStatus::Canceled) => format!(
                "cancelled by its owner ({}); the provider voided the charge ({reason})",
                state.cancel_reason.as_deref().unwrap_or("no reason given")
            ),
            (Some(uncertainty), PaymentResultStatus::Failed | PaymentResultStatus::FailedTimeout) => {
                format!("{uncertainty}; the provider holds no charge ({reason})")
            }
            _ => reason.to_owned(),
        };
        let result = PaymentResult {
            payment_result_id: PaymentResult::id_for(id, status),
            payment_id: id,
            wallet_id: payment.wallet_id,
            amount: Amount::from_minor(payment.amount_minor).map_err(fatal)?,
            status,
            reason,
            decided_at: Self::now(ctx),
        };
        state.published = Some(status.symbol().to_owned());
        state.published_reason = Some(result.reason.clone());
        state.published_at_ms = Some(result.decided_at.timestamp_millis());
        self.metrics.results.with_label_values(&[status.symbol()]).inc();
        if let Some(initiated_at_ms) = payment.initiated_at_ms {
            let elapsed_ms = result.decided_at.timestamp_millis().saturating_sub(initiated_at_ms).max(0);
            self.metrics
                .result_latency
                .with_label_values(&[status.symbol()])
                .observe(elapsed_ms as f64 / 1_000.0);
        }
        ctx.forward_to("results", self.traced(Record::new(id, SagaEvent::Result(result), ts)))
    }

    /// Forwards the payment's one result again, as it was published (same id, status, reason
    /// and decision time): its PaymentInitiated came again, e.g. an operator's nudge of a
    /// reservation whose result settlement never applied. Where it was applied, settlement
    /// finds the id on the row and changes nothing. Not counted as a new result.
    fn reforward(&self, ctx: &mut Ctx<'_>, id: Uuid, state: &Stored, ts: i64) -> Result<(), ProcessError> {
        let status = PaymentResultStatus::from_symbol(state.published.as_deref().unwrap_or_default());
        let Some(payment) = state.payment.as_ref().filter(|_| status != PaymentResultStatus::Unknown) else {
            return Err(fatal(format!(
                "payment {id} has a result state but no published result to re-forward"
            )));
        };
        let decided_at = state
            .published_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or_else(|| Self::now(ctx));
        let reason = state.published_reason.clone().unwrap_or_else(|| {
            "re-forwarded on a repeated PaymentInitiated (the original reason predates its keeping)"
                .to_owned()
        });
        let result = PaymentResult {
            payment_result_id: PaymentResult::id_for(id, status),
            payment_id: id,
            wallet_id: payment.wallet_id,
            amount: Amount::from_minor(payment.amount_minor).map_err(fatal)?,
            status,
            reason,
            decided_at,
        };
        tracing::info!(payment_id = %id, status = status.symbol(), payment_result_id = %result.payment_result_id, "payment initiated again after its result: the result is forwarded again");
        ctx.forward_to("results", self.traced(Record::new(id, SagaEvent::Result(result), ts)))
    }

    /// Issues `request` with a new id and waits for its answer; returns the id.
    fn request(
        &self,
        ctx: &mut Ctx<'_>,
        id: Uuid,
        state: &mut Stored,
        request: Request,
        reason: &str,
        ts: i64,
    ) -> Result<Uuid, ProcessError> {
        let request_id = request_id(id, state.requests_issued);
        state.requests_issued = state.requests_issued.saturating_add(1);
        state.outstanding = Some(request_id);
        state.retry_timer = None;
        let why = state.uncertainty.clone().unwrap_or_else(|| reason.to_owned());
        let action = match request {
            Request::Status => ProviderAction::StatusQuery { reason: why },
            Request::Void => ProviderAction::Void { reason: why },
            Request::Refund => {
                let Some(payment) = &state.payment else {
                    return Err(fatal(format!("payment {id} is refunded without being initiated")));
                };
                ProviderAction::Refund {
                    amount: Amount::from_minor(payment.amount_minor).map_err(fatal)?,
                    currency: payment.currency.clone(),
                    reason: format!("charged after the payment failed: {reason}"),
                }
            }
        };
        self.metrics.provider_requests.with_label_values(&[action.label()]).inc();
        let request = ProviderRequest { request_id, payment_id: id, action, issued_at: Self::now(ctx) };
        ctx.forward_to("requests", self.traced(Record::new(id, SagaEvent::Request(request), ts)))?;
        Ok(request_id)
    }

    /// Publishes the reconciliation event of a charge the provider made after the failure.
    fn reconcile(
        &self,
        ctx: &mut Ctx<'_>,
        id: Uuid,
        state: &Stored,
        refund: Option<Uuid>,
        evidence: &str,
        ts: i64,
    ) -> Result<(), ProcessError> {
        let Some(payment) = &state.payment else {
            return Err(fatal(format!("payment {id} is reconciled without being initiated")));
        };
        let discrepancy = Discrepancy::ChargedAfterFailure;
        let event = ReconciliationEvent {
            event_id: ReconciliationEvent::id_for(id, discrepancy),
            payment_id: id,
            wallet_id: payment.wallet_id,
            amount: Amount::from_minor(payment.amount_minor).map_err(fatal)?,
            currency: payment.currency.clone(),
            discrepancy,
            remedy: Remedy::RefundRequested,
            published_status: PaymentResultStatus::from_symbol(
                state.published.as_deref().unwrap_or_default(),
            ),
            refund_request_id: refund,
            evidence: evidence.to_owned(),
            detected_at: Self::now(ctx),
        };
        self.metrics.reconciliations.with_label_values(&[discrepancy.symbol()]).inc();
        tracing::error!(
            payment_id = %id,
            published = state.published.as_deref().unwrap_or_default(),
            evidence,
            "the provider charged a payment that had failed: refund requested, reconciliation event published"
        );
        ctx.forward_to("reconciliation", self.traced(Record::new(id, SagaEvent::Reconciliation(event), ts)))
    }

    fn initiated(&self, ctx: &mut Ctx<'_>, p: PaymentInitiated, ts: i64) -> Result<(), ProcessError> {
        let id = p.payment_id;
        let mut state = Self::load(ctx, id)?;
        if next(state.status, Signal::Initiated) != Decision::Transition(PaymentStatus::New) {
            self.apply(ctx, id, state, Signal::Initiated, "", ts)?;
            return Ok(());
        }
        state.payment = Some(Payment {
            wallet_id: p.wallet_id,
            amount_minor: p.amount.minor(),
            currency: p.currency.clone(),
            description: p.description.clone(),
            initiated_at_ms: Some(p.initiated_at.timestamp_millis()),
        });
        let early = state.early_callback.take();
        let early_cancel = state.early_cancel.take();
        self.apply(ctx, id, state, Signal::Initiated, "", ts)?;
        let command = ChargeCommand {
            command_id: charge_command_id(id),
            payment_id: id,
            wallet_id: p.wallet_id,
            amount: p.amount,
            currency: p.currency,
            description: p.description,
            issued_at: Self::now(ctx),
            not_after: Some(Self::after(ctx, self.settings.charge_deadline)?),
        };
        ctx.forward_to("commands", self.traced(Record::new(id, SagaEvent::Charge(command), ts)))?;
        let timer = (TimerKind::PaymentTimeout, Self::timer_id(id, TimerKind::PaymentTimeout, None));
        self.schedule(ctx, id, timer, self.settings.payment_timeout, ts)?;
        if let Some(early) = early {
            let signal = if early.succeeded { Signal::ProviderSucceeded } else { Signal::ProviderFailed };
            let state = Self::load(ctx, id)?;
            self.apply(ctx, id, state, signal, &early.description, ts)?;
        }
        // After the callback: the provider's verdict decides first, as it would have live.
        if let Some(reason) = early_cancel {
            let state = Self::load(ctx, id)?;
            self.apply(ctx, id, state, Signal::CancelRequested, &reason, ts)?;
        }
        Ok(())
    }

    /// A dispatch outcome: the charge's (idempotent in the table) or a provider request's answer
    /// (accepted only for the request outstanding).
    fn outcome(&self, ctx: &mut Ctx<'_>, id: Uuid, o: DispatchOutcome, ts: i64) -> Result<(), ProcessError> {
        let mut state = Self::load(ctx, id)?;
        let signal = match o.outcome {
            DispatchResult::Unknown => return Err(ProcessError::poison("dispatch outcome UNKNOWN")),
            DispatchResult::Accepted => Signal::DispatchAccepted,
            // A refusal of the first attempt is the provider's answer to this very charge; after
            // earlier attempts, one of them may have been taken (a timeout after the provider
            // took it, then a refusal of the retry).
            DispatchResult::Rejected if o.attempts <= 1 => Signal::DispatchRejected,
            DispatchResult::Rejected | DispatchResult::RetriesExhausted => Signal::DispatchUncertain,
            DispatchResult::Expired if o.attempts <= 0 => Signal::DispatchExpired,
            DispatchResult::Expired => Signal::DispatchUncertain,
            answer => {
                if state.outstanding != Some(o.command_id) {
                    self.metrics.signals.with_label_values(&[answer.symbol(), "stale"]).inc();
                    tracing::info!(payment_id = %id, request_id = %o.command_id, answer = answer.symbol(), "an answer to a request no longer outstanding; ignored");
                    return Ok(());
                }
                state.outstanding = None;
                match answer {
                    DispatchResult::Charged => Signal::Charged,
                    DispatchResult::NotCharged => Signal::NotCharged,
                    DispatchResult::Voided => Signal::Voided,
                    DispatchResult::Refunded => Signal::Refunded,
                    _ => Signal::Inconclusive,
                }
            }
        };
        let consumed_answer = !o.outcome.answers_a_charge();
        let decision = self.apply(ctx, id, state.clone(), signal, &o.detail, ts)?;
        if consumed_answer && !saves(decision) {
            // The answer is no longer outstanding, although it changed nothing else.
            Self::save(ctx, id, &state)?;
        }
        Ok(())
    }

    fn timer(&self, ctx: &mut Ctx<'_>, id: Uuid, t: TimerEvent, ts: i64) -> Result<(), ProcessError> {
        match (t.change, t.kind) {
            // Our own schedules come back on the same topic: the timer processor's business.
            (TimerChange::Scheduled { .. }, _) => Ok(()),
            (TimerChange::Fired { .. }, TimerKind::PaymentTimeout) => {
                let state = Self::load(ctx, id)?;
                self.apply(ctx, id, state, Signal::TimerFired, "no verdict from the provider in time", ts)?;
                Ok(())
            }
            (TimerChange::Fired { .. }, TimerKind::VerifyRetry) => {
                let mut state = Self::load(ctx, id)?;
                if state.retry_timer != Some(t.timer_id) {
                    self.metrics.signals.with_label_values(&[Signal::RetryDue.label(), "stale"]).inc();
                    return Ok(());
                }
                state.retry_timer = None;
                let decision =
                    self.apply(ctx, id, state.clone(), Signal::RetryDue, "asking the provider again", ts)?;
                if !saves(decision) {
                    Self::save(ctx, id, &state)?;
                }
                Ok(())
            }
            (TimerChange::Fired { .. }, TimerKind::CallbackRetention) => {
                let state = Self::load(ctx, id)?;
                if state.status.is_none() {
                    if let Some(early) = &state.early_callback {
                        let status = if early.succeeded { "SUCCEEDED" } else { "FAILED" };
                        self.metrics.expired_callbacks.with_label_values(&[status]).inc();
                        tracing::warn!(payment_id = %id, "a callback's payment never appeared; dropped");
                    }
                    if state.early_cancel.is_some() {
                        self.metrics.expired_callbacks.with_label_values(&["CANCEL"]).inc();
                        tracing::warn!(payment_id = %id, "a cancel's payment never appeared; dropped");
                    }
                    if state.early_callback.is_some() || state.early_cancel.is_some() {
                        ctx.store(STORE)?.delete(id.as_bytes())?;
                    }
                }
                Ok(())
            }
            (TimerChange::Fired { .. }, TimerKind::Unknown) => {
                Err(ProcessError::poison("timer of an unknown kind"))
            }
        }
    }
}

impl Processor<Uuid, SagaEvent> for Saga {
    fn process(&mut self, record: Record<Uuid, SagaEvent>, ctx: &mut Ctx<'_>) -> Result<(), ProcessError> {
        let span = record_span("saga", &record, ctx);
        let _entered = span.enter();
        self.traceparent = trace::outgoing(record.header(trace::TRACEPARENT));
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
                self.apply(ctx, id, state, signal, &c.description, ts)?;
                Ok(())
            }
            SagaEvent::Outcome(o) => self.outcome(ctx, id, o, ts),
            SagaEvent::Timer(t) => self.timer(ctx, id, t, ts),
            SagaEvent::CancelRequested(c) => {
                let state = Self::load(ctx, id)?;
                let reason = if c.reason.is_empty() { "no reason given" } else { c.reason.as_str() };
                self.apply(ctx, id, state, Signal::CancelRequested, reason, ts)?;
                Ok(())
            }
            SagaEvent::Charge(_)
            | SagaEvent::Request(_)
            | SagaEvent::Result(_)
            | SagaEvent::Reconciliation(_) => Err(ProcessError::poison("an output event on an input topic")),
        }
    }
}

/// One payment, one trace (`paystream_stack::trace`): the span of each record the saga processes,
/// and the `traceparent` of what it sends on.
impl Saga {
    /// `record` with the current record's `traceparent` (the saga span's, or the input's when
    /// traces are not exported): commands, requests, results and timers continue the trace.
    fn traced<V>(&self, record: Record<Uuid, V>) -> Record<Uuid, V> {
        match &self.traceparent {
            Some(traceparent) => record.with_header(trace::TRACEPARENT, traceparent.as_bytes()),
            None => record,
        }
    }
}

/// The span of `processor`'s work on `record` (`saga`, `timers`), a child of the trace its headers carry.
pub(super) fn record_span(processor: &str, record: &Record<Uuid, SagaEvent>, ctx: &Ctx<'_>) -> tracing::Span {
    let parent = trace::parent_from_pairs(record.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    let (topic, partition, offset) = ctx
        .record_metadata()
        .map_or(("", ctx.partition(), -1), |m| (m.topic.as_str(), m.partition, m.offset));
    trace::record_span(processor, topic, partition, offset, &record.key.to_string(), parent)
}

/// Whether [`Saga::apply`] writes the payment's state for `decision`.
fn saves(decision: Decision) -> bool {
    matches!(
        decision,
        Decision::Transition(_) | Decision::RetryLater | Decision::Reissue | Decision::KeepForLater
    )
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
        .add_source(
            "cancel-requests",
            &[&topics.cancel_requests],
            deserializer(codec.clone(), Input::CancelRequested),
        )
        .add_processor(
            "saga",
            move || Saga { settings: settings.clone(), metrics: metrics.clone(), traceparent: None },
            &["initiated", "callbacks", "outcomes", "timer-events", "cancel-requests"],
        )
        .add_state_store(StoreSpec::persistent(STORE), &["saga"])
        .add_sink("commands", &topics.commands, serializer(codec.clone()), &["saga"])
        .add_sink("requests", &topics.requests, serializer(codec.clone()), &["saga"])
        .add_sink("timers", &topics.timers, serializer(codec.clone()), &["saga"])
        .add_sink("results", &topics.results, serializer(codec.clone()), &["saga"])
        .add_sink("reconciliation", &topics.reconciliation, serializer(codec), &["saga"]);
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
        let event = codec.decode(input, bytes)?;
        // The store is keyed by the record's key: an event filed under another payment would
        // act on that payment (a charge with no reservation behind it). Poison, never applied.
        let payment_id = event.payment_id();
        if payment_id != id {
            return Err(format!("the record's key {id} is not its event's paymentId {payment_id}").into());
        }
        Ok((id, event))
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
            Input::CancelRequested => SagaEvent::CancelRequested(Self::read(bytes)?),
        })
    }

    fn encode(&self, event: &SagaEvent) -> Result<Vec<u8>, BoxError> {
        match event {
            SagaEvent::Initiated(e) => Self::write(e),
            SagaEvent::Callback(e) => Self::write(e),
            SagaEvent::Outcome(e) => Self::write(e),
            SagaEvent::Timer(e) => Self::write(e),
            SagaEvent::CancelRequested(e) => Self::write(e),
            SagaEvent::Charge(e) => Self::write(e),
            SagaEvent::Request(e) => Self::write(e),
            SagaEvent::Result(e) => Self::write(e),
            SagaEvent::Reconciliation(e) => Self::write(e),
        }
    }
}
