//! The fold: a payment's applied [`Fact`]s → its `PaymentView` and its timeline. Pure, so the
//! property test drives exactly the logic the processor runs.
//!
//! The state is the *set* of facts applied (sorted by id, which is also the deduplication set),
//! and the view is derived from the whole set each time, never updated in place: adding facts
//! in any order gives the same set, so the same view. That is what makes the projection
//! order-tolerant (a result before its `PaymentInitiated`, a provider's answer before the request
//! it answers) and idempotent (a duplicate is already in the set; a replay adds nothing).
//!
//! **Status.** Every fact that tells where the saga is names a status with a rank, in the order
//! the saga moves (`processors/src/saga/state.rs`):
//!
//! | rank | status | told by |
//! |---|---|---|
//! | 1 | NEW | `PaymentInitiated` |
//! | 2 | SENT | a `DispatchOutcome` ACCEPTED (the provider took the charge) |
//! | 3 | VERIFYING | a `ProviderRequest` status query (the outcome is uncertain) |
//! | 4 | VOIDING | a `ProviderRequest` void (the provider holds no charge; making sure it never will) |
//! | 5 | COMPLETED, FAILED, FAILED_TIMEOUT, … | the `PaymentResult` |
//! | 6 | REFUNDING | a `ProviderRequest` refund, or the `ReconciliationEvent` (charged after a failure) |
//! | 7 | RECONCILED | the refund's answer: REFUNDED, or NOT_CHARGED to the refund request |
//!
//! The view shows the highest rank present (ties: the later fact, then the larger id). The saga
//! never moves down this order, so the highest rank is its latest state, and a terminal status
//! can never regress: a fact of a lower rank arriving late cannot outrank it.
//!
//! **Timeline.** The facts that have a timeline entry, ordered by their own time (ties: kind,
//! then id), numbered 1, 2, 3, …: `seq` is a function of the set too, so a replay, a rebuild
//! and a redelivery give every event the same seq. A fact that sorts before facts already
//! published shifts them; [`changed`] names the entries to publish again, and the read
//! database's upsert by (paymentId, seq) converges to the ordered timeline.

use paystream_schemas::events::{DispatchResult, PaymentTimelineEvent, PaymentView};
use paystream_schemas::money::Amount;
use paystream_schemas::time::{from_micros, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::fact::{Effect, Fact, RequestAction};

/// The most facts kept per payment. A payment the provider never decides is asked again and
/// again (an answer and a retry timer a minute each, and the saga alerts after ten); past this
/// bound such routine facts are left out ([`Fact::is_routine`]) so that one stuck payment cannot
/// grow its store entry without limit. About 200 bytes a fact: at most ~200 KB per payment.
pub const FACTS_PER_PAYMENT_MAX: usize = 1_000;

/// A payment's applied facts: the store entry of the view. New fields get serde defaults, so
/// entries written by an older build (and its changelog) still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViewState {
    /// Sorted by id, without duplicates.
    facts: Vec<Fact>,
}

/// What to do with a fact, given a payment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new fact: fold it.
    Apply,
    /// Already applied (a redelivery, a replay, the same result forwarded again).
    Duplicate,
    /// Past [`FACTS_PER_PAYMENT_MAX`], a routine fact: left out (counted).
    OverBound,
}

impl Admission {
    /// A stable name for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Admission::Apply => "applied",
            Admission::Duplicate => "duplicate",
            Admission::OverBound => "over_bound",
        }
    }
}

impl ViewState {
    /// The applied facts, sorted by id.
    pub fn facts(&self) -> &[Fact] {
        &self.facts
    }

    /// Whether a fact with `id` is applied.
    pub fn contains(&self, id: Uuid) -> bool {
        self.facts.binary_search_by_key(&id, |f| f.id).is_ok()
    }

    /// Whether `fact` should be folded in.
    pub fn admit(&self, fact: &Fact) -> Admission {
        if self.contains(fact.id) {
            Admission::Duplicate
        } else if self.facts.len() >= FACTS_PER_PAYMENT_MAX && fact.is_routine(&self.facts) {
            Admission::OverBound
        } else {
            Admission::Apply
        }
    }
}

/// `state` with `fact` applied; the same state if it is applied already.
pub fn fold(mut state: ViewState, fact: Fact) -> ViewState {
    if let Err(at) = state.facts.binary_search_by_key(&fact.id, |f| f.id) {
        state.facts.insert(at, fact);
    }
    state
}

/// Ranks of the statuses (see the module's table).
mod rank {
    pub const NONE: u8 = 0;
    pub const NEW: u8 = 1;
    pub const SENT: u8 = 2;
    pub const VERIFYING: u8 = 3;
    pub const VOIDING: u8 = 4;
    pub const RESULT: u8 = 5;
    pub const REFUNDING: u8 = 6;
    pub const RECONCILED: u8 = 7;
}

/// A status one fact tells, and the key it competes with.
struct Candidate<'a> {
    rank: u8,
    at_micros: i64,
    id: Uuid,
    status: &'a str,
    reason: Option<String>,
}

/// The status `fact` tells, if any; `refunds` are the ids of the refund requests.
fn candidate<'a>(fact: &'a Fact, refunds: &[Uuid]) -> Option<Candidate<'a>> {
    let (rank, status, reason) = match &fact.effect {
        Effect::Initiated { .. } => (rank::NEW, "NEW", None),
        Effect::Outcome { command_id, outcome, detail } => match DispatchResult::from_symbol(outcome) {
            DispatchResult::Accepted => (rank::SENT, "SENT", None),
            DispatchResult::Refunded => (rank::RECONCILED, "RECONCILED", Some(format!("refunded: {detail}"))),
            DispatchResult::NotCharged if refunds.contains(command_id) => {
                (rank::RECONCILED, "RECONCILED", Some(format!("nothing to refund: {detail}")))
            }
            _ => return None,
        },
        Effect::Request { action, reason, .. } => match action {
            RequestAction::Status => (rank::VERIFYING, "VERIFYING", Some(reason.clone())),
            RequestAction::Void => (rank::VOIDING, "VOIDING", Some(reason.clone())),
            RequestAction::Refund => (rank::REFUNDING, "REFUNDING", Some(reason.clone())),
        },
        Effect::Reconciliation { evidence, .. } => {
            (rank::REFUNDING, "REFUNDING", Some(format!("charged after the payment failed: {evidence}")))
        }
        Effect::Result { status, reason, .. } => (rank::RESULT, status.as_str(), Some(reason.clone())),
        Effect::Timeline => return None,
    };
    Some(Candidate { rank, at_micros: fact.at_micros, id: fact.id, status, reason })
}

/// The later of two facts by their own time, then by id: how ties are broken, deterministically.
fn later<'a>(a: &'a Fact, b: &'a Fact) -> &'a Fact {
    if (b.at_micros, b.id) > (a.at_micros, a.id) {
        b
    } else {
        a
    }
}

/// The payment's view, derived from all its facts; `None` before any fact.
pub fn view(state: &ViewState, payment_id: Uuid) -> Option<PaymentView> {
    let facts = &state.facts;
    let updated_at_micros = facts.iter().map(|f| f.at_micros).max()?;
    let refunds: Vec<Uuid> = facts
        .iter()
        .filter_map(|f| match &f.effect {
            Effect::Request { request_id, action: RequestAction::Refund, .. } => Some(*request_id),
            Effect::Reconciliation { refund_request_id, .. } => *refund_request_id,
            _ => None,
        })
        .collect();
    let status = facts
        .iter()
        .filter_map(|f| candidate(f, &refunds))
        .max_by_key(|c| (c.rank, c.at_micros, c.id))
        .unwrap_or(Candidate {
            rank: rank::NONE,
            at_micros: 0,
            id: Uuid::nil(),
            status: "NEW",
            reason: None,
        });

    let initiated = facts.iter().find(|f| matches!(f.effect, Effect::Initiated { .. }));
    let result = facts.iter().filter(|f| matches!(f.effect, Effect::Result { .. })).reduce(later);
    let reconciliation =
        facts.iter().filter(|f| matches!(f.effect, Effect::Reconciliation { .. })).reduce(later);
    // The payment's details come from PaymentInitiated; until it is applied, the result and the
    // reconciliation event carry the wallet and the amount (and the latter the currency).
    let (mut wallet_id, mut amount_minor, mut currency) = (None, None, None);
    for fact in [reconciliation, result, initiated].into_iter().flatten() {
        match &fact.effect {
            Effect::Initiated { wallet_id: w, amount_minor: a, currency: c, .. }
            | Effect::Reconciliation { wallet_id: w, amount_minor: a, currency: c, .. } => {
                (wallet_id, amount_minor, currency) = (Some(*w), Some(*a), Some(c.clone()));
            }
            Effect::Result { wallet_id: w, amount_minor: a, .. } => {
                (wallet_id, amount_minor) = (Some(*w), Some(*a));
            }
            _ => {}
        }
    }
    let (kind, description, created_at) = match initiated.map(|f| &f.effect) {
        Some(Effect::Initiated { kind, description, initiated_at_micros, .. }) => {
            (Some(kind.clone()), Some(description.clone()), timestamp(*initiated_at_micros))
        }
        _ => (None, None, None),
    };
    let result_id = result.and_then(|f| match &f.effect {
        Effect::Result { result_id, .. } => Some(*result_id),
        _ => None,
    });
    // The payment's trace is the one its PaymentInitiated started; before that, the earliest
    // event's that carried one.
    let trace_id = initiated
        .and_then(|f| f.trace_id.clone())
        .or_else(|| ordered(facts).into_iter().find_map(|f| f.trace_id.clone()));
    Some(PaymentView {
        payment_id,
        wallet_id,
        // Amounts were valid when their events were decoded; an invalid one is left out rather
        // than shown wrong.
        amount: amount_minor.and_then(|minor| Amount::from_minor(minor).ok()),
        currency,
        kind,
        description,
        status: status.status.to_owned(),
        reason: status.reason.or_else(|| match result.map(|f| &f.effect) {
            Some(Effect::Result { reason, .. }) => Some(reason.clone()),
            _ => None,
        }),
        created_at,
        updated_at: timestamp(updated_at_micros).unwrap_or_default(),
        // At most FACTS_PER_PAYMENT_MAX (plus the non-routine facts past it): far below i64::MAX.
        version: i64::try_from(facts.len()).unwrap_or(i64::MAX),
        result_id,
        trace_id,
    })
}

/// Facts in timeline order: their own time, then kind, then id.
fn ordered(facts: &[Fact]) -> Vec<&Fact> {
    let mut ordered: Vec<&Fact> = facts.iter().collect();
    ordered.sort_by_key(|f| (f.at_micros, f.timeline, f.id));
    ordered
}

/// The payment's timeline: its facts with a timeline entry, in timeline order, numbered from 1.
pub fn timeline(state: &ViewState, payment_id: Uuid) -> Vec<PaymentTimelineEvent> {
    ordered(&state.facts)
        .into_iter()
        .filter_map(|f| f.timeline.map(|kind| (f, kind)))
        .zip(1..)
        .map(|((fact, kind), seq)| PaymentTimelineEvent {
            payment_id,
            seq,
            kind: kind.label().to_owned(),
            detail: fact.detail.clone(),
            at: timestamp(fact.at_micros).unwrap_or_default(),
            trace_id: fact.trace_id.clone(),
        })
        .collect()
}

/// The entries of `after` to publish when the timeline was `before`: from the first that differs
/// to the end (a new entry, and the entries it moved).
pub fn changed<'a>(
    before: &[PaymentTimelineEvent],
    after: &'a [PaymentTimelineEvent],
) -> &'a [PaymentTimelineEvent] {
    let same = before.iter().zip(after).take_while(|(b, a)| b == a).count();
    &after[same..]
}

fn timestamp(micros: i64) -> Option<Timestamp> {
    from_micros(micros)
}

#[cfg(test)]
mod tests {
    use paystream_schemas::events::{Discrepancy, Remedy};
    use paystream_schemas::events::{
        DispatchOutcome, PaymentInitiated, PaymentResult, PaymentResultStatus, ProviderAction,
        ProviderCallbackReceived, ProviderRequest, ProviderStatus, ReconciliationEvent, TimerChange,
        TimerEvent, TimerKind,
    };
    use proptest::prelude::*;

    use super::super::fact::InputEvent;
    use super::*;

    const PAYMENT: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
    const WALLET: Uuid = Uuid::from_u128(0xaaaa);

    fn at(second: i64) -> Timestamp {
        from_micros(1_800_000_000_000_000 + second * 1_000_000).unwrap()
    }

    fn fact(event: InputEvent) -> Fact {
        Fact::of(&event, Some(format!("{:032x}", event.payment_id().as_u128() ^ 1))).unwrap().unwrap()
    }

    fn initiated() -> InputEvent {
        InputEvent::Initiated(PaymentInitiated {
            event_id: Uuid::new_v4(),
            payment_id: PAYMENT,
            wallet_id: WALLET,
            amount: Amount::from_minor(1_050).unwrap(),
            currency: "RUB".into(),
            kind: "purchase".into(),
            description: "tea".into(),
            requested_at: at(0),
            initiated_at: at(1),
        })
    }

    fn outcome(command: u128, outcome: DispatchResult, second: i64) -> InputEvent {
        InputEvent::Outcome(DispatchOutcome {
            command_id: Uuid::from_u128(command),
            payment_id: PAYMENT,
            outcome,
            attempts: 1,
            detail: "provider".into(),
            decided_at: at(second),
        })
    }

    fn callback(status: ProviderStatus, second: i64) -> InputEvent {
        InputEvent::Callback(ProviderCallbackReceived {
            event_id: Uuid::from_u128(0xca11 + second as u128),
            payment_id: PAYMENT,
            provider_event_id: "evt".into(),
            status,
            description: "provider says".into(),
            provider_timestamp: at(second),
            received_at: at(second),
        })
    }

    fn request(id: u128, action: ProviderAction, second: i64) -> InputEvent {
        InputEvent::Request(ProviderRequest {
            request_id: Uuid::from_u128(id),
            payment_id: PAYMENT,
            action,
            issued_at: at(second),
        })
    }

    fn result(status: PaymentResultStatus, second: i64) -> InputEvent {
        InputEvent::Result(PaymentResult {
            payment_result_id: PaymentResult::id_for(PAYMENT, status),
            payment_id: PAYMENT,
            wallet_id: WALLET,
            amount: Amount::from_minor(1_050).unwrap(),
            status,
            reason: format!("{} because", status.symbol()),
            decided_at: at(second),
        })
    }

    fn timer_fired(second: i64) -> InputEvent {
        InputEvent::Timer(TimerEvent {
            timer_id: Uuid::from_u128(0x7133),
            payment_id: PAYMENT,
            kind: TimerKind::PaymentTimeout,
            due_at: at(second),
            change: TimerChange::Fired { fired_at: at(second) },
        })
    }

    fn reconciliation(refund: u128, second: i64) -> InputEvent {
        InputEvent::Reconciliation(ReconciliationEvent {
            event_id: ReconciliationEvent::id_for(PAYMENT, Discrepancy::ChargedAfterFailure),
            payment_id: PAYMENT,
            wallet_id: WALLET,
            amount: Amount::from_minor(1_050).unwrap(),
            currency: "RUB".into(),
            discrepancy: Discrepancy::ChargedAfterFailure,
            remedy: Remedy::RefundRequested,
            published_status: PaymentResultStatus::FailedTimeout,
            refund_request_id: Some(Uuid::from_u128(refund)),
            evidence: "late success".into(),
            detected_at: at(second),
        })
    }

    fn folded(events: &[InputEvent]) -> ViewState {
        events.iter().cloned().map(fact).fold(ViewState::default(), fold)
    }

    fn status(events: &[InputEvent]) -> String {
        view(&folded(events), PAYMENT).unwrap().status
    }

    /// The payment's life in the order the saga causes it; each prefix's status as the user reads it.
    #[test]
    fn the_status_follows_the_saga() {
        use DispatchResult::*;
        let happy = [
            initiated(),
            outcome(1, Accepted, 2),
            callback(ProviderStatus::Succeeded, 3),
            result(PaymentResultStatus::Completed, 4),
        ];
        let expected = ["NEW", "SENT", "SENT", "COMPLETED"];
        for n in 1..=happy.len() {
            assert_eq!(status(&happy[..n]), expected[n - 1], "after {n} events");
        }
        let timeout = [
            initiated(),
            outcome(1, Accepted, 2),
            timer_fired(60),
            request(10, ProviderAction::StatusQuery { reason: "no verdict in time".into() }, 60),
            outcome(10, NotCharged, 61),
            request(11, ProviderAction::Void { reason: "no verdict in time".into() }, 61),
            outcome(11, Voided, 62),
            result(PaymentResultStatus::FailedTimeout, 62),
            callback(ProviderStatus::Succeeded, 70),
            request(
                12,
                ProviderAction::Refund {
                    amount: Amount::from_minor(1_050).unwrap(),
                    currency: "RUB".into(),
                    reason: "charged after the payment failed".into(),
                },
                70,
            ),
            reconciliation(12, 70),
            outcome(12, NotCharged, 71),
        ];
        let expected = [
            "NEW",
            "SENT",
            "SENT",
            "VERIFYING",
            "VERIFYING",
            "VOIDING",
            "VOIDING",
            "FAILED_TIMEOUT",
            "FAILED_TIMEOUT",
            "REFUNDING",
            "REFUNDING",
            "RECONCILED",
        ];
        for n in 1..=timeout.len() {
            assert_eq!(status(&timeout[..n]), expected[n - 1], "after {n} events");
        }
        let view = view(&folded(&timeout[..8]), PAYMENT).unwrap();
        assert_eq!(view.reason.as_deref(), Some("FAILED_TIMEOUT because"));
        assert_eq!(view.result_id, Some(PaymentResult::id_for(PAYMENT, PaymentResultStatus::FailedTimeout)));
    }

    #[test]
    fn a_result_before_its_payment_shows_the_result_and_the_payment_fills_in_later() {
        let early = view(&folded(&[result(PaymentResultStatus::Completed, 4)]), PAYMENT).unwrap();
        assert_eq!(early.status, "COMPLETED");
        assert_eq!((early.wallet_id, early.amount.map(Amount::minor)), (Some(WALLET), Some(1_050)));
        assert_eq!((early.kind, early.created_at, early.version), (None, None, 1));
        let late = view(&folded(&[result(PaymentResultStatus::Completed, 4), initiated()]), PAYMENT).unwrap();
        assert_eq!(late.status, "COMPLETED", "the payment's details never make it NEW again");
        assert_eq!((late.kind.as_deref(), late.created_at, late.version), (Some("purchase"), Some(at(1)), 2));
        assert_eq!(late.description.as_deref(), Some("tea"));
    }

    #[test]
    fn a_duplicate_changes_nothing_and_a_nudged_payment_is_the_same_fact() {
        let once = folded(&[initiated(), outcome(1, DispatchResult::Accepted, 2)]);
        let twice = folded(&[
            initiated(),
            outcome(1, DispatchResult::Accepted, 2),
            outcome(1, DispatchResult::Accepted, 2),
            initiated(),
        ]);
        assert_eq!(once, twice, "the second PaymentInitiated has a new event id, and is the same payment");
        assert_eq!(once.admit(&fact(initiated())), Admission::Duplicate);
        assert_eq!(view(&twice, PAYMENT).unwrap().version, 2);
    }

    #[test]
    fn an_inconclusive_answer_past_the_bound_is_left_out_and_a_result_never_is() {
        let mut state =
            folded(&[initiated(), request(10, ProviderAction::StatusQuery { reason: "why".into() }, 60)]);
        for n in 0..(FACTS_PER_PAYMENT_MAX as u128) {
            state = fold(state, fact(outcome(1_000 + n, DispatchResult::Pending, 61)));
        }
        assert_eq!(state.facts().len(), FACTS_PER_PAYMENT_MAX + 2);
        assert_eq!(state.admit(&fact(outcome(5_000, DispatchResult::Pending, 62))), Admission::OverBound);
        assert_eq!(
            state.admit(&fact(request(11, ProviderAction::StatusQuery { reason: "again".into() }, 62))),
            Admission::OverBound
        );
        assert_eq!(
            state.admit(&fact(request(12, ProviderAction::Void { reason: "void".into() }, 62))),
            Admission::Apply
        );
        assert_eq!(state.admit(&fact(result(PaymentResultStatus::Completed, 63))), Admission::Apply);
    }

    #[test]
    fn the_timeline_is_ordered_by_the_events_own_time_and_names_what_moved() {
        let in_order = folded(&[
            initiated(),
            outcome(1, DispatchResult::Accepted, 2),
            result(PaymentResultStatus::Completed, 4),
        ]);
        let before = timeline(&folded(&[initiated(), result(PaymentResultStatus::Completed, 4)]), PAYMENT);
        let after = timeline(&in_order, PAYMENT);
        assert_eq!(
            after.iter().map(|e| (e.seq, e.kind.as_str())).collect::<Vec<_>>(),
            [(1, "INITIATED"), (2, "DISPATCHED"), (3, "RESULT")]
        );
        let moved = changed(&before, &after);
        assert_eq!(
            moved.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3],
            "the late dispatch outcome moved the result"
        );
        assert!(changed(&after, &after).is_empty());
        let requests_are_not_shown =
            folded(&[initiated(), request(10, ProviderAction::StatusQuery { reason: "r".into() }, 60)]);
        assert_eq!(timeline(&requests_are_not_shown, PAYMENT).len(), 1);
        assert_eq!(view(&requests_are_not_shown, PAYMENT).unwrap().version, 2, "but they count as applied");
    }

    /// A payment's possible events: every kind of fact, with times in the saga's order.
    fn a_payments_events() -> Vec<InputEvent> {
        use DispatchResult::*;
        vec![
            initiated(),
            outcome(1, Accepted, 2),
            callback(ProviderStatus::Failed, 3),
            timer_fired(60),
            request(10, ProviderAction::StatusQuery { reason: "uncertain".into() }, 60),
            outcome(10, Pending, 61),
            outcome(10, NotCharged, 62),
            request(11, ProviderAction::Void { reason: "uncertain".into() }, 62),
            outcome(11, Voided, 63),
            result(PaymentResultStatus::FailedTimeout, 63),
            callback(ProviderStatus::Succeeded, 70),
            request(
                12,
                ProviderAction::Refund {
                    amount: Amount::from_minor(1_050).unwrap(),
                    currency: "RUB".into(),
                    reason: "late".into(),
                },
                70,
            ),
            reconciliation(12, 70),
            outcome(12, Refunded, 71),
        ]
    }

    proptest! {
        /// Any subset of a payment's events, in any order, with any of them delivered twice,
        /// folds to the same view and the same timeline as the subset in order.
        #[test]
        fn any_permutation_with_duplicates_gives_the_same_view_and_timeline(
            (events, shuffled) in proptest::sample::subsequence(a_payments_events(), 1..=14)
                .prop_flat_map(|events| {
                    let doubled: Vec<InputEvent> = events.iter().cloned().chain(events.iter().cloned()).collect();
                    (Just(events), Just(doubled).prop_shuffle())
                }),
        ) {
            let in_order = folded(&events);
            let any_order = folded(&shuffled);
            prop_assert_eq!(view(&in_order, PAYMENT), view(&any_order, PAYMENT));
            prop_assert_eq!(timeline(&in_order, PAYMENT), timeline(&any_order, PAYMENT));
            let view = view(&any_order, PAYMENT).unwrap();
            prop_assert_eq!(view.version, events.len() as i64);
            let seqs: Vec<i32> = timeline(&any_order, PAYMENT).iter().map(|e| e.seq).collect();
            prop_assert_eq!(seqs, (1..).take(events.iter().filter(|e| !matches!(e, InputEvent::Request(_))).count()).collect::<Vec<i32>>());
        }

        /// However its events arrive, once the result is applied the status is terminal and stays so.
        #[test]
        fn a_terminal_status_never_regresses(shuffled in Just(a_payments_events()).prop_shuffle()) {
            let mut state = ViewState::default();
            let mut terminal = false;
            for event in shuffled {
                state = fold(state, fact(event));
                let status = view(&state, PAYMENT).unwrap().status;
                let is_terminal = ["FAILED_TIMEOUT", "REFUNDING", "RECONCILED"].contains(&status.as_str());
                prop_assert!(!terminal || is_terminal, "regressed to {}", status);
                terminal |= is_terminal;
            }
            prop_assert_eq!(view(&state, PAYMENT).unwrap().status, "RECONCILED");
        }
    }
}
