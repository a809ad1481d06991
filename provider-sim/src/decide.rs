//! The simulator's decisions, pure and reproducible.
//!
//! Each decision is drawn from an RNG seeded with the run's seed, the idempotency key and
//! what is being decided (the plan, or attempt `n` of the charge): the same seed decides
//! the same for every payment whatever order, timing or concurrency the charges arrive
//! with. The key is hashed with FNV-1a, which (unlike `std`'s hasher) is fixed forever.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The provider's verdict on a charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Succeeded,
    Failed,
}

impl Verdict {
    /// The callback's `status` (what `POST /api/v1/callback` accepts).
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }

    /// The other verdict: the stale event of a reordered pair says this.
    pub fn opposite(self) -> Self {
        match self {
            Self::Succeeded => Self::Failed,
            Self::Failed => Self::Succeeded,
        }
    }
}

/// What happens to a charge's callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fate {
    /// The verdict is delivered once.
    Normal,
    /// The verdict is delivered, then the same event again (a redelivery: same event id,
    /// same body, signed anew).
    Duplicate,
    /// Two events in swapped order: the verdict, then a contradicting event the provider
    /// had timestamped earlier (an overtaken provisional answer).
    Reordered,
    /// Nothing is ever delivered: the saga's timeout decides.
    Lost,
}

impl Fate {
    /// Every fate, in the order the draw tests them.
    pub const ALL: [Self; 4] = [Self::Lost, Self::Duplicate, Self::Reordered, Self::Normal];

    /// The `kind` label of the callback metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Duplicate => "duplicate",
            Self::Reordered => "reordered",
            Self::Lost => "lost",
        }
    }
}

/// Everything decided about an accepted charge, once, when it is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub verdict: Verdict,
    /// From acceptance to the first callback.
    pub delay: Duration,
    pub fate: Fate,
}

/// The probabilities and the seed every decision comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// The run's seed.
    pub seed: u64,
    /// Delay to the first callback, uniform in `delay_min..=delay_max`.
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Probability that the verdict is SUCCEEDED.
    pub success_ratio: f64,
    /// Probabilities of the fates other than Normal (their sum is at most 1).
    pub duplicate_rate: f64,
    pub reorder_rate: f64,
    pub lost_rate: f64,
    /// Probability that a charge attempt is answered 503.
    pub charge_5xx_rate: f64,
    /// The first attempts of every key answered 503 regardless of the rate.
    pub charge_5xx_first: u32,
    /// Probability that a status query, void or refund is answered 503 (nothing changes).
    pub request_5xx_rate: f64,
}

/// The requests about an existing key, besides the charge itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET /v1/charges/{key}`.
    Status,
    /// `POST /v1/charges/{key}/void`.
    Void,
    /// `POST /v1/charges/{key}/refund`.
    Refund,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Self; 3] = [Self::Status, Self::Void, Self::Refund];

    /// The `request` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Void => "void",
            Self::Refund => "refund",
        }
    }

    fn stream(self) -> u64 {
        match self {
            Self::Status => STREAM_STATUS_ATTEMPT,
            Self::Void => STREAM_VOID_ATTEMPT,
            Self::Refund => STREAM_REFUND_ATTEMPT,
        }
    }
}

/// Streams of the per-key RNG, so two decisions about one key never share draws.
const STREAM_PLAN: u64 = 0;
const STREAM_CHARGE_ATTEMPT: u64 = 1 << 32;
const STREAM_STATUS_ATTEMPT: u64 = 2 << 32;
const STREAM_VOID_ATTEMPT: u64 = 3 << 32;
const STREAM_REFUND_ATTEMPT: u64 = 4 << 32;

impl Rates {
    /// The plan for the charge with idempotency key `key`.
    pub fn plan(&self, key: &str) -> Plan {
        let mut rng = rng_for(self.seed, key, STREAM_PLAN);
        let verdict = if rng.random_bool(self.success_ratio) { Verdict::Succeeded } else { Verdict::Failed };
        let delay = uniform(&mut rng, self.delay_min, self.delay_max);
        let draw: f64 = rng.random();
        let fate = if draw < self.lost_rate {
            Fate::Lost
        } else if draw < self.lost_rate + self.duplicate_rate {
            Fate::Duplicate
        } else if draw < self.lost_rate + self.duplicate_rate + self.reorder_rate {
            Fate::Reordered
        } else {
            Fate::Normal
        };
        Plan { verdict, delay, fate }
    }

    /// Whether attempt `attempt` (1-based) to charge `key` is answered 503.
    pub fn charge_fails(&self, key: &str, attempt: u32) -> bool {
        if attempt <= self.charge_5xx_first {
            return true;
        }
        rng_for(self.seed, key, STREAM_CHARGE_ATTEMPT + u64::from(attempt)).random_bool(self.charge_5xx_rate)
    }

    /// Whether attempt `attempt` (1-based) of `operation` on `key` is answered 503.
    pub fn request_fails(&self, key: &str, operation: Operation, attempt: u32) -> bool {
        rng_for(self.seed, key, operation.stream() + u64::from(attempt)).random_bool(self.request_5xx_rate)
    }
}

/// A duration uniform in `min..=max`, in whole milliseconds.
fn uniform(rng: &mut StdRng, min: Duration, max: Duration) -> Duration {
    let (min_ms, max_ms) = (millis(min), millis(max).max(millis(min)));
    Duration::from_millis(rng.random_range(min_ms..=max_ms))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The RNG of one decision: the seed, the key and the stream mixed into one `u64`
/// (`seed_from_u64` then spreads it over the generator's state).
fn rng_for(seed: u64, key: &str, stream: u64) -> StdRng {
    StdRng::seed_from_u64(
        seed ^ fnv1a(key.as_bytes()).rotate_left(17) ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// FNV-1a, 64 bits: a hash whose values never change between builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(seed: u64) -> Rates {
        Rates {
            seed,
            delay_min: Duration::from_millis(500),
            delay_max: Duration::from_millis(5_000),
            success_ratio: 0.9,
            duplicate_rate: 0.1,
            reorder_rate: 0.05,
            lost_rate: 0.02,
            charge_5xx_rate: 0.2,
            charge_5xx_first: 0,
            request_5xx_rate: 0.3,
        }
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("00000000-0000-4000-8000-{i:012}")).collect()
    }

    #[test]
    fn the_same_seed_decides_the_same_whatever_the_order() {
        let keys = keys(200);
        let forward: Vec<Plan> = keys.iter().map(|k| rates(42).plan(k)).collect();
        let backward: Vec<Plan> = keys.iter().rev().map(|k| rates(42).plan(k)).collect();
        assert_eq!(forward, backward.into_iter().rev().collect::<Vec<_>>());
        let other: Vec<Plan> = keys.iter().map(|k| rates(43).plan(k)).collect();
        assert_ne!(forward, other, "another seed decides otherwise");
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a's published value: stable forever");
    }

    #[test]
    fn shares_follow_the_rates_and_delays_stay_in_bounds() {
        const N: usize = 20_000;
        let rates = rates(7);
        let plans: Vec<Plan> = keys(N).iter().map(|k| rates.plan(k)).collect();
        let share = |f: &dyn Fn(&Plan) -> bool| plans.iter().filter(|p| f(p)).count() as f64 / N as f64;
        let close = |actual: f64, expected: f64| (actual - expected).abs() < 0.01;
        assert!(close(share(&|p: &Plan| p.verdict == Verdict::Succeeded), 0.9));
        assert!(close(share(&|p: &Plan| p.fate == Fate::Lost), 0.02));
        assert!(close(share(&|p: &Plan| p.fate == Fate::Duplicate), 0.1));
        assert!(close(share(&|p: &Plan| p.fate == Fate::Reordered), 0.05));
        assert!(plans.iter().all(|p| (500..=5_000).contains(&p.delay.as_millis())));
        let mean_ms = plans.iter().map(|p| p.delay.as_millis() as f64).sum::<f64>() / N as f64;
        assert!((mean_ms - 2_750.0).abs() < 50.0, "uniform 0.5–5 s has mean 2.75 s: {mean_ms}");
        let fails = keys(N).iter().filter(|k| rates.charge_fails(k, 1)).count() as f64 / N as f64;
        assert!(close(fails, 0.2), "{fails}");
    }

    #[test]
    fn certain_and_impossible_rates_are_exact() {
        let sure = Rates {
            success_ratio: 0.0,
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
            lost_rate: 1.0,
            charge_5xx_rate: 1.0,
            delay_min: Duration::from_millis(3),
            delay_max: Duration::from_millis(3),
            ..rates(1)
        };
        for key in keys(100) {
            assert_eq!(
                sure.plan(&key),
                Plan { verdict: Verdict::Failed, delay: Duration::from_millis(3), fate: Fate::Lost }
            );
            assert!(sure.charge_fails(&key, 1) && sure.charge_fails(&key, 99));
        }
        let never = Rates {
            charge_5xx_rate: 0.0,
            lost_rate: 0.0,
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
            ..rates(1)
        };
        assert!(keys(100).iter().all(|k| !never.charge_fails(k, 1) && never.plan(k).fate == Fate::Normal));
    }

    #[test]
    fn request_faults_follow_their_rate_and_are_reproducible() {
        const N: usize = 20_000;
        let rates = rates(9);
        for operation in Operation::ALL {
            let fails =
                keys(N).iter().filter(|k| rates.request_fails(k, operation, 1)).count() as f64 / N as f64;
            assert!((fails - 0.3).abs() < 0.01, "{operation:?}: {fails}");
        }
        let draws = |r: &Rates| -> Vec<bool> {
            keys(50).iter().flat_map(|k| Operation::ALL.map(|o| r.request_fails(k, o, 2))).collect()
        };
        assert_eq!(draws(&rates), draws(&rates), "the same seed, the same answers");
        let never = Rates { request_5xx_rate: 0.0, ..rates };
        assert!(draws(&never).iter().all(|fails| !fails));
        let always = Rates { request_5xx_rate: 1.0, ..rates };
        assert!(draws(&always).iter().all(|fails| *fails));
    }

    #[test]
    fn the_first_attempts_fail_when_scripted_and_later_ones_follow_the_rate() {
        let scripted = Rates { charge_5xx_first: 3, charge_5xx_rate: 0.0, ..rates(1) };
        let attempts: Vec<bool> = (1..=6).map(|n| scripted.charge_fails("k", n)).collect();
        assert_eq!(attempts, [true, true, true, false, false, false]);
    }
}
