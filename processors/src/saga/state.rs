//! The payment state machine: NEW → SENT → COMPLETED | FAILED, and FAILED_TIMEOUT when the
//! timer wins. Every transition is decided here and nowhere else, so the rules can be read (and
//! tested) in one table; the processor only applies what [`next`] returns.
//!
//! A terminal state absorbs everything after it: a late or duplicate signal is reported as
//! [`Decision::Absorbed`] (for a metric and a log line) and never changes the outcome. A signal
//! that makes no sense in the current state is [`Decision::Illegal`]: also reported, never a panic.

use paystream_schemas::events::PaymentResultStatus;

/// Where a payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PaymentStatus {
    /// Initiated; the charge command is issued, the provider has not taken it yet.
    New,
    /// The provider accepted the charge; its verdict comes by callback.
    Sent,
    /// The provider charged. Terminal.
    Completed,
    /// The provider refused, or the dispatcher gave up. Terminal.
    Failed,
    /// The timer fired before a verdict. Terminal.
    FailedTimeout,
}

impl PaymentStatus {
    /// Whether nothing can change this payment any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, PaymentStatus::Completed | PaymentStatus::Failed | PaymentStatus::FailedTimeout)
    }

    /// The `PaymentResult` status a terminal state is published as.
    pub fn result_status(self) -> Option<PaymentResultStatus> {
        match self {
            PaymentStatus::Completed => Some(PaymentResultStatus::Completed),
            PaymentStatus::Failed => Some(PaymentResultStatus::Failed),
            PaymentStatus::FailedTimeout => Some(PaymentResultStatus::FailedTimeout),
            PaymentStatus::New | PaymentStatus::Sent => None,
        }
    }
}

/// Something that happened to a payment, from one of the saga's input topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `PaymentInitiated` (payments.initiated).
    Initiated,
    /// The dispatcher's outcome ACCEPTED (payments.dispatch-outcomes).
    DispatchAccepted,
    /// The dispatcher's outcome REJECTED: the provider refused the charge for good.
    DispatchRejected,
    /// The dispatcher's outcome RETRIES_EXHAUSTED.
    DispatchExhausted,
    /// The provider's callback SUCCEEDED (payments.callbacks).
    ProviderSucceeded,
    /// The provider's callback FAILED.
    ProviderFailed,
    /// The payment's timeout timer fired (payments.timers).
    TimerFired,
}

impl Signal {
    /// Whether this is a provider callback (kept when it arrives before its payment).
    pub fn is_callback(self) -> bool {
        matches!(self, Signal::ProviderSucceeded | Signal::ProviderFailed)
    }
}

/// What to do with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Move to this state. If it is terminal, publish its result (exactly once: only this
    /// transition into a terminal state ever happens for a payment).
    Transition(PaymentStatus),
    /// The payment is not known yet and the signal is a callback: keep it until the payment
    /// appears (or its retention timer expires).
    KeepForLater,
    /// Already in this state (a redelivered event): nothing to do.
    Duplicate,
    /// The payment is finished; the signal is late or duplicated. Counted, never applied.
    Absorbed(PaymentStatus),
    /// The signal makes no sense here (e.g. a dispatch outcome for an unknown payment).
    Illegal,
}

/// The one transition table. `current` is `None` for a payment the saga has not seen.
pub fn next(current: Option<PaymentStatus>, signal: Signal) -> Decision {
    use Decision::*;
    use PaymentStatus::*;
    use Signal::*;
    match (current, signal) {
        (Some(state), _) if state.is_terminal() => Absorbed(state),
        (None, Initiated) => Transition(New),
        (None, s) if s.is_callback() => KeepForLater,
        (None, _) => Illegal,
        (Some(New) | Some(Sent), Initiated) => Duplicate,
        (Some(New), DispatchAccepted) => Transition(Sent),
        (Some(Sent), DispatchAccepted) => Duplicate,
        (Some(New), DispatchRejected | DispatchExhausted) => Transition(Failed),
        // The provider accepted an earlier attempt; a later failed attempt of a re-dispatched
        // command changes nothing: the verdict will come by callback or the timer.
        (Some(Sent), DispatchRejected | DispatchExhausted) => Illegal,
        (Some(New) | Some(Sent), ProviderSucceeded) => Transition(Completed),
        (Some(New) | Some(Sent), ProviderFailed) => Transition(Failed),
        (Some(New) | Some(Sent), TimerFired) => Transition(FailedTimeout),
        (Some(Completed | Failed | FailedTimeout), _) => unreachable!("terminal states are matched first"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use PaymentStatus::*;
    use Signal::*;

    const STATES: [Option<PaymentStatus>; 6] =
        [None, Some(New), Some(Sent), Some(Completed), Some(Failed), Some(FailedTimeout)];
    const SIGNALS: [Signal; 7] = [
        Initiated,
        DispatchAccepted,
        DispatchRejected,
        DispatchExhausted,
        ProviderSucceeded,
        ProviderFailed,
        TimerFired,
    ];

    #[test]
    fn the_happy_path_and_each_way_to_fail() {
        assert_eq!(next(None, Initiated), Transition(New));
        assert_eq!(next(Some(New), DispatchAccepted), Transition(Sent));
        assert_eq!(next(Some(Sent), ProviderSucceeded), Transition(Completed));
        assert_eq!(next(Some(Sent), ProviderFailed), Transition(Failed));
        assert_eq!(next(Some(Sent), TimerFired), Transition(FailedTimeout));
        assert_eq!(next(Some(New), TimerFired), Transition(FailedTimeout));
        assert_eq!(next(Some(New), DispatchExhausted), Transition(Failed));
        assert_eq!(next(Some(New), DispatchRejected), Transition(Failed));
    }

    #[test]
    fn a_callback_may_beat_the_dispatch_outcome_and_even_the_payment() {
        assert_eq!(next(Some(New), ProviderSucceeded), Transition(Completed));
        assert_eq!(next(None, ProviderSucceeded), KeepForLater);
        assert_eq!(next(None, ProviderFailed), KeepForLater);
    }

    #[test]
    fn terminal_states_absorb_everything() {
        for state in [Completed, Failed, FailedTimeout] {
            for signal in SIGNALS {
                assert_eq!(next(Some(state), signal), Absorbed(state), "{state:?} + {signal:?}");
            }
        }
    }

    #[test]
    fn redeliveries_are_duplicates_and_nonsense_is_illegal_not_a_panic() {
        assert_eq!(next(Some(New), Initiated), Duplicate);
        assert_eq!(next(Some(Sent), Initiated), Duplicate);
        assert_eq!(next(Some(Sent), DispatchAccepted), Duplicate);
        assert_eq!(next(None, DispatchAccepted), Illegal);
        assert_eq!(next(None, TimerFired), Illegal);
        assert_eq!(next(Some(Sent), DispatchExhausted), Illegal);
    }

    /// Exactly one result per payment: along any sequence of signals, at most one decision
    /// enters a terminal state, and only from a non-terminal one.
    #[test]
    fn no_sequence_produces_two_results() {
        fn walk(state: Option<PaymentStatus>, depth: usize, results: usize) {
            assert!(results <= 1, "two results");
            if depth == 0 {
                return;
            }
            for signal in SIGNALS {
                let (state, results) = match next(state, signal) {
                    Transition(to) => (Some(to), results + usize::from(to.is_terminal())),
                    _ => (state, results),
                };
                walk(state, depth - 1, results);
            }
        }
        for state in STATES.into_iter().filter(|s| !s.is_some_and(PaymentStatus::is_terminal)) {
            walk(state, 5, 0);
        }
    }

    #[test]
    fn terminal_states_map_to_result_statuses() {
        assert_eq!(Completed.result_status(), Some(PaymentResultStatus::Completed));
        assert_eq!(Failed.result_status(), Some(PaymentResultStatus::Failed));
        assert_eq!(FailedTimeout.result_status(), Some(PaymentResultStatus::FailedTimeout));
        assert_eq!(New.result_status(), None);
        assert_eq!(Sent.result_status(), None);
    }
}
