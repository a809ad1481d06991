//! The saga's state machine against a model of the world it lives in: a provider with a ledger
//! (idempotent charges, voids and refunds), a dispatcher that may lose answers, crash and answer
//! twice, callbacks that may be lost, duplicated or contradicted by a stale event, and timers —
//! all interleaved in any order proptest can think of. The saga's part is exactly what the
//! processor runs: the table ([`next`]), the effects of each decision ([`effects`]), and the
//! processor's rule that only the answer to the outstanding request (and the retry timer last
//! scheduled) counts.
//!
//! After the random part the world is drained (every question answered, every timer fired,
//! every callback that was not lost delivered) and the properties are checked:
//! - at most one result at any time, exactly one at the end;
//! - COMPLETED only if the provider holds the charge (a stale callback that overtakes the
//!   verdict can fool the saga, since it trusts the provider's callbacks; its own verification
//!   never is);
//! - the saga never decides a failure while the provider could still charge the key (only the
//!   provider's own FAILED, which a reordered stale event can make wrong, may end it so);
//! - the provider's final ledger agrees with the result: charged ⇔ COMPLETED, or the charge was
//!   refunded after a failure, with exactly one reconciliation event;
//! - the owner's cancel (issue 16), sent at any moment, once or twice, races every callback, timer
//!   and dispatch outcome: the payment still ends in exactly one terminal state with exactly one
//!   result, CANCELED only with a ledger that never charged (voided or declined) or refunded, and
//!   money is conserved: what left the wallet is what the provider keeps.

use std::collections::VecDeque;

use paystream_processors::saga::state::{effects, next, Decision, PaymentStatus, Request, Signal};
use paystream_schemas::events::PaymentResultStatus;
use proptest::prelude::*;

/// The provider's ledger for the payment's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ledger {
    /// Never taken.
    None,
    /// Taken, the verdict not reached yet.
    Pending {
        succeeds: bool,
    },
    Succeeded,
    Declined,
    Voided,
    Refunded,
}

impl Ledger {
    /// Whether the key may still end up charged.
    fn may_charge(self) -> bool {
        matches!(self, Ledger::None | Ledger::Pending { succeeds: true } | Ledger::Succeeded)
    }
}

/// A record on its way to the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// A dispatch outcome for the charge, already mapped to its signal.
    ChargeOutcome(Signal),
    /// An answer to provider request number `id`.
    Answer {
        id: u32,
        signal: Signal,
    },
    Callback(Signal),
    PaymentTimer,
    RetryTimer(u32),
    /// The owner's cancel (payments.cancel-requests).
    Cancel,
}

/// The saga, reduced to what the processor keeps besides the table.
#[derive(Debug, Default)]
struct Saga {
    status: Option<PaymentStatus>,
    outstanding: Option<u32>,
    retry_timer: Option<u32>,
    requests_issued: u32,
    retries: u32,
    results: Vec<PaymentResultStatus>,
    /// The signal that published the result.
    decided_by: Option<Signal>,
    reconciliations: usize,
}

#[derive(Debug)]
struct World {
    ledger: Ledger,
    saga: Saga,
    /// ChargeCommands not yet taken off their topic by the dispatcher (it may crash and take
    /// the same again).
    charge_queue: VecDeque<()>,
    /// ProviderRequests on their topic.
    requests: VecDeque<(u32, Request)>,
    /// Per-topic order holds: outcomes (charge outcomes and answers), callbacks, timers.
    outcomes: VecDeque<Delivery>,
    callbacks: VecDeque<Delivery>,
    timers: VecDeque<Delivery>,
    /// The owner's cancels on their topic.
    cancels: VecDeque<Delivery>,
    /// The callbacks the provider will send once the pending charge is decided.
    callback_fate: u8,
    /// Set when a result is published while the ledger could still charge.
    released_while_chargeable: Option<String>,
    /// Set when a callback overtook an earlier one (the pipeline keeps them in order per
    /// payment; a provider may not): a stale event may then be taken for the verdict.
    callbacks_reordered: bool,
}

impl World {
    fn new(callback_fate: u8) -> Self {
        let mut world = Self {
            ledger: Ledger::None,
            saga: Saga::default(),
            charge_queue: VecDeque::new(),
            requests: VecDeque::new(),
            outcomes: VecDeque::new(),
            callbacks: VecDeque::new(),
            timers: VecDeque::new(),
            cancels: VecDeque::new(),
            callback_fate,
            released_while_chargeable: None,
            callbacks_reordered: false,
        };
        world.signal(Signal::Initiated);
        world
    }

    /// The saga applies `signal`, exactly as the processor does.
    fn signal(&mut self, signal: Signal) {
        let saga = &mut self.saga;
        let current = saga.status;
        let decision = next(current, signal);
        let effects = effects(current, decision);
        if let Decision::Transition(to) = decision {
            saga.status = Some(to);
            if to.outstanding_request().is_none() {
                saga.outstanding = None;
                saga.retry_timer = None;
            }
        }
        if effects.charge {
            self.charge_queue.push_back(());
            self.timers.push_back(Delivery::PaymentTimer);
        }
        if let Some(result) = effects.result {
            assert!(saga.results.is_empty(), "a second result {result:?} after {:?}", saga.results);
            saga.results.push(result);
            saga.decided_by = Some(signal);
            // The saga never decides a failure while the key may still be charged; only the
            // provider's own FAILED (which a reordered callback can make wrong) may say so.
            if result != PaymentResultStatus::Completed
                && self.ledger.may_charge()
                && signal != Signal::ProviderFailed
            {
                self.released_while_chargeable =
                    Some(format!("{result:?} published with ledger {:?}", self.ledger));
            }
            // The saga's own verification is never wrong; a callback is trusted as the provider's word.
            if result == PaymentResultStatus::Completed && signal != Signal::ProviderSucceeded {
                assert!(
                    matches!(self.ledger, Ledger::Succeeded),
                    "COMPLETED while the provider's ledger is {:?}",
                    self.ledger
                );
            }
        }
        if let Some(request) = effects.request {
            let id = saga.requests_issued;
            saga.requests_issued += 1;
            saga.outstanding = Some(id);
            saga.retry_timer = None;
            self.requests.push_back((id, request));
        }
        if effects.reconcile {
            saga.reconciliations += 1;
        }
        if effects.retry_later {
            saga.retries += 1;
            saga.retry_timer = Some(saga.retries);
            self.timers.push_back(Delivery::RetryTimer(saga.retries));
        }
    }

    /// Delivers one record to the saga, with the processor's filters.
    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::ChargeOutcome(signal) | Delivery::Callback(signal) => self.signal(signal),
            Delivery::PaymentTimer => self.signal(Signal::TimerFired),
            Delivery::Cancel => self.signal(Signal::CancelRequested),
            Delivery::Answer { id, signal } => {
                if self.saga.outstanding == Some(id) {
                    self.saga.outstanding = None;
                    self.signal(signal);
                }
            }
            Delivery::RetryTimer(round) => {
                if self.saga.retry_timer == Some(round) {
                    self.saga.retry_timer = None;
                    self.signal(Signal::RetryDue);
                }
            }
        }
    }

    /// The provider receives a charge attempt; returns whether it was taken (or replayed).
    fn provider_charge(&mut self, succeeds: bool) -> Option<bool> {
        match self.ledger {
            Ledger::None => {
                self.ledger = Ledger::Pending { succeeds };
                Some(true)
            }
            Ledger::Pending { .. } | Ledger::Succeeded | Ledger::Declined | Ledger::Refunded => Some(true),
            Ledger::Voided => Some(false),
        }
    }

    /// The pending charge reaches its verdict; its callbacks leave according to their fate.
    fn provider_decides(&mut self) {
        let Ledger::Pending { succeeds } = self.ledger else { return };
        self.ledger = if succeeds { Ledger::Succeeded } else { Ledger::Declined };
        let verdict = if succeeds { Signal::ProviderSucceeded } else { Signal::ProviderFailed };
        let stale = if succeeds { Signal::ProviderFailed } else { Signal::ProviderSucceeded };
        match self.callback_fate % 4 {
            0 => self.callbacks.push_back(Delivery::Callback(verdict)),
            1 => {
                self.callbacks.push_back(Delivery::Callback(verdict));
                self.callbacks.push_back(Delivery::Callback(verdict));
            }
            2 => {
                self.callbacks.push_back(Delivery::Callback(verdict));
                self.callbacks.push_back(Delivery::Callback(stale));
            }
            _ => {} // lost
        }
    }

    /// The provider's answer to `request` (and what it does to the ledger).
    fn provider_answers(&mut self, request: Request) -> Signal {
        match (request, self.ledger) {
            (Request::Status, Ledger::Succeeded) => Signal::Charged,
            (Request::Status, Ledger::Pending { .. }) => Signal::Inconclusive,
            (Request::Status, _) => Signal::NotCharged,
            (Request::Void, Ledger::None) => {
                self.ledger = Ledger::Voided;
                Signal::Voided
            }
            (Request::Void, Ledger::Voided | Ledger::Declined | Ledger::Refunded) => Signal::Voided,
            (Request::Void, Ledger::Pending { .. }) => Signal::Inconclusive,
            (Request::Void, Ledger::Succeeded) => Signal::Charged,
            (Request::Refund, Ledger::Succeeded | Ledger::Refunded) => {
                self.ledger = Ledger::Refunded;
                Signal::Refunded
            }
            (Request::Refund, Ledger::Pending { .. }) => Signal::Inconclusive,
            (Request::Refund, _) => Signal::NotCharged,
        }
    }

    /// One step chosen by `choice` (and `detail` for its variant); false when the step is not
    /// possible now.
    fn step(&mut self, choice: u8, detail: u8) -> bool {
        match choice % 11 {
            // The dispatcher takes the charge command (and may crash, leaving it on the topic).
            0 => {
                if self.charge_queue.pop_front().is_none() {
                    return false;
                }
                let reached = detail & 1 == 0;
                let taken = if reached { self.provider_charge(detail & 2 == 0) } else { None };
                let report = match (taken, (detail >> 2) % 5) {
                    (_, 0) => {
                        // Crashed after the call, before its outcome: the command comes again.
                        self.charge_queue.push_back(());
                        None
                    }
                    (Some(true), 1) => Some(Signal::DispatchAccepted),
                    (Some(false), 1) => Some(Signal::DispatchRejected),
                    (None, 1) | (_, 2) => Some(Signal::DispatchUncertain),
                    // A later run found the command expired and sent nothing itself.
                    (_, 3) => Some(Signal::DispatchExpired),
                    // Refused after retries (an earlier attempt may have been taken).
                    (_, _) => Some(Signal::DispatchUncertain),
                };
                if let Some(signal) = report {
                    self.outcomes.push_back(Delivery::ChargeOutcome(signal));
                    if detail & 0x80 != 0 {
                        self.outcomes.push_back(Delivery::ChargeOutcome(signal));
                        // answered twice
                    }
                }
                true
            }
            // The dispatcher answers a provider request (or gets no answer, or answers twice).
            1 => {
                let Some((id, request)) = self.requests.pop_front() else { return false };
                let signal =
                    if detail % 4 == 0 { Signal::Inconclusive } else { self.provider_answers(request) };
                self.outcomes.push_back(Delivery::Answer { id, signal });
                if detail & 0x80 != 0 {
                    self.outcomes.push_back(Delivery::Answer { id, signal });
                }
                true
            }
            2 => {
                let was = self.ledger;
                self.provider_decides();
                was != self.ledger
            }
            3 => self.pop(Queue::Outcomes),
            4 => self.pop(Queue::Callbacks),
            5 => self.pop(Queue::Timers),
            // Something delayed overtakes: the last timer goes first (timers are separate records).
            6 => match self.timers.pop_back() {
                Some(timer) => {
                    self.deliver(timer);
                    true
                }
                None => false,
            },
            // Callbacks overtake each other (a stale event before the verdict).
            7 => match self.callbacks.pop_back() {
                Some(callback) => {
                    self.callbacks_reordered |= !self.callbacks.is_empty();
                    self.deliver(callback);
                    true
                }
                None => false,
            },
            // The owner asks to cancel (once, or twice: the same request again).
            8 => {
                if self.cancels.len() >= 2 {
                    return false;
                }
                self.cancels.push_back(Delivery::Cancel);
                true
            }
            9 => self.pop(Queue::Cancels),
            // A charge attempt from a dispatcher that ignores deadlines (or an old one).
            _ => {
                if self.saga.status.is_none() {
                    return false;
                }
                self.provider_charge(detail & 1 == 0);
                true
            }
        }
    }

    fn pop(&mut self, queue: Queue) -> bool {
        let next = match queue {
            Queue::Outcomes => self.outcomes.pop_front(),
            Queue::Callbacks => self.callbacks.pop_front(),
            Queue::Timers => self.timers.pop_front(),
            Queue::Cancels => self.cancels.pop_front(),
        };
        match next {
            Some(delivery) => {
                self.deliver(delivery);
                true
            }
            None => false,
        }
    }

    /// Lets everything finish: no more lost answers, every queue delivered, the provider decides.
    fn drain(&mut self) {
        for _ in 0..1_000 {
            let mut moved = false;
            if self.charge_queue.pop_front().is_some() {
                let taken = self.provider_charge(true);
                let signal =
                    if taken == Some(true) { Signal::DispatchAccepted } else { Signal::DispatchRejected };
                self.outcomes.push_back(Delivery::ChargeOutcome(signal));
                moved = true;
            }
            let was = self.ledger;
            self.provider_decides();
            moved |= was != self.ledger;
            while let Some((id, request)) = self.requests.pop_front() {
                let signal = self.provider_answers(request);
                self.outcomes.push_back(Delivery::Answer { id, signal });
                moved = true;
            }
            for queue in [Queue::Outcomes, Queue::Callbacks, Queue::Timers, Queue::Cancels] {
                while self.pop(queue) {
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the world did not come to rest: {self:?}");
    }
}

#[derive(Clone, Copy)]
enum Queue {
    Outcomes,
    Callbacks,
    Timers,
    Cancels,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_ends_in_one_result_that_agrees_with_the_provider(
        fate in any::<u8>(),
        steps in proptest::collection::vec((any::<u8>(), any::<u8>()), 0..80),
    ) {
        let mut world = World::new(fate);
        for (choice, detail) in steps {
            world.step(choice, detail);
            prop_assert!(world.saga.results.len() <= 1);
        }
        world.drain();
        let saga = &world.saga;
        prop_assert_eq!(saga.results.len(), 1, "exactly one result: {:?}", world);
        prop_assert!(world.released_while_chargeable.is_none(), "{:?}: {:?}", world.released_while_chargeable, world);
        let result = saga.results[0];
        match world.ledger {
            Ledger::Succeeded => prop_assert_eq!(result, PaymentResultStatus::Completed, "{:?}", world),
            Ledger::Refunded => {
                prop_assert_ne!(result, PaymentResultStatus::Completed, "{:?}", world);
                prop_assert_eq!(saga.reconciliations, 1, "a refunded late charge is reconciled once: {:?}", world);
                prop_assert_eq!(saga.status, Some(PaymentStatus::Reconciled));
            }
            // A stale SUCCEEDED that overtook a FAILED verdict is believed; in order, never.
            _ if world.callbacks_reordered => {}
            _ => prop_assert_ne!(result, PaymentResultStatus::Completed, "{:?}", world),
        }
        prop_assert!(saga.reconciliations <= 1, "{:?}", world);
        // Exactly one terminal state, and it is the result's (or the refund of a late charge).
        let status = saga.status.unwrap();
        prop_assert!(status.has_result(), "{:?}", world);
        prop_assert!(
            status.result_status() == Some(result) || matches!(status, PaymentStatus::Refunding | PaymentStatus::Reconciled),
            "terminal {:?} with result {:?}: {:?}", status, result, world
        );
        // A cancel only ever ends a payment the provider never charged (or refunded).
        if result == PaymentResultStatus::Canceled {
            prop_assert!(
                matches!(world.ledger, Ledger::Voided | Ledger::Declined | Ledger::Refunded),
                "CANCELED with ledger {:?}: {:?}", world.ledger, world
            );
        }
        // Money is conserved: the one unit reserved either left the wallet (COMPLETED) and the
        // provider keeps it, or came back to the wallet and the provider keeps nothing.
        let wallet_paid = u8::from(result == PaymentResultStatus::Completed);
        let provider_kept = u8::from(world.ledger == Ledger::Succeeded);
        if !world.callbacks_reordered {
            prop_assert_eq!(wallet_paid, provider_kept, "{:?}", world);
        }
        prop_assert!(saga.outstanding.is_none() && world.requests.is_empty(), "nothing left to ask: {:?}", world);
    }
}

/// The generator is worth something only if it reaches every way a payment can end: each is
/// seen in a few thousand random worlds.
#[test]
fn the_model_reaches_every_ending() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20_000 {
        let mut world = World::new(rng.random());
        for _ in 0..rng.random_range(0..80) {
            world.step(rng.random(), rng.random());
        }
        world.drain();
        let saga = &world.saga;
        seen.insert(format!(
            "{:?} by {:?}, ledger {:?}",
            saga.results[0],
            saga.decided_by.unwrap(),
            world.ledger
        ));
    }
    for ending in [
        "Completed by ProviderSucceeded, ledger Succeeded",
        "Completed by Charged, ledger Succeeded",
        "FailedTimeout by Voided, ledger Voided",
        "Failed by Voided, ledger Voided",
        "Failed by ProviderFailed, ledger Declined",
        "Failed by ProviderFailed, ledger Refunded",
        "Canceled by Voided, ledger Voided",
        "Canceled by Voided, ledger Declined",
    ] {
        assert!(seen.contains(ending), "never reached: {ending}; reached: {seen:#?}");
    }
}
