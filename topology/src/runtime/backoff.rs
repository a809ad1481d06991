//! The runtime's one retry policy: a capped exponential back-off, used wherever a failure is
//! retriable (a task's `TaskError::Retriable`, a restore's Kafka error). Each user keeps its own
//! [`Backoff`], so one failing thing does not lengthen another's pauses; the policy (where it
//! starts, how it grows, where it stops) is this file's alone.

use std::time::Duration;

/// First pause after a retriable error: a registry blip or a broker's leader move is usually
/// over in a moment.
pub(super) const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between two retries; the doubling stops here. The stream thread's consumer is
/// not polled while a processing retry pauses, so it stays far below `max.poll.interval.ms`
/// (5 minutes); heartbeats go on in librdkafka's background thread, so the group keeps this
/// member.
pub(super) const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pause before the next retry: [`RETRY_BACKOFF_INITIAL`], doubling with each failure up to
/// [`RETRY_BACKOFF_MAX`], back to the start once the failing work succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: RETRY_BACKOFF_INITIAL }
    }
}

impl Backoff {
    /// The pause to take now; the next one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(RETRY_BACKOFF_MAX);
        delay
    }

    /// The failing work got through: the next failure starts the back-off over.
    pub fn reset(&mut self) {
        self.next = RETRY_BACKOFF_INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), RETRY_BACKOFF_INITIAL);
    }
}
