//! How long a charge may be attempted, and the start-up check that keeps the saga's timer out of
//! the dispatcher's way.
//!
//! The dispatcher retries a charge for up to its budget (`attempts × request timeout +
//! (attempts − 1) × longest back-off`: 40 s with the defaults), and a command may also wait behind
//! others in its partition. If the saga's payment timer fired inside that window, the saga would
//! decide while a charge attempt could still reach the provider. Two rules close the window:
//!
//! 1. **Start-up**: the payment timeout must exceed the dispatch budget plus [`TIMEOUT_MARGIN`],
//!    so a command dispatched promptly has its whole retry budget before the timer.
//! 2. **Deadline**: every `ChargeCommand` carries `notAfter = issuedAt + charge deadline`, with
//!    `charge deadline = payment timeout − request timeout − margin`. The dispatcher starts no
//!    attempt after it, so the last attempt that can reach the provider ends one request timeout
//!    later — still a margin before the timer, however long the command waited.
//!
//! The margin covers what the two clocks and the pipeline add: the timer's lateness (under 1 s),
//! commit intervals and consumer lag between the dispatcher and the saga, and skew between the
//! saga's clock (which sets `notAfter`) and the dispatcher's (which checks it).

use std::time::Duration;

/// Slack between the last moment a charge attempt can reach the provider and the payment timer.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// The dispatcher's retry budget for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchBudget {
    /// Attempts per command (the first included).
    pub attempts_max: u32,
    /// One attempt's budget, connection included.
    pub request_timeout: Duration,
    /// The longest pause between two attempts.
    pub backoff_max: Duration,
}

impl DispatchBudget {
    /// The longest a command's attempts can take: every attempt timing out, every pause the longest.
    pub fn total(&self) -> Duration {
        let attempts = self.attempts_max.max(1);
        self.request_timeout.saturating_mul(attempts) + self.backoff_max.saturating_mul(attempts - 1)
    }
}

/// Why the saga refuses its timeout settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineError {
    /// The timer could fire while the dispatcher is still allowed to charge.
    #[error(
        "payment timeout {payment_timeout_ms} ms is not longer than the dispatch budget {budget_ms} ms \
         plus the margin {margin_ms} ms; raise it above {minimum_ms} ms or shorten the dispatcher's retries"
    )]
    TimeoutTooShort { payment_timeout_ms: u64, budget_ms: u64, margin_ms: u64, minimum_ms: u64 },
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The charge deadline (`notAfter − issuedAt`) for `payment_timeout`, or why the timeout is refused:
/// it must be longer than `budget.total() + margin`.
pub fn charge_deadline(
    payment_timeout: Duration,
    budget: DispatchBudget,
    margin: Duration,
) -> Result<Duration, DeadlineError> {
    let minimum = budget.total() + margin;
    if payment_timeout <= minimum {
        return Err(DeadlineError::TimeoutTooShort {
            payment_timeout_ms: ms(payment_timeout),
            budget_ms: ms(budget.total()),
            margin_ms: ms(margin),
            minimum_ms: ms(minimum),
        });
    }
    // payment_timeout > attempts × request timeout + margin ≥ request timeout + margin.
    Ok(payment_timeout - budget.request_timeout - margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: DispatchBudget = DispatchBudget {
        attempts_max: 6,
        request_timeout: Duration::from_secs(5),
        backoff_max: Duration::from_secs(2),
    };

    #[test]
    fn the_default_budget_is_forty_seconds() {
        assert_eq!(DEFAULTS.total(), Duration::from_secs(40));
        let once = DispatchBudget { attempts_max: 1, ..DEFAULTS };
        assert_eq!(once.total(), Duration::from_secs(5), "one attempt, no pause");
    }

    #[test]
    fn a_timeout_inside_the_budget_plus_margin_is_refused() {
        for short in [30, 40, 50] {
            let refused = charge_deadline(Duration::from_secs(short), DEFAULTS, TIMEOUT_MARGIN).unwrap_err();
            assert_eq!(
                refused,
                DeadlineError::TimeoutTooShort {
                    payment_timeout_ms: short * 1_000,
                    budget_ms: 40_000,
                    margin_ms: 10_000,
                    minimum_ms: 50_000,
                }
            );
        }
        let refused = charge_deadline(Duration::from_secs(30), DEFAULTS, TIMEOUT_MARGIN).unwrap_err();
        assert!(refused.to_string().contains("above 50000 ms"), "{refused}");
    }

    #[test]
    fn the_deadline_leaves_one_attempt_and_the_margin_before_the_timer() {
        let deadline = charge_deadline(Duration::from_secs(60), DEFAULTS, TIMEOUT_MARGIN).unwrap();
        assert_eq!(deadline, Duration::from_secs(45));
        assert_eq!(
            deadline.as_millis(),
            u128::from(crate::saga::processor::defaults::CHARGE_DEADLINE_MS),
            "the saga's default deadline is the default timeout's"
        );
        let just = charge_deadline(Duration::from_millis(50_001), DEFAULTS, TIMEOUT_MARGIN).unwrap();
        assert_eq!(just, Duration::from_millis(35_001));
        assert!(just + DEFAULTS.request_timeout + TIMEOUT_MARGIN <= Duration::from_millis(50_001));
    }
}
