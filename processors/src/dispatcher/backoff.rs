//! How the dispatcher spaces its HTTP attempts: exponential backoff with full jitter.
//!
//! The pause after the n-th failed attempt is uniform in `0..=min(max, initial·2^(n-1))`
//! (AWS's "full jitter"): the ceiling grows like plain exponential backoff, and the
//! randomness spreads out the retries of many commands that failed together (a provider
//! outage), so they do not come back as one wave. The attempts are capped
//! ([`HttpRetryPolicy::attempts_max`]), so one command holds its partition for at most
//! `attempts_max × request timeout + (attempts_max − 1) × backoff_max`
//! (defaults: 6 × 5 s + 5 × 2 s = 40 s).

use std::time::Duration;

use rand::Rng;

/// HTTP attempts per command, the first included.
pub const ATTEMPTS_MAX: u32 = 6;
/// Ceiling of the first pause.
pub const BACKOFF_INITIAL_MS: u64 = 100;
/// Largest ceiling: the doubling stops here.
pub const BACKOFF_MAX_MS: u64 = 2_000;

/// How many times and how far apart the provider is called for one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRetryPolicy {
    /// Attempts in total, at least 1.
    pub attempts_max: u32,
    /// Ceiling of the pause after the first failure.
    pub backoff_initial: Duration,
    /// Largest ceiling of any pause.
    pub backoff_max: Duration,
}

impl Default for HttpRetryPolicy {
    fn default() -> Self {
        Self {
            attempts_max: ATTEMPTS_MAX,
            backoff_initial: Duration::from_millis(BACKOFF_INITIAL_MS),
            backoff_max: Duration::from_millis(BACKOFF_MAX_MS),
        }
    }
}

impl HttpRetryPolicy {
    /// The upper bound of the pause after `failures` failed attempts (`failures` ≥ 1).
    pub fn ceiling(&self, failures: u32) -> Duration {
        // 2^(failures-1), saturating instead of overflowing for absurd counts.
        let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_initial.saturating_mul(factor).min(self.backoff_max)
    }

    /// The pause after `failures` failed attempts: uniform in `0..=ceiling`, in microseconds.
    pub fn full_jitter(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let ceiling_us = u64::try_from(self.ceiling(failures).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling_us))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn ceilings_double_then_stay_at_the_cap() {
        let policy = HttpRetryPolicy::default();
        let ceilings: Vec<u64> = (1..=8).map(|n| policy.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_600, 2_000, 2_000, 2_000]);
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_millis(BACKOFF_MAX_MS), "no overflow");
        assert_eq!(policy.ceiling(0), Duration::from_millis(BACKOFF_INITIAL_MS));
    }

    #[test]
    fn jittered_pauses_stay_within_zero_and_the_ceiling_and_spread_over_it() {
        let policy = HttpRetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(6);
        for failures in 1..=12 {
            let ceiling = policy.ceiling(failures);
            let pauses: Vec<Duration> = (0..2_000).map(|_| policy.full_jitter(failures, &mut rng)).collect();
            assert!(pauses.iter().all(|p| *p <= ceiling), "{failures}: above {ceiling:?}");
            let mean = pauses.iter().sum::<Duration>() / 2_000;
            let (low, high) = (ceiling.mul_f64(0.45), ceiling.mul_f64(0.55));
            assert!(low <= mean && mean <= high, "{failures}: mean {mean:?} not about half of {ceiling:?}");
            assert!(pauses.iter().any(|p| *p < ceiling / 10), "{failures}: full jitter reaches near zero");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_pauses() {
        let policy = HttpRetryPolicy::default();
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..=6).map(|n| policy.full_jitter(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn the_worst_case_hold_of_a_partition_is_bounded_as_documented() {
        let policy = HttpRetryPolicy::default();
        let request_timeout = Duration::from_millis(super::super::REQUEST_TIMEOUT_MS);
        let pauses: Duration = (1..policy.attempts_max).map(|n| policy.ceiling(n)).sum();
        let worst = request_timeout * policy.attempts_max + pauses;
        assert!(worst <= Duration::from_secs(40), "{worst:?}");
    }
}
