//! What one input event says about its payment: a [`Fact`].
//!
//! A fact carries everything the view needs from its event and nothing else, so a payment's
//! store entry stays small: the id the view deduplicates by, the event's own time, its timeline
//! entry (kind and detail), the trace id from its `traceparent` header, and its [`Effect`].
//!
//! The ids are stable across replays and redeliveries: the event's own id where it has one, a
//! UUIDv5 of what identifies it where it has none (a dispatch outcome is its command and answer;
//! a fired timer is its timer). A `PaymentInitiated` is one fact per payment whatever its event
//! id, because an operator's nudge of a stranded reservation publishes it again with a new one.

use paystream_schemas::events::{
    DispatchOutcome, DispatchResult, PaymentInitiated, PaymentResult, PaymentResultStatus, ProviderAction,
    ProviderCallbackReceived, ProviderRequest, ReconciliationEvent, TimerChange, TimerEvent,
};
use paystream_schemas::time::{to_micros, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of the ids of facts whose event has no id of its own (UUIDv5).
const FACT_NAMESPACE: Uuid = Uuid::from_u128(0x7a3e_c915_2f48_4d6b_9e07_b1c2_58d4_f360);

/// An event on one of the view's inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum InputEvent {
    /// payments.initiated.
    Initiated(PaymentInitiated),
    /// payments.dispatch-outcomes: a charge's outcome or a provider request's answer.
    Outcome(DispatchOutcome),
    /// payments.callbacks.
    Callback(ProviderCallbackReceived),
    /// payments.timers (only fired timers are facts; schedules are the saga's plans).
    Timer(TimerEvent),
    /// payments.provider-requests: the saga's status queries, voids and refunds.
    Request(ProviderRequest),
    /// payments.reconciliation.
    Reconciliation(ReconciliationEvent),
    /// payments.results.
    Result(PaymentResult),
}

impl InputEvent {
    /// The payment the event is about.
    pub fn payment_id(&self) -> Uuid {
        match self {
            InputEvent::Initiated(e) => e.payment_id,
            InputEvent::Outcome(e) => e.payment_id,
            InputEvent::Callback(e) => e.payment_id,
            InputEvent::Timer(e) => e.payment_id,
            InputEvent::Request(e) => e.payment_id,
            InputEvent::Reconciliation(e) => e.payment_id,
            InputEvent::Result(e) => e.payment_id,
        }
    }
}

/// The kind of a timeline entry (`PaymentTimelineEvent.kind`). The order of the variants is the
/// tie-break of two entries with the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimelineKind {
    Initiated,
    Dispatched,
    Callback,
    Timer,
    ProviderAnswer,
    Reconciliation,
    Result,
}

impl TimelineKind {
    /// The contract's string.
    pub fn label(self) -> &'static str {
        match self {
            TimelineKind::Initiated => "INITIATED",
            TimelineKind::Dispatched => "DISPATCHED",
            TimelineKind::Callback => "CALLBACK",
            TimelineKind::Timer => "TIMER",
            TimelineKind::ProviderAnswer => "PROVIDER_ANSWER",
            TimelineKind::Reconciliation => "RECONCILIATION",
            TimelineKind::Result => "RESULT",
        }
    }
}

/// What the saga asked the provider (a `ProviderRequest`'s action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestAction {
    /// A status query: the saga is VERIFYING.
    Status,
    /// A void: the saga is VOIDING.
    Void,
    /// A refund of a charge after a failure: the saga is REFUNDING.
    Refund,
}

/// What a fact does to the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// The payment's details (`PaymentInitiated`): the payment is at least NEW.
    Initiated {
        wallet_id: Uuid,
        amount_minor: i64,
        currency: String,
        kind: String,
        description: String,
        initiated_at_micros: i64,
    },
    /// A charge's outcome (`ACCEPTED` makes the payment SENT) or a provider request's answer
    /// (`REFUNDED`, or `NOT_CHARGED` to a refund, makes it RECONCILED); `outcome` is the
    /// `DispatchResult` symbol.
    Outcome { command_id: Uuid, outcome: String, detail: String },
    /// The saga asked the provider: VERIFYING, VOIDING or REFUNDING.
    Request { request_id: Uuid, action: RequestAction, reason: String },
    /// The saga compensated a charge after a failure: REFUNDING.
    Reconciliation {
        wallet_id: Uuid,
        amount_minor: i64,
        currency: String,
        refund_request_id: Option<Uuid>,
        evidence: String,
    },
    /// The payment's one result: COMPLETED, FAILED, FAILED_TIMEOUT (or a status added later).
    Result { result_id: Uuid, status: String, reason: String, wallet_id: Uuid, amount_minor: i64 },
    /// Only on the timeline (a callback, a fired timer): the saga's answer to it is what changes
    /// the status.
    Timeline,
}

/// One applied event of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// Deduplication key, stable across redeliveries and replays.
    pub id: Uuid,
    /// The event's own time (not when it was read), in µs since the epoch.
    pub at_micros: i64,
    /// Its timeline entry's kind; `None` for a provider request, which the timeline shows
    /// through its answer.
    pub timeline: Option<TimelineKind>,
    /// Its timeline entry's text, for people.
    pub detail: String,
    /// The W3C trace id of its `traceparent` header, if it had one.
    pub trace_id: Option<String>,
    /// What it does to the view.
    pub effect: Effect,
}

/// Why an event cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactError {
    /// A result whose status this build does not know (a newer writer's symbol, read as
    /// UNKNOWN): showing it would misinform, so it is dead-lettered and a newer build's rebuild
    /// shows it.
    #[error("a PaymentResult with a status this build does not know")]
    UnknownResultStatus,
}

impl Fact {
    /// The fact of `event`, whose record carried `trace_id`; `None` for an event that says
    /// nothing about the payment (a timer being scheduled).
    pub fn of(event: &InputEvent, trace_id: Option<String>) -> Result<Option<Fact>, FactError> {
        let fact = |id, at: Timestamp, timeline, detail: String, effect| Fact {
            id,
            at_micros: to_micros(at),
            timeline,
            detail,
            trace_id: trace_id.clone(),
            effect,
        };
        Ok(Some(match event {
            InputEvent::Initiated(e) => fact(
                derived_id(e.payment_id, "initiated"),
                e.initiated_at,
                Some(TimelineKind::Initiated),
                format!(
                    "{} {} from wallet {}: {} \"{}\"",
                    e.amount, e.currency, e.wallet_id, e.kind, e.description
                ),
                Effect::Initiated {
                    wallet_id: e.wallet_id,
                    amount_minor: e.amount.minor(),
                    currency: e.currency.clone(),
                    kind: e.kind.clone(),
                    description: e.description.clone(),
                    initiated_at_micros: to_micros(e.initiated_at),
                },
            ),
            InputEvent::Outcome(e) => {
                let (timeline, detail) = match e.outcome.answers_a_charge() {
                    true => (
                        TimelineKind::Dispatched,
                        format!("{} after {} attempt(s): {}", e.outcome.symbol(), e.attempts, e.detail),
                    ),
                    false => (TimelineKind::ProviderAnswer, format!("{}: {}", e.outcome.symbol(), e.detail)),
                };
                fact(
                    derived_id(e.command_id, e.outcome.symbol()),
                    e.decided_at,
                    Some(timeline),
                    detail,
                    Effect::Outcome {
                        command_id: e.command_id,
                        outcome: e.outcome.symbol().to_owned(),
                        detail: e.detail.clone(),
                    },
                )
            }
            InputEvent::Callback(e) => fact(
                e.event_id,
                e.received_at,
                Some(TimelineKind::Callback),
                format!("{}: {}", e.status.symbol(), e.description),
                Effect::Timeline,
            ),
            InputEvent::Timer(e) => match e.change {
                TimerChange::Scheduled { .. } => return Ok(None),
                TimerChange::Fired { fired_at } => fact(
                    derived_id(e.timer_id, "fired"),
                    fired_at,
                    Some(TimelineKind::Timer),
                    format!("{} fired (due {})", e.kind.symbol(), e.due_at.to_rfc3339()),
                    Effect::Timeline,
                ),
            },
            InputEvent::Request(e) => {
                let (action, reason) = match &e.action {
                    ProviderAction::StatusQuery { reason } => (RequestAction::Status, reason),
                    ProviderAction::Void { reason } => (RequestAction::Void, reason),
                    ProviderAction::Refund { reason, .. } => (RequestAction::Refund, reason),
                };
                fact(
                    e.request_id,
                    e.issued_at,
                    None,
                    format!("{}: {reason}", e.action.label()),
                    Effect::Request { request_id: e.request_id, action, reason: reason.clone() },
                )
            }
            InputEvent::Reconciliation(e) => fact(
                e.event_id,
                e.detected_at,
                Some(TimelineKind::Reconciliation),
                format!("{}, {}: {}", e.discrepancy.symbol(), e.remedy.symbol(), e.evidence),
                Effect::Reconciliation {
                    wallet_id: e.wallet_id,
                    amount_minor: e.amount.minor(),
                    currency: e.currency.clone(),
                    refund_request_id: e.refund_request_id,
                    evidence: e.evidence.clone(),
                },
            ),
            InputEvent::Result(e) => {
                if e.status == PaymentResultStatus::Unknown {
                    return Err(FactError::UnknownResultStatus);
                }
                fact(
                    e.payment_result_id,
                    e.decided_at,
                    Some(TimelineKind::Result),
                    format!("{}: {}", e.status.symbol(), e.reason),
                    Effect::Result {
                        result_id: e.payment_result_id,
                        status: e.status.symbol().to_owned(),
                        reason: e.reason.clone(),
                        wallet_id: e.wallet_id,
                        amount_minor: e.amount.minor(),
                    },
                )
            }
        }))
    }

    /// Whether the fact only repeats what the payment's facts already say, so that past the
    /// per-payment bound it may be left out without changing the view's status: an inconclusive
    /// answer (PENDING, UNANSWERED), a fired timer, a request of an action already asked.
    pub fn is_routine(&self, applied: &[Fact]) -> bool {
        match &self.effect {
            Effect::Outcome { outcome, .. } => matches!(
                DispatchResult::from_symbol(outcome),
                DispatchResult::Pending | DispatchResult::Unanswered
            ),
            Effect::Timeline => self.timeline == Some(TimelineKind::Timer),
            Effect::Request { action, .. } => {
                applied.iter().any(|f| matches!(&f.effect, Effect::Request { action: a, .. } if a == action))
            }
            _ => false,
        }
    }
}

/// The id of a fact whose event has none: UUIDv5 of what identifies it.
fn derived_id(of: Uuid, what: &str) -> Uuid {
    Uuid::new_v5(&FACT_NAMESPACE, format!("{of}/{what}").as_bytes())
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex trace id>-<16 hex span id>-<flags>`);
/// `None` for a missing or malformed header, or the all-zero id the standard calls invalid.
pub fn trace_id(traceparent: Option<&[u8]>) -> Option<String> {
    let text = std::str::from_utf8(traceparent?).ok()?;
    let mut parts = text.trim().split('-');
    let (_version, trace, _span) = (parts.next()?, parts.next()?, parts.next()?);
    let valid = trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_is_read_from_a_valid_traceparent_only() {
        let header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(Some(header)).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id(None), None);
        assert_eq!(trace_id(Some(b"garbage")), None);
        assert_eq!(trace_id(Some(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")), None);
        assert_eq!(trace_id(Some(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")), None);
    }
}
