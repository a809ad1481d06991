//! The rules of a wallet's money, without a database: what each movement does to
//! `available` and `reserved`, and when it is refused. The SQL in the crate root asks
//! [`Balance::after`] before it writes and checks the row it gets back against it, so the
//! property test of these rules is a test of what the database is made to do.

use paystream_schemas::Amount;
use rust_decimal::Decimal;

/// The largest balance (`available + reserved`) a wallet may hold: the largest
/// `numeric(14,2)`, enforced by the CHECK `wallets_balance_max` (migration
/// `20261128000004`). With it, a refund (reserved → available) can never overflow.
pub const MAX_BALANCE: Decimal = Decimal::from_parts(276_447_231, 23_283, 0, false, 2);

/// The CHECK that keeps `reserved` non-negative; named in [`Refusal::ReservationShort`] so
/// whoever reads a breach knows which invariant it is.
pub const RESERVED_CHECK: &str = "wallets_reserved_check";

/// A wallet's two balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    /// What the owner may spend.
    pub available: Decimal,
    /// What accepted, unsettled payments hold.
    pub reserved: Decimal,
}

/// One of the four ways money moves in a wallet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Movement {
    /// Money enters: `available += amount`.
    Deposit(Amount),
    /// A payment is accepted: `available → reserved`.
    Reserve(Amount),
    /// A payment completed: its reservation leaves the wallet, `reserved −= amount`.
    Confirm(Amount),
    /// A payment failed or was cancelled: its reservation returns, `reserved → available`.
    Compensate(Amount),
}

impl Movement {
    /// The amount moved.
    pub fn amount(self) -> Amount {
        match self {
            Self::Deposit(a) | Self::Reserve(a) | Self::Confirm(a) | Self::Compensate(a) => a,
        }
    }

    /// What is added to (`available`, `reserved`).
    pub fn deltas(self) -> (Decimal, Decimal) {
        let amount = self.amount().to_decimal();
        match self {
            Self::Deposit(_) => (amount, Decimal::ZERO),
            Self::Reserve(_) => (-amount, amount),
            Self::Confirm(_) => (Decimal::ZERO, -amount),
            Self::Compensate(_) => (amount, -amount),
        }
    }

    /// A short name for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deposit(_) => "deposit",
            Self::Reserve(_) => "reserve",
            Self::Confirm(_) => "confirm",
            Self::Compensate(_) => "compensate",
        }
    }
}

/// Why a movement is refused; a refused movement changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A reservation larger than what the owner may spend: the client's answer (422).
    #[error("insufficient funds: {available} available, {amount} asked")]
    InsufficientFunds { available: Decimal, amount: Amount },
    /// A deposit that would take `available + reserved` past [`MAX_BALANCE`].
    #[error("the wallet's balance {balance} plus {amount} would exceed {MAX_BALANCE}")]
    OverBalanceCap { balance: Decimal, amount: Amount },
    /// A confirmation or compensation larger than the reservation. A pending payment's
    /// amount is always reserved, so this is an invariant breach: the books are already
    /// wrong (or the caller is), never a client's mistake.
    #[error("the reservation {reserved} is smaller than {amount} ({RESERVED_CHECK}: a pending payment is always reserved)")]
    ReservationShort { reserved: Decimal, amount: Amount },
}

impl Balance {
    /// The balance after `movement`, or why it is refused.
    pub fn after(self, movement: Movement) -> Result<Balance, Refusal> {
        let amount = movement.amount();
        let value = amount.to_decimal();
        match movement {
            Movement::Deposit(_) if self.available + self.reserved + value > MAX_BALANCE => {
                return Err(Refusal::OverBalanceCap { balance: self.available + self.reserved, amount })
            }
            Movement::Reserve(_) if self.available < value => {
                return Err(Refusal::InsufficientFunds { available: self.available, amount })
            }
            Movement::Confirm(_) | Movement::Compensate(_) if self.reserved < value => {
                return Err(Refusal::ReservationShort { reserved: self.reserved, amount })
            }
            _ => {}
        }
        let (available_delta, reserved_delta) = movement.deltas();
        Ok(Balance { available: self.available + available_delta, reserved: self.reserved + reserved_delta })
    }
}

#[cfg(test)]
mod tests {
    use paystream_schemas::money::AMOUNT_MAX_MINOR;
    use proptest::prelude::*;

    use super::*;

    /// Longest random history a case runs.
    const STEPS_MAX: usize = 200;
    /// The largest balance in minor units.
    const MAX_BALANCE_MINOR: i64 = 99_999_999_999_999;

    /// A step of a random history. Settling steps pick one of the pending payments (by
    /// index) or, with `short`, an amount larger than the whole reservation.
    #[derive(Clone, Debug)]
    enum Step {
        Deposit(i64),
        Reserve(i64),
        Confirm { pick: usize, short: i64 },
        Compensate { pick: usize, short: i64 },
    }

    fn amount_minor() -> impl Strategy<Value = i64> {
        prop_oneof![1..=10_000i64, 1..=AMOUNT_MAX_MINOR, Just(AMOUNT_MAX_MINOR)]
    }

    fn step() -> impl Strategy<Value = Step> {
        // `short` 0 settles a pending payment; otherwise it is the excess over `reserved`.
        let short = prop_oneof![4 => Just(0i64), 1 => 1..=1_000i64];
        prop_oneof![
            amount_minor().prop_map(Step::Deposit),
            amount_minor().prop_map(Step::Reserve),
            (any::<usize>(), short.clone()).prop_map(|(pick, short)| Step::Confirm { pick, short }),
            (any::<usize>(), short).prop_map(|(pick, short)| Step::Compensate { pick, short }),
        ]
    }

    /// What was deposited before the history: an empty wallet, any, or one near the cap.
    fn opening_minor() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(0i64),
            0..=MAX_BALANCE_MINOR,
            (MAX_BALANCE_MINOR - 3 * AMOUNT_MAX_MINOR)..=MAX_BALANCE_MINOR,
        ]
    }

    fn amount(minor: i64) -> Amount {
        Amount::from_minor(minor).expect("strategies generate valid amounts")
    }

    /// The movement a step means in `balance`, and the index of the pending payment it
    /// settles; `None` when a short settlement has no valid amount (the reservation is
    /// already near the largest amount).
    fn movement(step: &Step, balance: Balance, pending: &[Amount]) -> Option<(Movement, Option<usize>)> {
        let settle = |pick: usize, short: i64| -> Option<(Amount, Option<usize>)> {
            if short == 0 && !pending.is_empty() {
                let index = pick % pending.len();
                return Some((pending[index], Some(index)));
            }
            let mut reserved = balance.reserved;
            reserved.rescale(2);
            let reserved_minor = i64::try_from(reserved.mantissa()).ok()?;
            Amount::from_minor(reserved_minor + short.max(1)).ok().map(|a| (a, None))
        };
        match *step {
            Step::Deposit(m) => Some((Movement::Deposit(amount(m)), None)),
            Step::Reserve(m) => Some((Movement::Reserve(amount(m)), None)),
            Step::Confirm { pick, short } => settle(pick, short).map(|(a, i)| (Movement::Confirm(a), i)),
            Step::Compensate { pick, short } => {
                settle(pick, short).map(|(a, i)| (Movement::Compensate(a), i))
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// After every step: `available + reserved = deposits − confirmed`, `reserved =
        /// Σ pending`, both non-negative and within the cap; a pending payment can always
        /// be settled; a refusal is justified by its rule and changes nothing.
        #[test]
        fn money_is_conserved_across_any_history(
            opening in opening_minor(),
            steps in proptest::collection::vec(step(), 0..STEPS_MAX),
        ) {
            let mut balance = Balance { available: Decimal::new(opening, 2), reserved: Decimal::ZERO };
            let mut deposited = balance.available;
            let mut confirmed = Decimal::ZERO;
            let mut pending: Vec<Amount> = Vec::new();
            for step in &steps {
                let Some((movement, settles)) = movement(step, balance, &pending) else { continue };
                let value = movement.amount().to_decimal();
                match balance.after(movement) {
                    Ok(next) => {
                        match movement {
                            Movement::Deposit(_) => deposited += value,
                            Movement::Reserve(a) => pending.push(a),
                            Movement::Confirm(_) | Movement::Compensate(_) => {
                                let index = settles.expect("only a pending payment may be settled");
                                pending.swap_remove(index);
                                if matches!(movement, Movement::Confirm(_)) {
                                    confirmed += value;
                                }
                            }
                        }
                        balance = next;
                    }
                    Err(refusal) => {
                        let justified = match &refusal {
                            Refusal::InsufficientFunds { .. } => {
                                matches!(movement, Movement::Reserve(_)) && balance.available < value
                            }
                            Refusal::OverBalanceCap { .. } => {
                                matches!(movement, Movement::Deposit(_))
                                    && balance.available + balance.reserved + value > MAX_BALANCE
                            }
                            Refusal::ReservationShort { .. } => {
                                matches!(movement, Movement::Confirm(_) | Movement::Compensate(_))
                                    && balance.reserved < value
                            }
                        };
                        prop_assert!(justified, "{movement:?} on {balance:?} refused: {refusal}");
                        prop_assert!(settles.is_none(), "a pending payment's settlement was refused: {refusal}");
                    }
                }
                prop_assert_eq!(balance.available + balance.reserved, deposited - confirmed, "after {:?}", movement);
                prop_assert_eq!(balance.reserved, pending.iter().map(|a| a.to_decimal()).sum::<Decimal>());
                prop_assert!(balance.available >= Decimal::ZERO && balance.reserved >= Decimal::ZERO);
                prop_assert!(balance.available + balance.reserved <= MAX_BALANCE);
            }
        }
    }

    #[test]
    fn each_movement_moves_its_amount_the_documented_way() {
        let start = Balance { available: Decimal::new(10_000, 2), reserved: Decimal::new(2_500, 2) };
        let a = amount(1_000);
        let ten = Decimal::new(1_000, 2);
        let cases = [
            (Movement::Deposit(a), start.available + ten, start.reserved),
            (Movement::Reserve(a), start.available - ten, start.reserved + ten),
            (Movement::Confirm(a), start.available, start.reserved - ten),
            (Movement::Compensate(a), start.available + ten, start.reserved - ten),
        ];
        for (movement, available, reserved) in cases {
            assert_eq!(start.after(movement), Ok(Balance { available, reserved }), "{}", movement.name());
        }
    }

    #[test]
    fn refusals_sit_exactly_at_their_bounds() {
        let cent = amount(1);
        let at_cap = Balance { available: MAX_BALANCE - Decimal::ONE, reserved: Decimal::ONE };
        assert!(matches!(at_cap.after(Movement::Deposit(cent)), Err(Refusal::OverBalanceCap { .. })));
        let under = Balance { available: MAX_BALANCE - Decimal::new(1, 2), reserved: Decimal::ZERO };
        assert_eq!(under.after(Movement::Deposit(cent)).map(|b| b.available), Ok(MAX_BALANCE));
        // A refund at the cap leaves the sum alone, so it applies.
        assert_eq!(at_cap.after(Movement::Compensate(amount(100))).map(|b| b.available), Ok(MAX_BALANCE));

        let exact = Balance { available: Decimal::new(1, 2), reserved: Decimal::new(1, 2) };
        assert!(exact.after(Movement::Reserve(cent)).is_ok());
        assert!(exact.after(Movement::Confirm(cent)).is_ok());
        let two = amount(2);
        assert!(matches!(exact.after(Movement::Reserve(two)), Err(Refusal::InsufficientFunds { .. })));
        assert!(matches!(exact.after(Movement::Confirm(two)), Err(Refusal::ReservationShort { .. })));
        assert!(matches!(exact.after(Movement::Compensate(two)), Err(Refusal::ReservationShort { .. })));
        assert!(Refusal::ReservationShort { reserved: Decimal::ZERO, amount: two }
            .to_string()
            .contains(RESERVED_CHECK));
    }

    #[test]
    fn the_balance_cap_is_the_largest_numeric_14_2() {
        assert_eq!(MAX_BALANCE, Decimal::from_str_exact("999999999999.99").unwrap());
        assert_eq!(MAX_BALANCE, Decimal::new(MAX_BALANCE_MINOR, 2));
    }
}
