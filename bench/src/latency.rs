//! The measurement window and the latency tally both sides fill the same way.
//!
//! Each side runs for a warm-up and then the measured duration. A request (or pgbench
//! transaction) counts when it *completes* inside the window; its latency goes into an HDR
//! histogram in microseconds. Rates are completions in the window divided by its length.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The smallest latency the histogram resolves, in microseconds.
pub const LATENCY_MIN_US: u64 = 1;
/// The largest latency the histogram records exactly; longer ones are clamped to it
/// (a request times out well before).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Significant decimal digits the histogram keeps: 3 means within 0.1%.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// How many distinct error examples a tally keeps (their counts are all kept).
pub const ERROR_EXAMPLES_MAX: usize = 8;
/// Longest error example kept, in characters.
pub const ERROR_EXAMPLE_CHARS_MAX: usize = 300;

/// `[start, end)` as offsets from the moment a side was started.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
}

impl Window {
    /// The window after `warmup`, lasting `measured`.
    pub fn after(warmup: Duration, measured: Duration) -> Self {
        Self { start: warmup, end: warmup + measured }
    }

    pub fn contains(&self, offset: Duration) -> bool {
        self.start <= offset && offset < self.end
    }

    pub fn length(&self) -> Duration {
        self.end - self.start
    }
}

/// What one side did inside the window.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Latencies of the successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Failed requests by kind (an HTTP status, `timeout`, `pgbench failed`, …).
    pub errors: BTreeMap<String, u64>,
    /// One example message per error kind, for the report.
    pub error_examples: BTreeMap<String, String>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    pub fn new() -> Self {
        let latency_us =
            Histogram::new_with_bounds(LATENCY_MIN_US, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
                // The bounds are constants that satisfy the crate's rules (low >= 1,
                // high >= 2 * low, digits <= 5), so this cannot fail.
                .expect("valid histogram bounds");
        Self { latency_us, errors: BTreeMap::new(), error_examples: BTreeMap::new() }
    }

    pub fn success(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.clamp(LATENCY_MIN_US, LATENCY_MAX_US));
    }

    pub fn error(&mut self, kind: &str, example: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        if self.error_examples.len() < ERROR_EXAMPLES_MAX && !self.error_examples.contains_key(kind) {
            let example: String = example.chars().take(ERROR_EXAMPLE_CHARS_MAX).collect();
            self.error_examples.insert(kind.to_owned(), example);
        }
    }

    /// Adds `other`'s counts to this tally.
    pub fn merge(&mut self, other: Tally) {
        // Both histograms are made by `new` with the same bounds, so adding cannot fail.
        self.latency_us.add(&other.latency_us).expect("histograms with equal bounds");
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        for (kind, example) in other.error_examples {
            if self.error_examples.len() < ERROR_EXAMPLES_MAX {
                self.error_examples.entry(kind).or_insert(example);
            }
        }
    }

    pub fn successes(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Rates and percentiles over a window of `length`.
    pub fn summarize(&self, length: Duration) -> Summary {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        let empty = self.latency_us.is_empty();
        let quantile = |q: f64| if empty { f64::NAN } else { ms(self.latency_us.value_at_quantile(q)) };
        Summary {
            successes: self.successes(),
            errors: self.error_count(),
            window_s: length.as_secs_f64(),
            rate_per_s: self.successes() as f64 / length.as_secs_f64(),
            mean_ms: if empty { f64::NAN } else { self.latency_us.mean() / 1_000.0 },
            p50_ms: quantile(0.50),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: if empty { f64::NAN } else { ms(self.latency_us.max()) },
        }
    }
}

/// One side's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Successful requests (or transactions) completed in the window.
    pub successes: u64,
    /// Failed ones completed in the window.
    pub errors: u64,
    /// The window's length.
    pub window_s: f64,
    /// Successes per second of the window.
    pub rate_per_s: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_half_open() {
        let window = Window::after(Duration::from_secs(3), Duration::from_secs(20));
        assert!(!window.contains(Duration::from_millis(2_999)));
        assert!(window.contains(Duration::from_secs(3)));
        assert!(window.contains(Duration::from_millis(22_999)));
        assert!(!window.contains(Duration::from_secs(23)));
        assert_eq!(window.length(), Duration::from_secs(20));
    }

    #[test]
    fn tally_summarizes_and_merges() {
        let mut a = Tally::new();
        for ms in 1..=100 {
            a.success(Duration::from_millis(ms));
        }
        let mut b = Tally::new();
        b.error("500", "boom");
        b.error("500", "boom again");
        b.success(Duration::ZERO);
        a.merge(b);
        let summary = a.summarize(Duration::from_secs(10));
        assert_eq!(summary.successes, 101);
        assert_eq!(summary.errors, 2);
        assert!((summary.rate_per_s - 10.1).abs() < 1e-9);
        assert!((summary.p50_ms - 50.0).abs() < 0.1, "{}", summary.p50_ms);
        assert!((summary.p99_ms - 99.0).abs() < 0.1, "{}", summary.p99_ms);
        assert_eq!(a.error_examples["500"], "boom");
    }

    #[test]
    fn an_empty_tally_has_no_percentiles() {
        let summary = Tally::new().summarize(Duration::from_secs(1));
        assert_eq!(summary.rate_per_s, 0.0);
        assert!(summary.p99_ms.is_nan());
    }
}
