//! The invariants, as pure functions of a [`Snapshot`]: nothing here reads a database or a
//! topic, so every rule is unit-tested on hand-made snapshots.
//!
//! Each rule is DESIGN.md's wording made checkable at a quiet moment (nothing in flight):
//! 1. money is conserved per wallet and in total (`available + reserved = deposits − completed
//!    debits`), and `reserved` is exactly what pending payments hold (0 once nothing is in flight);
//! 2. every accepted payment has exactly one `PaymentResult` on the results topic (read
//!    committed), with the id `PaymentResult::id_for(paymentId, status)`, and settlement applied
//!    that result, once;
//! 3. no result exists for a payment that was never accepted;
//! 4. the provider's ledger agrees with the wallet: the provider kept a charge ⇔ the wallet was
//!    debited;
//! 5. every payment timeout fired within its due time plus the tolerance;
//! 6. after Jepsen's Kafka checkers: two reads of the same topic agree offset by offset (no
//!    offset holding two values), and no record a read_committed reader sees is missing from a
//!    read_uncommitted one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_schemas::events::{PaymentResult, PaymentResultStatus};
use rust_decimal::Decimal;
use uuid::Uuid;

/// A wallet's balances and the money that entered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wallet {
    /// The wallet.
    pub wallet_id: Uuid,
    /// What the owner may spend.
    pub available: Decimal,
    /// What pending payments hold.
    pub reserved: Decimal,
    /// The sum of its deposits.
    pub deposited: Decimal,
}

/// How the wallet database records a payment (`wallet_transactions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerStatus {
    /// Accepted, not settled: its amount is reserved.
    Pending,
    /// Settled COMPLETED: its amount left the wallet.
    Completed,
    /// Settled as a failure: its reservation was returned.
    Cancelled,
}

/// One accepted payment, as the wallet database has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    /// The payment.
    pub payment_id: Uuid,
    /// The wallet it debits.
    pub wallet_id: Uuid,
    /// Its amount.
    pub amount: Decimal,
    /// Settled or not.
    pub status: LedgerStatus,
    /// The result settlement applied (`None` while pending).
    pub settled_result_id: Option<Uuid>,
    /// The status of that result.
    pub settled_status: Option<PaymentResultStatus>,
    /// When the API accepted it.
    pub accepted_at: DateTime<Utc>,
}

/// A `PaymentResult` read from the results topic, with where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRecord {
    /// Partition and offset.
    pub position: (i32, i64),
    /// The result.
    pub result: PaymentResult,
}

/// A payment timeout that fired (`TimerFired` of kind PAYMENT_TIMEOUT on the timers topic).
#[derive(Debug, Clone, PartialEq)]
pub struct FiredTimeout {
    /// The payment.
    pub payment_id: Uuid,
    /// When it was due.
    pub due_at: DateTime<Utc>,
    /// When it fired.
    pub fired_at: DateTime<Utc>,
}

/// What the provider's own ledger says of a payment's charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderCharge {
    /// The provider took the money and kept it.
    Charged,
    /// The provider never took it, refused it, voided it or refunded it.
    NotCharged,
    /// The provider's ledger does not know the payment any more (e.g. the simulator restarted).
    Unknown,
}

/// Two reads of one topic that disagree at an offset, or a committed record an uncommitted read
/// lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAnomaly {
    /// Topic, partition, offset.
    pub topic: String,
    /// Where.
    pub position: (i32, i64),
    /// What is wrong, in words.
    pub what: String,
}

/// Everything the audit looks at, read at one quiet moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Wallets in scope.
    pub wallets: Vec<Wallet>,
    /// Their payments.
    pub payments: Vec<Payment>,
    /// Every payment id the wallet database knows (in scope or not), to tell an orphan result
    /// from one of another scope.
    pub known_payment_ids: BTreeSet<Uuid>,
    /// Results on the results topic (read_committed), of every wallet.
    pub results: Vec<ResultRecord>,
    /// Fired payment timeouts.
    pub fired_timeouts: Vec<FiredTimeout>,
    /// The provider's word per payment in scope; empty when the provider was not asked.
    pub provider: HashMap<Uuid, ProviderCharge>,
    /// Anomalies found while reading the logs themselves.
    pub log_anomalies: Vec<LogAnomaly>,
    /// Records of the topics read that are not their contract (dead-lettered by the consumers),
    /// by topic: reported, not a violation.
    pub poison: BTreeMap<String, usize>,
}

/// The audit's settings.
#[derive(Debug, Clone)]
pub struct Rules {
    /// How late a fired timeout may be after its due time (the timer processor's punctuation
    /// interval plus commit and scheduling slack).
    pub timer_tolerance: Duration,
    /// Whether the provider's ledger was read (and so must be checked).
    pub check_provider: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self { timer_tolerance: DEFAULT_TIMER_TOLERANCE, check_provider: true }
    }
}

/// The tolerance of invariant 5, as the README states it.
pub const DEFAULT_TIMER_TOLERANCE: Duration = Duration::from_secs(2);

/// One broken rule, naming what broke it.
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// `available + reserved ≠ deposits − completed debits`.
    MoneyNotConserved { wallet_id: Uuid, holds: Decimal, should: Decimal },
    /// `reserved` differs from what pending payments hold.
    ReservedMismatch { wallet_id: Uuid, reserved: Decimal, pending: Decimal },
    /// A payment is still pending at a moment that should be quiet.
    InFlight { payment_id: Uuid },
    /// An accepted payment without a result.
    NoResult { payment_id: Uuid },
    /// A payment with more than one result record.
    SeveralResults { payment_id: Uuid, count: usize },
    /// A result whose id is not `id_for(paymentId, status)`.
    ForeignResultId { payment_id: Uuid, result_id: Uuid },
    /// A result for a payment the wallet database never accepted.
    OrphanResult { payment_id: Uuid, result_id: Uuid },
    /// A result that disagrees with its payment (wallet or amount).
    ResultDisagrees { payment_id: Uuid, what: String },
    /// Settlement applied nothing, or something other than the payment's one result.
    NotSettled { payment_id: Uuid, what: String },
    /// The provider kept a charge the wallet did not pay, or the reverse.
    ProviderDisagrees { payment_id: Uuid, provider: ProviderCharge, wallet: LedgerStatus },
    /// A payment timeout fired later than its due time plus the tolerance.
    LateTimeout { payment_id: Uuid, late_ms: i64 },
    /// A FAILED_TIMEOUT result whose timer never fired.
    TimeoutWithoutTimer { payment_id: Uuid },
    /// The log disagrees with itself.
    Log(LogAnomaly),
}

impl Violation {
    /// A short stable name of the rule, for the summary.
    pub fn rule(&self) -> &'static str {
        match self {
            Violation::MoneyNotConserved { .. } => "money conserved",
            Violation::ReservedMismatch { .. } => "reserved = pending",
            Violation::InFlight { .. } => "nothing in flight",
            Violation::NoResult { .. } | Violation::SeveralResults { .. } => "exactly one result",
            Violation::ForeignResultId { .. } => "result id = id_for",
            Violation::OrphanResult { .. } => "no result without a payment",
            Violation::ResultDisagrees { .. } => "result matches payment",
            Violation::NotSettled { .. } => "settled once",
            Violation::ProviderDisagrees { .. } => "charged ⇔ debited",
            Violation::LateTimeout { .. } | Violation::TimeoutWithoutTimer { .. } => "timeout in time",
            Violation::Log(_) => "log consistent",
        }
    }

    /// Every rule name, in report order.
    pub const RULES: [&'static str; 11] = [
        "money conserved",
        "reserved = pending",
        "nothing in flight",
        "exactly one result",
        "result id = id_for",
        "no result without a payment",
        "result matches payment",
        "settled once",
        "charged ⇔ debited",
        "timeout in time",
        "log consistent",
    ];
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::MoneyNotConserved { wallet_id, holds, should } => {
                write!(f, "wallet {wallet_id} holds {holds}, deposits minus completed debits are {should}")
            }
            Violation::ReservedMismatch { wallet_id, reserved, pending } => {
                write!(f, "wallet {wallet_id} reserves {reserved}, its pending payments hold {pending}")
            }
            Violation::InFlight { payment_id } => write!(f, "payment {payment_id} is still pending"),
            Violation::NoResult { payment_id } => write!(f, "payment {payment_id} has no result"),
            Violation::SeveralResults { payment_id, count } => {
                write!(f, "payment {payment_id} has {count} result records")
            }
            Violation::ForeignResultId { payment_id, result_id } => {
                write!(f, "payment {payment_id}: result id {result_id} is not id_for(payment, status)")
            }
            Violation::OrphanResult { payment_id, result_id } => {
                write!(f, "result {result_id} for payment {payment_id}, which was never accepted")
            }
            Violation::ResultDisagrees { payment_id, what } => write!(f, "payment {payment_id}: {what}"),
            Violation::NotSettled { payment_id, what } => write!(f, "payment {payment_id}: {what}"),
            Violation::ProviderDisagrees { payment_id, provider, wallet } => {
                write!(f, "payment {payment_id}: provider {provider:?}, wallet {wallet:?}")
            }
            Violation::LateTimeout { payment_id, late_ms } => {
                write!(f, "payment {payment_id}: timeout fired {late_ms} ms after its due time")
            }
            Violation::TimeoutWithoutTimer { payment_id } => {
                write!(f, "payment {payment_id} failed by timeout, but no timeout fired")
            }
            Violation::Log(a) => write!(f, "{} {}@{}: {}", a.topic, a.position.0, a.position.1, a.what),
        }
    }
}

/// What the audit found: the counts it checked and every violation.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Wallets checked.
    pub wallets: usize,
    /// Payments checked, by ledger status.
    pub payments: BTreeMap<&'static str, usize>,
    /// Results checked (in scope).
    pub results: usize,
    /// Payments whose provider ledger was compared.
    pub provider_checked: usize,
    /// Fired timeouts checked.
    pub timeouts: usize,
    /// Total money: deposits, completed debits, available, reserved.
    pub deposited: Decimal,
    /// Sum of completed debits.
    pub debited: Decimal,
    /// Sum of available.
    pub available: Decimal,
    /// Sum of reserved.
    pub reserved: Decimal,
    /// Poison records skipped on the topics read, by topic.
    pub poison: BTreeMap<String, usize>,
    /// What broke.
    pub violations: Vec<Violation>,
}

impl Findings {
    /// Whether every rule held.
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }
}

fn ledger_name(status: LedgerStatus) -> &'static str {
    match status {
        LedgerStatus::Pending => "pending",
        LedgerStatus::Completed => "completed",
        LedgerStatus::Cancelled => "cancelled",
    }
}

/// Checks every rule on `snapshot`.
pub fn check(snapshot: &Snapshot, rules: &Rules) -> Findings {
    let mut findings =
        Findings { wallets: snapshot.wallets.len(), poison: snapshot.poison.clone(), ..Findings::default() };
    for payment in &snapshot.payments {
        *findings.payments.entry(ledger_name(payment.status)).or_default() += 1;
    }
    check_money(snapshot, &mut findings);
    check_results(snapshot, &mut findings);
    if rules.check_provider {
        check_provider(snapshot, &mut findings);
    }
    check_timeouts(snapshot, rules, &mut findings);
    findings.violations.extend(snapshot.log_anomalies.iter().cloned().map(Violation::Log));
    findings
}

fn check_money(snapshot: &Snapshot, findings: &mut Findings) {
    let mut debited: HashMap<Uuid, Decimal> = HashMap::new();
    let mut pending: HashMap<Uuid, Decimal> = HashMap::new();
    for p in &snapshot.payments {
        match p.status {
            LedgerStatus::Completed => *debited.entry(p.wallet_id).or_default() += p.amount,
            LedgerStatus::Pending => {
                *pending.entry(p.wallet_id).or_default() += p.amount;
                findings.violations.push(Violation::InFlight { payment_id: p.payment_id });
            }
            LedgerStatus::Cancelled => {}
        }
    }
    for w in &snapshot.wallets {
        let debit = debited.get(&w.wallet_id).copied().unwrap_or_default();
        let held = pending.get(&w.wallet_id).copied().unwrap_or_default();
        let holds = w.available + w.reserved;
        let should = w.deposited - debit;
        if holds != should {
            findings.violations.push(Violation::MoneyNotConserved { wallet_id: w.wallet_id, holds, should });
        }
        if w.reserved != held {
            findings.violations.push(Violation::ReservedMismatch {
                wallet_id: w.wallet_id,
                reserved: w.reserved,
                pending: held,
            });
        }
        findings.deposited += w.deposited;
        findings.debited += debit;
        findings.available += w.available;
        findings.reserved += w.reserved;
    }
}

fn check_results(snapshot: &Snapshot, findings: &mut Findings) {
    let in_scope: HashMap<Uuid, &Payment> = snapshot.payments.iter().map(|p| (p.payment_id, p)).collect();
    let wallets: BTreeSet<Uuid> = snapshot.wallets.iter().map(|w| w.wallet_id).collect();
    let mut by_payment: HashMap<Uuid, Vec<&PaymentResult>> = HashMap::new();
    for record in &snapshot.results {
        let r = &record.result;
        if !in_scope.contains_key(&r.payment_id) {
            // A result of another scope's wallet is that scope's business; one for a payment
            // nobody accepted is everyone's.
            if !snapshot.known_payment_ids.contains(&r.payment_id) && wallets.contains(&r.wallet_id) {
                findings.violations.push(Violation::OrphanResult {
                    payment_id: r.payment_id,
                    result_id: r.payment_result_id,
                });
            }
            continue;
        }
        // The saga forwards a result again, unchanged, when its payment is nudged (issue 11's
        // `paystream reservations nudge`): a copy of a result is that result, applied once.
        let seen = by_payment.entry(r.payment_id).or_default();
        if !seen.contains(&r) {
            findings.results += 1;
            seen.push(r);
        }
    }
    for payment in &snapshot.payments {
        let results = by_payment.get(&payment.payment_id).map(Vec::as_slice).unwrap_or_default();
        let result = match results {
            [] => {
                if payment.status != LedgerStatus::Pending {
                    findings.violations.push(Violation::NotSettled {
                        payment_id: payment.payment_id,
                        what: "settled without a result on the results topic".into(),
                    });
                }
                findings.violations.push(Violation::NoResult { payment_id: payment.payment_id });
                continue;
            }
            [one] => *one,
            several => {
                findings
                    .violations
                    .push(Violation::SeveralResults { payment_id: payment.payment_id, count: several.len() });
                several[0]
            }
        };
        check_one_result(payment, result, findings);
    }
}

fn check_one_result(payment: &Payment, result: &PaymentResult, findings: &mut Findings) {
    let id = payment.payment_id;
    if result.payment_result_id != PaymentResult::id_for(id, result.status) {
        findings
            .violations
            .push(Violation::ForeignResultId { payment_id: id, result_id: result.payment_result_id });
    }
    if result.wallet_id != payment.wallet_id {
        findings.violations.push(Violation::ResultDisagrees {
            payment_id: id,
            what: format!("result names wallet {}, the payment {}", result.wallet_id, payment.wallet_id),
        });
    }
    if result.amount.to_decimal() != payment.amount {
        findings.violations.push(Violation::ResultDisagrees {
            payment_id: id,
            what: format!("result amount {}, payment amount {}", result.amount, payment.amount),
        });
    }
    let expected = match result.status {
        PaymentResultStatus::Completed => LedgerStatus::Completed,
        _ => LedgerStatus::Cancelled,
    };
    if payment.status == LedgerStatus::Pending {
        findings.violations.push(Violation::NotSettled {
            payment_id: id,
            what: format!("result {} was never applied", result.status.symbol()),
        });
    } else if payment.status != expected
        || payment.settled_result_id != Some(result.payment_result_id)
        || payment.settled_status != Some(result.status)
    {
        findings.violations.push(Violation::NotSettled {
            payment_id: id,
            what: format!(
                "settled as {:?} ({:?}), the result is {} ({})",
                payment.status,
                payment.settled_result_id,
                result.status.symbol(),
                result.payment_result_id
            ),
        });
    }
}

fn check_provider(snapshot: &Snapshot, findings: &mut Findings) {
    for payment in &snapshot.payments {
        let Some(&provider) = snapshot.provider.get(&payment.payment_id) else { continue };
        findings.provider_checked += 1;
        let agrees = match (provider, payment.status) {
            (ProviderCharge::Charged, LedgerStatus::Completed) => true,
            (ProviderCharge::NotCharged, LedgerStatus::Cancelled) => true,
            // Pending is reported as in flight already; the provider may still be deciding.
            (_, LedgerStatus::Pending) => true,
            _ => false,
        };
        if !agrees {
            findings.violations.push(Violation::ProviderDisagrees {
                payment_id: payment.payment_id,
                provider,
                wallet: payment.status,
            });
        }
    }
}

fn check_timeouts(snapshot: &Snapshot, rules: &Rules, findings: &mut Findings) {
    let in_scope: BTreeSet<Uuid> = snapshot.payments.iter().map(|p| p.payment_id).collect();
    let tolerance_ms = i64::try_from(rules.timer_tolerance.as_millis()).unwrap_or(i64::MAX);
    let mut fired = BTreeSet::new();
    for t in snapshot.fired_timeouts.iter().filter(|t| in_scope.contains(&t.payment_id)) {
        findings.timeouts += 1;
        fired.insert(t.payment_id);
        let late_ms = (t.fired_at - t.due_at).num_milliseconds();
        if late_ms > tolerance_ms {
            findings.violations.push(Violation::LateTimeout { payment_id: t.payment_id, late_ms });
        }
    }
    for record in &snapshot.results {
        let r = &record.result;
        if r.status == PaymentResultStatus::FailedTimeout
            && in_scope.contains(&r.payment_id)
            && !fired.contains(&r.payment_id)
        {
            findings.violations.push(Violation::TimeoutWithoutTimer { payment_id: r.payment_id });
        }
    }
}

#[cfg(test)]
mod tests {
    use paystream_schemas::Amount;

    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().expect("a decimal literal")
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("in range")
    }

    fn result(p: &Payment, status: PaymentResultStatus) -> ResultRecord {
        ResultRecord {
            position: (0, 0),
            result: PaymentResult {
                payment_result_id: PaymentResult::id_for(p.payment_id, status),
                payment_id: p.payment_id,
                wallet_id: p.wallet_id,
                amount: Amount::try_from_decimal(p.amount).expect("two places"),
                status,
                reason: String::new(),
                decided_at: at(5),
            },
        }
    }

    /// One wallet that received 100.00 and paid 30.00 (completed) and 20.00 (failed, refunded).
    fn settled_world() -> Snapshot {
        let wallet_id = Uuid::new_v4();
        let paid = Payment {
            payment_id: Uuid::new_v4(),
            wallet_id,
            amount: dec("30.00"),
            status: LedgerStatus::Completed,
            settled_result_id: None,
            settled_status: Some(PaymentResultStatus::Completed),
            accepted_at: at(0),
        };
        let failed = Payment {
            amount: dec("20.00"),
            payment_id: Uuid::new_v4(),
            status: LedgerStatus::Cancelled,
            settled_status: Some(PaymentResultStatus::FailedTimeout),
            ..paid.clone()
        };
        let results = vec![
            result(&paid, PaymentResultStatus::Completed),
            result(&failed, PaymentResultStatus::FailedTimeout),
        ];
        let mut payments = vec![paid, failed];
        for (p, r) in payments.iter_mut().zip(&results) {
            p.settled_result_id = Some(r.result.payment_result_id);
        }
        Snapshot {
            wallets: vec![Wallet {
                wallet_id,
                available: dec("70.00"),
                reserved: dec("0.00"),
                deposited: dec("100.00"),
            }],
            known_payment_ids: payments.iter().map(|p| p.payment_id).collect(),
            provider: HashMap::from([
                (payments[0].payment_id, ProviderCharge::Charged),
                (payments[1].payment_id, ProviderCharge::NotCharged),
            ]),
            fired_timeouts: vec![FiredTimeout {
                payment_id: payments[1].payment_id,
                due_at: at(30),
                fired_at: at(31),
            }],
            payments,
            results,
            log_anomalies: vec![],
            poison: BTreeMap::new(),
        }
    }

    fn rules_broken(snapshot: &Snapshot) -> Vec<&'static str> {
        let mut rules: Vec<_> =
            check(snapshot, &Rules::default()).violations.iter().map(Violation::rule).collect();
        rules.dedup();
        rules
    }

    #[test]
    fn a_settled_world_is_clean() {
        let findings = check(&settled_world(), &Rules::default());
        assert!(findings.clean(), "{:?}", findings.violations);
        assert_eq!(findings.deposited, dec("100.00"));
        assert_eq!(findings.debited, dec("30.00"));
        assert_eq!(findings.provider_checked, 2);
        assert_eq!(findings.timeouts, 1);
    }

    #[test]
    fn created_or_lost_money_is_found() {
        let mut s = settled_world();
        s.wallets[0].available = dec("70.01");
        assert_eq!(rules_broken(&s), vec!["money conserved"]);
    }

    #[test]
    fn a_stranded_reservation_is_in_flight_and_has_no_result() {
        let mut s = settled_world();
        s.payments[1].status = LedgerStatus::Pending;
        s.payments[1].settled_result_id = None;
        s.payments[1].settled_status = None;
        s.wallets[0].available = dec("50.00");
        s.wallets[0].reserved = dec("20.00");
        s.results.pop();
        s.fired_timeouts.clear();
        assert_eq!(rules_broken(&s), vec!["nothing in flight", "exactly one result"]);
    }

    #[test]
    fn a_refund_while_the_provider_kept_the_charge_is_found() {
        let mut s = settled_world();
        s.provider.insert(s.payments[1].payment_id, ProviderCharge::Charged);
        assert_eq!(rules_broken(&s), vec!["charged ⇔ debited"]);
    }

    #[test]
    fn two_results_and_foreign_ids_and_orphans_are_found() {
        let mut s = settled_world();
        let second = result(&s.payments[0], PaymentResultStatus::Failed);
        s.results.push(second);
        assert_eq!(rules_broken(&s), vec!["exactly one result"]);

        // A re-forwarded copy (a nudge) is the same result; a copy that differs is a second one.
        let mut s = settled_world();
        let mut copy = s.results[0].clone();
        copy.position.1 += 100;
        s.results.push(copy.clone());
        assert!(rules_broken(&s).is_empty(), "{:?}", check(&s, &Rules::default()).violations);
        copy.result.reason = "another reason".into();
        s.results.push(copy);
        assert_eq!(rules_broken(&s), vec!["exactly one result"]);

        let mut s = settled_world();
        s.results[0].result.payment_result_id = Uuid::new_v4();
        s.payments[0].settled_result_id = Some(s.results[0].result.payment_result_id);
        assert_eq!(rules_broken(&s), vec!["result id = id_for"]);

        let mut s = settled_world();
        let mut orphan = s.results[0].clone();
        orphan.result.payment_id = Uuid::new_v4();
        s.results.push(orphan);
        assert_eq!(rules_broken(&s), vec!["no result without a payment"]);
    }

    #[test]
    fn a_result_settled_twice_or_wrongly_is_found() {
        let mut s = settled_world();
        s.payments[0].status = LedgerStatus::Cancelled;
        s.wallets[0].available = dec("100.00");
        let broken = rules_broken(&s);
        assert!(broken.contains(&"settled once"), "{broken:?}");
        assert!(broken.contains(&"charged ⇔ debited"), "{broken:?}");
    }

    #[test]
    fn late_and_missing_timeouts_are_found() {
        let mut s = settled_world();
        s.fired_timeouts[0].fired_at = at(33);
        assert_eq!(rules_broken(&s), vec!["timeout in time"]);
        let mut s = settled_world();
        s.fired_timeouts.clear();
        assert_eq!(rules_broken(&s), vec!["timeout in time"]);
    }

    #[test]
    fn other_scopes_results_are_not_ours() {
        let mut s = settled_world();
        let mut theirs = s.results[0].clone();
        theirs.result.payment_id = Uuid::new_v4();
        theirs.result.wallet_id = Uuid::new_v4();
        s.results.push(theirs);
        assert!(check(&s, &Rules::default()).clean());
    }
}
