//! The payment state machine. Every transition is decided here and nowhere else, so the rules
//! can be read (and tested) in one table; the processor only carries out what [`next`] decides
//! and what [`effects`] says that decision causes.
//!
//! ```text
//! NEW ──ACCEPTED──▶ SENT ──SUCCEEDED──▶ COMPLETED
//!  │                 │ ──FAILED─────▶ FAILED
//!  │ REJECTED (1st attempt) / FAILED ─▶ FAILED
//!  │
//!  ├─ timer, RETRIES_EXHAUSTED, REJECTED after retries ─▶ VERIFYING ─CHARGED────────▶ COMPLETED
//!  │        (SENT too, on the timer)                        │ NOT_CHARGED
//!  └─ EXPIRED (nothing sent by this run) ───────────────▶ VOIDING ──VOIDED──▶ FAILED_TIMEOUT | FAILED
//!                                                           └─CHARGED (void refused)─▶ COMPLETED
//! FAILED | FAILED_TIMEOUT | CANCELED ──SUCCEEDED (late)──▶ REFUNDING ──REFUNDED / NOT_CHARGED──▶ RECONCILED
//!
//! NEW | SENT | VERIFYING | VOIDING(timeout, dispatch) ──CANCEL_REQUESTED──▶ VOIDING(cancel)
//!     VOIDING(cancel) ──VOIDED──▶ CANCELED        └─CHARGED (void refused)─▶ COMPLETED (the cancel is refused)
//! ```
//!
//! The states:
//! - **NEW**: initiated; the charge command is issued, the provider has not accepted it yet.
//! - **SENT**: the provider accepted the charge; its verdict comes by callback.
//! - **VERIFYING**: the outcome is uncertain — the timer fired while the charge may be out, the
//!   dispatcher's retries ran out after an attempt that may have reached the provider, or the
//!   provider refused a retry (409 in flight). A status query is out; refunding now could refund
//!   a charge the provider keeps, so the saga asks instead of guessing.
//! - **VOIDING**: the provider holds no charge; a void is out, so that the key can never be
//!   charged later. Only a confirmed void fails the payment.
//! - **COMPLETED**, **FAILED**, **FAILED_TIMEOUT**: the result is published (exactly once).
//! - **REFUNDING**: the provider reported a success after the payment had failed (the wallet was
//!   already given its money back): a refund is out and a reconciliation event was published.
//! - **RECONCILED**: the refund is confirmed (or the provider had nothing to refund).
//! - **CANCELED**: the owner asked to cancel and the provider confirmed by a void that the key
//!   holds no charge and never will. Has its result.
//!
//! A cancel is a void asked for by the owner, so it takes the VOIDING path whatever the charge's
//! progress: while the charge has not reached the provider, the void makes the key unchargeable
//! (the charge that follows is refused for good, 410, and its outcome is superseded); once it is
//! out, the void is either accepted (nothing charged: CANCELED) or refused as already charged
//! (COMPLETED: a charge the provider keeps is never cancelled on our side only). A status query
//! or another void that is out is replaced by the cancel's void (a new request id: the earlier
//! answer is stale). A payment with its result refuses the cancel (absorbed); so does a payment
//! whose provider's verdict comes first (the callback decides, as always). A cancel that arrives
//! before its payment (the saga reads the two topics independently) is kept like an early
//! callback and applied when the payment appears.
//!
//! A question that gets no answer (the provider is away, or the charge is still pending) is
//! asked again after a back-off ([`Decision::RetryLater`], [`Decision::Reissue`]); the
//! reservation is held meanwhile. Nothing is ever decided by guessing.
//!
//! An EXPIRED command skips the status query, not the void: the dispatcher that reports it sent
//! nothing, but a dispatcher that crashed between an HTTP attempt and its outcome leaves no trace
//! for the next run to see, so "this run sent nothing" never proves "nothing reached the
//! provider". The void does: once it succeeds the key can never be charged.
//!
//! A state that has its result absorbs what comes after it: a late or duplicate signal is
//! reported as [`Decision::Absorbed`] (for a metric and a log line) and never changes the
//! outcome — except a provider success after a failure, which is compensated, never only logged,
//! and the payment's `PaymentInitiated` again ([`Decision::Reforward`]): an operator nudging a
//! stranded reservation (`paystream reservations nudge`) sends it when the result may never have
//! been applied, so the one result is forwarded again, the same record with the same id —
//! settlement's dedup makes that a no-op where it was applied, and applies it where it was lost.
//! A signal that makes no sense in the current state is [`Decision::Illegal`]: also reported,
//! never a panic.

use paystream_schemas::events::PaymentResultStatus;

/// Why a payment is being verified: what it ends as if the provider holds no charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Cause {
    /// The payment timer fired first: FAILED_TIMEOUT.
    Timeout,
    /// The dispatch failed (retries exhausted, refused after retries, expired): FAILED.
    Dispatch,
    /// The owner asked to cancel: CANCELED.
    Cancel,
}

impl Cause {
    /// The failure published once the provider confirmed (by a void) that it holds no charge.
    pub fn failure(self) -> PaymentStatus {
        match self {
            Cause::Timeout => PaymentStatus::FailedTimeout,
            Cause::Dispatch => PaymentStatus::Failed,
            Cause::Cancel => PaymentStatus::Canceled,
        }
    }
}

/// Where a payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PaymentStatus {
    /// Initiated; the charge command is issued, the provider has not taken it yet.
    New,
    /// The provider accepted the charge; its verdict comes by callback.
    Sent,
    /// The outcome is uncertain: a status query is out.
    Verifying(Cause),
    /// The provider holds no charge: a void is out.
    Voiding(Cause),
    /// The provider charged. Has its result.
    Completed,
    /// The provider refused, declined, or confirmed it holds no charge after a failed dispatch.
    /// Has its result.
    Failed,
    /// The timer fired and the provider confirmed it holds no charge. Has its result.
    FailedTimeout,
    /// Failed, then charged after all: a refund is out. Has its (failure) result.
    Refunding,
    /// The late charge is refunded. Has its (failure) result; absorbs everything.
    Reconciled,
    /// The owner cancelled it and the provider confirmed by a void that it holds no charge.
    /// Has its result.
    Canceled,
}

impl PaymentStatus {
    /// Whether the payment's one result is published (nothing can change the result any more).
    pub fn has_result(self) -> bool {
        matches!(
            self,
            PaymentStatus::Completed
                | PaymentStatus::Failed
                | PaymentStatus::FailedTimeout
                | PaymentStatus::Refunding
                | PaymentStatus::Reconciled
                | PaymentStatus::Canceled
        )
    }

    /// The `PaymentResult` status published when the payment enters this state, if it is one
    /// that publishes. REFUNDING and RECONCILED publish nothing: their failure result exists.
    pub fn result_status(self) -> Option<PaymentResultStatus> {
        match self {
            PaymentStatus::Completed => Some(PaymentResultStatus::Completed),
            PaymentStatus::Failed => Some(PaymentResultStatus::Failed),
            PaymentStatus::FailedTimeout => Some(PaymentResultStatus::FailedTimeout),
            PaymentStatus::Canceled => Some(PaymentResultStatus::Canceled),
            _ => None,
        }
    }

    /// The provider request this state waits for the answer to.
    pub fn outstanding_request(self) -> Option<Request> {
        match self {
            PaymentStatus::Verifying(_) => Some(Request::Status),
            PaymentStatus::Voiding(_) => Some(Request::Void),
            PaymentStatus::Refunding => Some(Request::Refund),
            _ => None,
        }
    }

    /// A stable name for logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            PaymentStatus::New => "NEW",
            PaymentStatus::Sent => "SENT",
            PaymentStatus::Verifying(_) => "VERIFYING",
            PaymentStatus::Voiding(_) => "VOIDING",
            PaymentStatus::Completed => "COMPLETED",
            PaymentStatus::Failed => "FAILED",
            PaymentStatus::FailedTimeout => "FAILED_TIMEOUT",
            PaymentStatus::Refunding => "REFUNDING",
            PaymentStatus::Reconciled => "RECONCILED",
            PaymentStatus::Canceled => "CANCELED",
        }
    }
}

/// A request to the provider the saga issues (a `ProviderRequest` on payments.provider-requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// `GET /v1/charges/{key}`.
    Status,
    /// `POST /v1/charges/{key}/void`.
    Void,
    /// `POST /v1/charges/{key}/refund`.
    Refund,
}

/// Something that happened to a payment, from one of the saga's input topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `PaymentInitiated` (payments.initiated).
    Initiated,
    /// The charge's outcome ACCEPTED (payments.dispatch-outcomes).
    DispatchAccepted,
    /// REJECTED on the first attempt: the provider refused this charge itself, for good.
    DispatchRejected,
    /// RETRIES_EXHAUSTED, REJECTED after earlier attempts (a 409: an earlier attempt may be in
    /// flight at the provider), or EXPIRED after attempts of its own: an attempt may have
    /// reached the provider.
    DispatchUncertain,
    /// EXPIRED with no attempt made by the reporting run.
    DispatchExpired,
    /// The provider's callback SUCCEEDED (payments.callbacks).
    ProviderSucceeded,
    /// The provider's callback FAILED.
    ProviderFailed,
    /// The payment's timeout timer fired (payments.timers).
    TimerFired,
    /// The outstanding request's answer CHARGED: a status query found a successful charge, or a
    /// void was refused because the key is already charged.
    Charged,
    /// NOT_CHARGED: a status query found no successful charge, or a refund found nothing.
    NotCharged,
    /// VOIDED: the key can never be charged.
    Voided,
    /// REFUNDED: the charge is given back.
    Refunded,
    /// PENDING or UNANSWERED: no decision yet; ask again later.
    Inconclusive,
    /// The back-off after an inconclusive answer is over (a VERIFY_RETRY timer).
    RetryDue,
    /// The owner asked to cancel (`PaymentCancelRequested`, payments.cancel-requests).
    CancelRequested,
}

impl Signal {
    /// Every signal, for exhaustive tests.
    pub const ALL: [Signal; 15] = [
        Signal::Initiated,
        Signal::DispatchAccepted,
        Signal::DispatchRejected,
        Signal::DispatchUncertain,
        Signal::DispatchExpired,
        Signal::ProviderSucceeded,
        Signal::ProviderFailed,
        Signal::TimerFired,
        Signal::Charged,
        Signal::NotCharged,
        Signal::Voided,
        Signal::Refunded,
        Signal::Inconclusive,
        Signal::RetryDue,
        Signal::CancelRequested,
    ];

    /// Whether this is a provider callback (kept when it arrives before its payment).
    pub fn is_callback(self) -> bool {
        matches!(self, Signal::ProviderSucceeded | Signal::ProviderFailed)
    }

    /// Whether the signal is kept when it arrives before its payment: a callback, or a cancel
    /// (its payment's PaymentInitiated travels on another topic and may come later).
    pub fn is_kept_early(self) -> bool {
        self.is_callback() || self == Signal::CancelRequested
    }

    /// A stable name for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Initiated => "initiated",
            Signal::DispatchAccepted => "dispatch_accepted",
            Signal::DispatchRejected => "dispatch_rejected",
            Signal::DispatchUncertain => "dispatch_uncertain",
            Signal::DispatchExpired => "dispatch_expired",
            Signal::ProviderSucceeded => "provider_succeeded",
            Signal::ProviderFailed => "provider_failed",
            Signal::TimerFired => "timer_fired",
            Signal::Charged => "charged",
            Signal::NotCharged => "not_charged",
            Signal::Voided => "voided",
            Signal::Refunded => "refunded",
            Signal::Inconclusive => "inconclusive",
            Signal::RetryDue => "retry_due",
            Signal::CancelRequested => "cancel_requested",
        }
    }
}

/// What to do with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Move to this state, with the [`effects`] of entering it.
    Transition(PaymentStatus),
    /// The payment is not known yet and the signal is a callback or a cancel: keep it until the
    /// payment appears (or its retention timer expires).
    KeepForLater,
    /// Already in this state (a redelivered event): nothing to do.
    Duplicate,
    /// A signal the current state has moved past (a dispatch outcome or the timer while the
    /// provider is being asked): nothing to do.
    Superseded,
    /// The outstanding request got no decision: stay, and ask again after a back-off.
    RetryLater,
    /// The back-off is over: issue the outstanding request again.
    Reissue,
    /// The payment's result is published and the signal changes nothing. Counted, never applied.
    Absorbed(PaymentStatus),
    /// The payment's result is published and its PaymentInitiated came again (a nudge of a
    /// stranded reservation, or a replay): forward the same result again. Not a second result:
    /// the same record, with the same id, which settlement applies at most once.
    Reforward(PaymentStatus),
    /// The signal makes no sense here (e.g. a dispatch outcome for an unknown payment).
    Illegal,
}

impl Decision {
    /// A stable name for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Transition(_) => "transition",
            Decision::KeepForLater => "kept",
            Decision::Duplicate => "duplicate",
            Decision::Superseded => "superseded",
            Decision::RetryLater => "retry_later",
            Decision::Reissue => "reissue",
            Decision::Absorbed(_) => "absorbed",
            Decision::Reforward(_) => "reforwarded",
            Decision::Illegal => "illegal",
        }
    }
}

/// The one transition table. `current` is `None` for a payment the saga has not seen.
pub fn next(current: Option<PaymentStatus>, signal: Signal) -> Decision {
    use Decision::*;
    use PaymentStatus::*;
    use Signal::*;
    let Some(state) = current else {
        return match signal {
            Initiated => Transition(New),
            s if s.is_kept_early() => KeepForLater,
            _ => Illegal,
        };
    };
    match (state, signal) {
        // The payment again, after its result: the result may never have been applied.
        (s, Initiated) if s.has_result() => Reforward(s),
        // A refunded late charge, and a completed payment, absorb everything else.
        (Completed | Reconciled, _) => Absorbed(state),
        // The provider charged after the payment had failed (or been cancelled): compensate.
        (Failed | FailedTimeout | Canceled, ProviderSucceeded | Charged) => Transition(Refunding),
        // A cancel of a payment with its result is refused (absorbed), like any late signal.
        (Failed | FailedTimeout | Canceled, _) => Absorbed(state),
        (Refunding, Refunded | NotCharged) => Transition(Reconciled),
        (Refunding, Inconclusive) => RetryLater,
        (Refunding, RetryDue) => Reissue,
        (Refunding, _) => Absorbed(state),

        (New | Sent | Verifying(_) | Voiding(_), Initiated) => Duplicate,
        // The provider's own verdict decides, whatever else is under way (a void that is out
        // will be refused as already charged, or will find the declined charge harmless).
        (New | Sent | Verifying(_) | Voiding(_), ProviderSucceeded) => Transition(Completed),
        (New | Sent | Verifying(_) | Voiding(_), ProviderFailed) => Transition(Failed),

        // The owner's cancel: a void, whatever the charge's progress (the module doc says why).
        (Voiding(Cause::Cancel), CancelRequested) => Duplicate,
        (New | Sent | Verifying(_) | Voiding(_), CancelRequested) => Transition(Voiding(Cause::Cancel)),

        (New, DispatchAccepted) => Transition(Sent),
        (New, DispatchRejected) => Transition(Failed),
        (New, DispatchUncertain) => Transition(Verifying(Cause::Dispatch)),
        (New, DispatchExpired) => Transition(Voiding(Cause::Dispatch)),
        (New | Sent, TimerFired) => Transition(Verifying(Cause::Timeout)),
        (Sent, DispatchAccepted) => Duplicate,
        // The provider accepted an earlier attempt; a later failed attempt of a re-dispatched
        // command changes nothing: the verdict will come by callback or the timer.
        (Sent, DispatchRejected | DispatchUncertain | DispatchExpired) => Illegal,
        // No request is out in NEW or SENT: an answer or a retry timer here is nonsense.
        (New | Sent, Charged | NotCharged | Voided | Refunded | Inconclusive | RetryDue) => Illegal,

        // The provider is being asked: the charge's own outcome and the timer change nothing.
        (
            Verifying(_) | Voiding(_),
            DispatchAccepted | DispatchRejected | DispatchUncertain | DispatchExpired,
        ) => Superseded,
        (Verifying(_) | Voiding(_), TimerFired) => Superseded,
        (Verifying(_) | Voiding(_), Charged) => Transition(Completed),
        (Verifying(cause), NotCharged) => Transition(Voiding(cause)),
        (Voiding(cause), Voided) => Transition(cause.failure()),
        (Verifying(_) | Voiding(_), Inconclusive) => RetryLater,
        (Verifying(_) | Voiding(_), RetryDue) => Reissue,
        // A status query is never answered VOIDED or REFUNDED, a void never NOT_CHARGED.
        (Verifying(_), Voided | Refunded) | (Voiding(_), NotCharged | Refunded) => Illegal,
    }
}

/// What a decision causes, besides the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effects {
    /// Issue the one charge command and schedule the payment timer (entering NEW).
    pub charge: bool,
    /// Publish the payment's one result with this status.
    pub result: Option<PaymentResultStatus>,
    /// Issue this provider request (a new request id: answers to earlier ones are ignored).
    pub request: Option<Request>,
    /// Schedule a VERIFY_RETRY timer after the back-off.
    pub retry_later: bool,
    /// Publish a reconciliation event (the provider charged a failed payment).
    pub reconcile: bool,
    /// Forward the result already published again, unchanged (same id).
    pub reforward: bool,
}

/// The effects of `decision`, taken in `current`. Pure, so the property test drives exactly
/// the logic the processor runs.
pub fn effects(current: Option<PaymentStatus>, decision: Decision) -> Effects {
    match decision {
        Decision::Transition(to) => Effects {
            charge: to == PaymentStatus::New,
            result: to.result_status(),
            request: to.outstanding_request(),
            retry_later: false,
            reconcile: to == PaymentStatus::Refunding,
            reforward: false,
        },
        Decision::RetryLater => Effects { retry_later: true, ..Effects::default() },
        Decision::Reissue => {
            Effects { request: current.and_then(PaymentStatus::outstanding_request), ..Effects::default() }
        }
        Decision::Reforward(_) => Effects { reforward: true, ..Effects::default() },
        Decision::KeepForLater
        | Decision::Duplicate
        | Decision::Superseded
        | Decision::Absorbed(_)
        | Decision::Illegal => Effects::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Cause::*;
    use Decision::*;
    use PaymentStatus::*;
    use Signal::*;

    const STATES: [Option<PaymentStatus>; 14] = [
        None,
        Some(New),
        Some(Sent),
        Some(Verifying(Timeout)),
        Some(Verifying(Dispatch)),
        Some(Voiding(Timeout)),
        Some(Voiding(Dispatch)),
        Some(Voiding(Cancel)),
        Some(Completed),
        Some(Failed),
        Some(FailedTimeout),
        Some(Refunding),
        Some(Reconciled),
        Some(Canceled),
    ];

    #[test]
    fn the_happy_path_and_the_certain_ways_to_fail() {
        assert_eq!(next(None, Initiated), Transition(New));
        assert_eq!(next(Some(New), DispatchAccepted), Transition(Sent));
        assert_eq!(next(Some(Sent), ProviderSucceeded), Transition(Completed));
        assert_eq!(next(Some(Sent), ProviderFailed), Transition(Failed));
        assert_eq!(next(Some(New), DispatchRejected), Transition(Failed));
    }

    #[test]
    fn an_uncertain_outcome_is_verified_never_failed_blind() {
        assert_eq!(next(Some(Sent), TimerFired), Transition(Verifying(Timeout)));
        assert_eq!(next(Some(New), TimerFired), Transition(Verifying(Timeout)));
        assert_eq!(next(Some(New), DispatchUncertain), Transition(Verifying(Dispatch)));
        assert_eq!(next(Some(New), DispatchExpired), Transition(Voiding(Dispatch)), "skips the query");
        for cause in [Timeout, Dispatch] {
            assert_eq!(next(Some(Verifying(cause)), Charged), Transition(Completed));
            assert_eq!(next(Some(Verifying(cause)), NotCharged), Transition(Voiding(cause)));
            assert_eq!(next(Some(Voiding(cause)), Voided), Transition(cause.failure()));
            assert_eq!(next(Some(Voiding(cause)), Charged), Transition(Completed), "void refused: charged");
            for waiting in [Verifying(cause), Voiding(cause)] {
                assert_eq!(next(Some(waiting), Inconclusive), RetryLater);
                assert_eq!(next(Some(waiting), RetryDue), Reissue);
                assert_eq!(next(Some(waiting), TimerFired), Superseded);
                assert_eq!(next(Some(waiting), DispatchUncertain), Superseded);
                assert_eq!(next(Some(waiting), ProviderSucceeded), Transition(Completed));
            }
        }
        assert_eq!(Timeout.failure(), FailedTimeout);
        assert_eq!(Dispatch.failure(), Failed);
    }

    #[test]
    fn a_charge_after_a_failure_is_refunded_and_reconciled() {
        for failed in [Failed, FailedTimeout] {
            assert_eq!(next(Some(failed), ProviderSucceeded), Transition(Refunding));
            assert!(effects(Some(failed), Transition(Refunding)).reconcile);
            assert_eq!(next(Some(failed), ProviderFailed), Absorbed(failed));
        }
        assert_eq!(next(Some(Refunding), Refunded), Transition(Reconciled));
        assert_eq!(next(Some(Refunding), NotCharged), Transition(Reconciled));
        assert_eq!(next(Some(Refunding), ProviderSucceeded), Absorbed(Refunding), "a duplicate callback");
        assert_eq!(next(Some(Refunding), Inconclusive), RetryLater);
        assert_eq!(next(Some(Refunding), RetryDue), Reissue);
    }

    /// Issue 16: the owner's cancel is a void, asked whatever the charge's progress; only a
    /// confirmed void cancels, a charge the provider holds completes the payment (the cancel is
    /// refused), and a payment with its result refuses it.
    #[test]
    fn a_cancel_is_a_void_and_only_a_confirmed_void_cancels() {
        for from in [New, Sent, Verifying(Timeout), Verifying(Dispatch), Voiding(Timeout), Voiding(Dispatch)]
        {
            assert_eq!(next(Some(from), CancelRequested), Transition(Voiding(Cancel)), "{from:?}");
            let effects = effects(Some(from), Transition(Voiding(Cancel)));
            assert_eq!(effects.request, Some(Request::Void), "{from:?}: a void with a new id");
            assert_eq!(effects.result, None, "{from:?}: no result before the provider answers");
        }
        let cancelling = Some(Voiding(Cancel));
        assert_eq!(next(cancelling, CancelRequested), Duplicate, "the same cancel twice");
        assert_eq!(next(cancelling, Voided), Transition(Canceled));
        assert_eq!(
            effects(cancelling, Transition(Canceled)).result,
            Some(PaymentResultStatus::Canceled),
            "its one result"
        );
        assert_eq!(
            next(cancelling, Charged),
            Transition(Completed),
            "already charged: the cancel is refused"
        );
        assert_eq!(Cancel.failure(), Canceled);
        assert_eq!(Canceled.result_status(), Some(PaymentResultStatus::Canceled));
        assert!(Canceled.has_result());
        assert_eq!(Canceled.label(), "CANCELED");
    }

    /// Every race of a cancel: with the callback, the timer and the charge's outcome.
    #[test]
    fn a_cancel_races_callbacks_timers_and_dispatch_outcomes_safely() {
        let cancelling = Some(Voiding(Cancel));
        // The provider's verdict decides, before or after the cancel.
        assert_eq!(next(cancelling, ProviderSucceeded), Transition(Completed));
        assert_eq!(next(cancelling, ProviderFailed), Transition(Failed));
        // The timer and the charge's own outcome change nothing while the void is out (a charge
        // after the void is refused for good by the provider: REJECTED).
        assert_eq!(next(cancelling, TimerFired), Superseded);
        for outcome in [DispatchAccepted, DispatchRejected, DispatchUncertain, DispatchExpired] {
            assert_eq!(next(cancelling, outcome), Superseded, "{outcome:?}");
        }
        assert_eq!(next(cancelling, Inconclusive), RetryLater, "a pending charge: ask again");
        assert_eq!(next(cancelling, RetryDue), Reissue);
        assert_eq!(effects(cancelling, Reissue).request, Some(Request::Void));
        // A payment with its result refuses the cancel; a late charge after a cancel is refunded.
        for done in [Completed, Failed, FailedTimeout, Refunding, Reconciled, Canceled] {
            assert_eq!(next(Some(done), CancelRequested), Absorbed(done), "{done:?}");
        }
        assert_eq!(next(Some(Canceled), ProviderSucceeded), Transition(Refunding));
        assert_eq!(next(Some(Canceled), Charged), Transition(Refunding));
        assert_eq!(next(Some(Canceled), ProviderFailed), Absorbed(Canceled));
        assert_eq!(next(Some(Canceled), Initiated), Reforward(Canceled));
        // A cancel before its payment is kept, like an early callback.
        assert_eq!(next(None, CancelRequested), KeepForLater);
    }

    #[test]
    fn a_callback_may_beat_the_dispatch_outcome_and_even_the_payment() {
        assert_eq!(next(Some(New), ProviderSucceeded), Transition(Completed));
        assert_eq!(next(None, ProviderSucceeded), KeepForLater);
        assert_eq!(next(None, ProviderFailed), KeepForLater);
    }

    #[test]
    fn completed_and_reconciled_absorb_everything_but_the_payment_itself() {
        for state in [Completed, Reconciled] {
            for signal in Signal::ALL.into_iter().filter(|s| *s != Initiated) {
                assert_eq!(next(Some(state), signal), Absorbed(state), "{state:?} + {signal:?}");
            }
        }
    }

    /// A nudge of a stranded reservation: the payment's PaymentInitiated again. With a result,
    /// the result is forwarded again (and nothing else happens); without one, it is a duplicate.
    #[test]
    fn a_repeated_payment_re_forwards_a_result_and_is_a_duplicate_without_one() {
        for state in STATES.into_iter().flatten() {
            let decision = next(Some(state), Initiated);
            if state.has_result() {
                assert_eq!(decision, Reforward(state), "{state:?}");
                assert_eq!(
                    effects(Some(state), decision),
                    Effects { reforward: true, ..Effects::default() },
                    "{state:?}: no charge, no request, no new result"
                );
            } else {
                assert_eq!(decision, Duplicate, "{state:?}");
                assert_eq!(effects(Some(state), decision), Effects::default(), "{state:?}");
            }
        }
        assert_eq!(Reforward(Completed).label(), "reforwarded");
    }

    #[test]
    fn redeliveries_are_duplicates_and_nonsense_is_illegal_not_a_panic() {
        assert_eq!(next(Some(New), Initiated), Duplicate);
        assert_eq!(next(Some(Sent), Initiated), Duplicate);
        assert_eq!(next(Some(Sent), DispatchAccepted), Duplicate);
        assert_eq!(next(None, DispatchAccepted), Illegal);
        assert_eq!(next(None, TimerFired), Illegal);
        assert_eq!(next(Some(Sent), DispatchUncertain), Illegal);
        assert_eq!(next(Some(New), Charged), Illegal);
        assert_eq!(next(Some(Verifying(Timeout)), Voided), Illegal);
        assert_eq!(next(Some(Voiding(Timeout)), NotCharged), Illegal);
        // Every pair is decided without a panic.
        for state in STATES {
            for signal in Signal::ALL {
                let _ = next(state, signal);
            }
        }
    }

    #[test]
    fn effects_follow_the_state_entered() {
        let entered = |to| effects(Some(New), Transition(to));
        assert!(effects(None, Transition(New)).charge);
        assert_eq!(entered(Verifying(Timeout)).request, Some(Request::Status));
        assert_eq!(entered(Voiding(Timeout)).request, Some(Request::Void));
        assert_eq!(entered(Refunding).request, Some(Request::Refund));
        assert_eq!(entered(Completed).result, Some(PaymentResultStatus::Completed));
        assert_eq!(entered(Reconciled), Effects::default(), "its result was published on failing");
        assert_eq!(effects(Some(Voiding(Dispatch)), Reissue).request, Some(Request::Void));
        assert!(effects(Some(Voiding(Dispatch)), RetryLater).retry_later);
        assert_eq!(effects(Some(Completed), Absorbed(Completed)), Effects::default());
    }

    /// Exactly one result per payment: along any sequence of signals, at most one decision
    /// publishes a result, and only from a state without one.
    #[test]
    fn no_sequence_produces_two_results() {
        fn walk(state: Option<PaymentStatus>, depth: usize, results: usize) {
            assert!(results <= 1, "two results");
            if depth == 0 {
                return;
            }
            for signal in Signal::ALL {
                let decision = next(state, signal);
                let effects = effects(state, decision);
                if effects.result.is_some() {
                    assert!(!state.is_some_and(PaymentStatus::has_result), "{state:?} + {signal:?}");
                }
                if effects.reforward {
                    assert!(state.is_some_and(PaymentStatus::has_result), "{state:?} + {signal:?}");
                }
                let state = match decision {
                    Transition(to) => Some(to),
                    _ => state,
                };
                walk(state, depth - 1, results + usize::from(effects.result.is_some()));
            }
        }
        walk(None, 6, 0);
    }

    #[test]
    fn publishing_states_map_to_result_statuses() {
        assert_eq!(Completed.result_status(), Some(PaymentResultStatus::Completed));
        assert_eq!(Failed.result_status(), Some(PaymentResultStatus::Failed));
        assert_eq!(FailedTimeout.result_status(), Some(PaymentResultStatus::FailedTimeout));
        assert_eq!(Canceled.result_status(), Some(PaymentResultStatus::Canceled));
        for quiet in
            [New, Sent, Verifying(Timeout), Voiding(Dispatch), Voiding(Cancel), Refunding, Reconciled]
        {
            assert_eq!(quiet.result_status(), None, "{quiet:?}");
        }
    }
}
