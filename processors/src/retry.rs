//! Bounded retries with capped exponential back-off, interruptible by shutdown.
//!
//! A processor never skips a record: when a dependency is away (the registry, the
//! database, the broker for a dead letter) it retries the same record. It does not retry
//! forever either: after [`RetryPolicy::attempts_max`] attempts it gives up and returns an
//! error, leaving the record's offset uncommitted, so a restarted instance starts again
//! from that very record. The default budget ([`ELAPSED_MAX_MS`], counted from the first
//! failure) stays inside the consumer's `max.poll.interval.ms` even when every attempt is
//! slow, so a consumer that is retrying is not thrown out of its group.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use paystream_topology::ShutdownHandle;
use tokio::time::Instant;

/// First pause after a failed attempt.
pub const BACKOFF_INITIAL_MS: u64 = 100;
/// Longest pause between two attempts; the doubling stops here.
pub const BACKOFF_MAX_MS: u64 = 10_000;
/// Attempts before giving up. With the delays above: 100 ms doubling to 6.4 s (≈ 13 s in
/// total), then 10 s each: ≈ 3 minutes of pauses.
pub const ATTEMPTS_MAX: u32 = 24;
/// Time from the first failure after which no further pause is taken, whatever the
/// attempt count: slow attempts (a 10 s registry timeout, a 5 s pool acquire timeout) eat
/// into it too. 4 minutes plus one last slow attempt stays below the consumer's
/// `max.poll.interval.ms` (5 minutes).
pub const ELAPSED_MAX_MS: u64 = 240_000;

/// How a processor retries an operation that failed for a transient reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Pause after the first failure; each later pause doubles it.
    pub backoff_initial: Duration,
    /// Upper bound of a single pause.
    pub backoff_max: Duration,
    /// Attempts in total (the first one included) before giving up; at least 1.
    pub attempts_max: u32,
    /// Time from the first failure after which no further pause is started.
    pub elapsed_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_millis(BACKOFF_INITIAL_MS),
            backoff_max: Duration::from_millis(BACKOFF_MAX_MS),
            attempts_max: ATTEMPTS_MAX,
            elapsed_max: Duration::from_millis(ELAPSED_MAX_MS),
        }
    }
}

/// The pauses of one sequence of attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    /// Failed attempts so far.
    failures: u32,
    /// When the first failure of this sequence was recorded.
    first_failure: Option<Instant>,
}

impl Backoff {
    /// A fresh sequence.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy, failures: 0, first_failure: None }
    }

    /// Failed attempts recorded so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure: the pause to take before the next attempt, or `None` when the
    /// attempts or the time are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        let first_failure = *self.first_failure.get_or_insert_with(Instant::now);
        if self.failures >= self.policy.attempts_max.max(1) {
            return None;
        }
        // 2^(failures-1) times the initial pause, computed without overflow and capped.
        let factor = 1u32.checked_shl(self.failures - 1).unwrap_or(u32::MAX);
        let delay = self.policy.backoff_initial.saturating_mul(factor).min(self.policy.backoff_max);
        if first_failure.elapsed() + delay > self.policy.elapsed_max {
            return None;
        }
        Some(delay)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.first_failure = None;
    }
}

/// Why [`retry`] returned without a value.
#[derive(Debug)]
pub enum RetryError<E> {
    /// The operation failed in a way retrying cannot fix.
    Permanent(E),
    /// Every attempt failed transiently; `last` is the final error.
    Exhausted { attempts: u32, last: E },
    /// Shutdown was requested while waiting to try again.
    Interrupted,
}

/// Runs `op` until it succeeds, fails permanently (`is_transient` false), runs out of
/// attempts, or shutdown is requested during a pause. `on_retry` sees each transient
/// failure with the pause that follows (for logs and metrics). A request on `shutdown` ends a
/// pause at once.
pub async fn retry<T, E, Fut>(
    policy: RetryPolicy,
    shutdown: &ShutdownHandle,
    mut op: impl FnMut() -> Fut,
    is_transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, RetryError<E>>
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        let error = match op().await {
            Ok(value) => return Ok(value),
            Err(error) if !is_transient(&error) => return Err(RetryError::Permanent(error)),
            Err(error) => error,
        };
        let Some(delay) = backoff.next_delay() else {
            return Err(RetryError::Exhausted { attempts: backoff.failures(), last: error });
        };
        on_retry(&error, delay);
        tokio::select! {
            () = shutdown.requested() => return Err(RetryError::Interrupted),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts_max: u32) -> RetryPolicy {
        RetryPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
            attempts_max,
            elapsed_max: Duration::from_secs(3_600),
        }
    }

    #[test]
    fn delays_double_then_stay_at_the_cap_and_the_attempts_are_bounded() {
        let mut backoff = Backoff::new(policy(8));
        let delays: Vec<u64> =
            std::iter::from_fn(|| backoff.next_delay()).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000, 1_000], "7 pauses between 8 attempts");
        backoff.reset();
        assert_eq!(backoff.next_delay(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(RetryPolicy { attempts_max: u32::MAX, ..RetryPolicy::default() });
        for _ in 0..100 {
            assert!(backoff.next_delay().unwrap() <= Duration::from_millis(BACKOFF_MAX_MS));
        }
    }

    /// Even when every attempt takes as long as the slowest client timeout, the last
    /// attempt ends before the group would evict the consumer (max.poll.interval.ms).
    #[tokio::test(start_paused = true)]
    async fn the_default_budget_fits_in_the_consumer_poll_interval_even_with_slow_attempts() {
        const SLOWEST_ATTEMPT: Duration = Duration::from_secs(10);
        const MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);
        for attempt in [Duration::ZERO, SLOWEST_ATTEMPT] {
            let started = Instant::now();
            let mut backoff = Backoff::new(RetryPolicy::default());
            loop {
                tokio::time::advance(attempt).await;
                let Some(delay) = backoff.next_delay() else { break };
                tokio::time::advance(delay).await;
            }
            let total = started.elapsed();
            assert!(total < MAX_POLL_INTERVAL, "retrying takes {total:?} with {attempt:?} attempts");
            assert!(total > Duration::from_secs(60), "a registry or database restart should fit: {total:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_pause_starts_after_the_elapsed_budget() {
        let mut backoff = Backoff::new(RetryPolicy {
            elapsed_max: Duration::from_millis(1_000),
            attempts_max: u32::MAX,
            ..policy(0)
        });
        let mut slept = Duration::ZERO;
        while let Some(delay) = backoff.next_delay() {
            tokio::time::advance(delay).await;
            slept += delay;
        }
        assert_eq!(slept, Duration::from_millis(700), "100 + 200 + 400; 800 more would pass 1 s");
    }

    fn never() -> ShutdownHandle {
        ShutdownHandle::new()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success() {
        let mut calls = 0;
        let mut retried = Vec::new();
        let value = retry(
            policy(5),
            &never(),
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(format!("down #{n}"))
                    } else {
                        Ok(n)
                    }
                }
            },
            |_| true,
            |e, d| retried.push((e.clone(), d)),
        )
        .await
        .unwrap();
        assert_eq!(value, 3);
        assert_eq!(
            retried,
            [
                ("down #1".to_owned(), Duration::from_millis(100)),
                ("down #2".to_owned(), Duration::from_millis(200))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_attempts_run_out() {
        let permanent = retry(policy(5), &never(), || async { Err::<(), _>("bad") }, |_| false, |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(permanent, RetryError::Permanent("bad")));
        let mut calls = 0;
        let exhausted = retry(
            policy(4),
            &never(),
            || {
                calls += 1;
                async { Err::<(), _>("down") }
            },
            |_| true,
            |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(exhausted, RetryError::Exhausted { attempts: 4, last: "down" }));
        assert_eq!(calls, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_a_pause_at_once() {
        let shutdown = ShutdownHandle::new();
        let requester = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            requester.request();
        });
        let started = Instant::now();
        let interrupted =
            retry(policy(100), &shutdown, || async { Err::<(), _>("down") }, |_| true, |_, _| {})
                .await
                .unwrap_err();
        assert!(matches!(interrupted, RetryError::Interrupted));
        // Pauses of 100 and 200 ms: the request at 250 ms lands in the second, which ends then.
        assert_eq!(started.elapsed(), Duration::from_millis(250), "the pause ended at the request");
        assert!(shutdown.is_requested());
    }
}
