//! The dispatcher's Prometheus metrics.
//!
//! Registered by the caller in a registry of its choice (the process's in the binary, a
//! fresh one per test) and handed to `run` in the config. Every label value that can occur
//! is created at registration, so dashboards see zeros instead of missing series.

use paystream_schemas::events::DispatchResult;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The `type` label of HTTP errors (see [`super::provider::AttemptError::label`]; `4xx`
/// counts rejections as well as 408/429).
pub const ERROR_TYPES: &[&str] = &["timeout", "connect", "5xx", "4xx", "other"];
/// Kafka-side operations that are retried, the `operation` label.
pub const OPERATIONS: &[&str] = &["decode", "encode", "produce", "dead-letter", "consume"];
/// Decoder errors that dead-letter a command (`paystream_schemas::DecodeError::kind`).
const DECODE_REASONS: &[&str] = &[
    "empty",
    "truncated",
    "wrong-magic-byte",
    "unknown-schema-id",
    "registry-error",
    "malformed-body",
    "incompatible-schema",
    "contract-violation",
];
const OUTCOMES: [DispatchResult; 3] =
    [DispatchResult::Accepted, DispatchResult::Rejected, DispatchResult::RetriesExhausted];

/// The counters of one dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherMetrics {
    /// HTTP calls to the provider, every attempt counted.
    attempts: IntCounter,
    /// Attempts that were followed by another (after a backoff).
    retries: IntCounter,
    /// Failed attempts, by `type`.
    errors: IntCounterVec,
    /// Outcomes produced, by `outcome`.
    outcomes: IntCounterVec,
    /// HTTP calls on the wire right now.
    in_flight: IntGauge,
    /// Commands skipped because their commandId was answered within the window.
    duplicates: IntCounter,
    /// Commands sent to the DLQ, by `reason`.
    dead_lettered: IntCounterVec,
    /// Kafka-side transient failures that were retried, by `operation`.
    kafka_retries: IntCounterVec,
    /// Commands finished and committed: outcomes + duplicates + dead-lettered.
    records: IntCounter,
}

impl DispatcherMetrics {
    /// Creates the metrics and registers them in `registry` (one dispatcher per registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            attempts: IntCounter::new("paystream_dispatcher_http_attempts_total", "HTTP charge attempts.")?,
            retries: IntCounter::new(
                "paystream_dispatcher_http_retries_total",
                "HTTP charge attempts retried after a backoff.",
            )?,
            errors: IntCounterVec::new(
                Opts::new("paystream_dispatcher_http_errors_total", "Failed HTTP charge attempts, by type."),
                &["type"],
            )?,
            outcomes: IntCounterVec::new(
                Opts::new("paystream_dispatcher_outcomes_total", "DispatchOutcomes produced, by outcome."),
                &["outcome"],
            )?,
            in_flight: IntGauge::new(
                "paystream_dispatcher_http_in_flight",
                "HTTP charge attempts in flight.",
            )?,
            duplicates: IntCounter::new(
                "paystream_dispatcher_commands_duplicate_total",
                "Commands whose commandId was already answered; the provider was not called.",
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new("paystream_dispatcher_dead_lettered_total", "Commands sent to the DLQ."),
                &["reason"],
            )?,
            kafka_retries: IntCounterVec::new(
                Opts::new("paystream_dispatcher_retries_total", "Kafka-side transient failures retried."),
                &["operation"],
            )?,
            records: IntCounter::new(
                "paystream_dispatcher_records_total",
                "Commands finished and committed: answered, duplicate or dead-lettered.",
            )?,
        };
        registry.register(Box::new(metrics.attempts.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(metrics.outcomes.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.duplicates.clone()))?;
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.kafka_retries.clone()))?;
        registry.register(Box::new(metrics.records.clone()))?;
        for error_type in ERROR_TYPES {
            metrics.errors.with_label_values(&[error_type]);
        }
        for outcome in OUTCOMES {
            metrics.outcomes.with_label_values(&[outcome.symbol()]);
        }
        for reason in DECODE_REASONS {
            metrics.dead_lettered.with_label_values(&[reason]);
        }
        for operation in OPERATIONS {
            metrics.kafka_retries.with_label_values(&[operation]);
        }
        Ok(metrics)
    }

    pub(crate) fn record_attempt(&self) {
        self.attempts.inc();
    }

    pub(crate) fn record_retry(&self) {
        self.retries.inc();
    }

    pub(crate) fn record_error(&self, error_type: &str) {
        self.errors.with_label_values(&[error_type]).inc();
    }

    pub(crate) fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    pub(crate) fn record_outcome(&self, outcome: DispatchResult) {
        self.outcomes.with_label_values(&[outcome.symbol()]).inc();
        self.records.inc();
    }

    pub(crate) fn record_duplicate(&self) {
        self.duplicates.inc();
        self.records.inc();
    }

    pub(crate) fn record_dead_lettered(&self, reason: &str) {
        self.dead_lettered.with_label_values(&[reason]).inc();
        self.records.inc();
    }

    pub(crate) fn record_kafka_retry(&self, operation: &str) {
        self.kafka_retries.with_label_values(&[operation]).inc();
    }

    /// HTTP attempts so far.
    pub fn attempts_total(&self) -> u64 {
        self.attempts.get()
    }

    /// HTTP retries so far.
    pub fn retries_total(&self) -> u64 {
        self.retries.get()
    }

    /// Failed HTTP attempts of `error_type` so far.
    pub fn errors_total(&self, error_type: &str) -> u64 {
        self.errors.with_label_values(&[error_type]).get()
    }

    /// Outcomes `outcome` produced so far.
    pub fn outcomes_total(&self, outcome: DispatchResult) -> u64 {
        self.outcomes.with_label_values(&[outcome.symbol()]).get()
    }

    /// HTTP attempts in flight now.
    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.get()
    }

    /// Duplicate commands skipped so far.
    pub fn duplicates_total(&self) -> u64 {
        self.duplicates.get()
    }

    /// Commands dead-lettered with `reason` so far.
    pub fn dead_lettered_total(&self, reason: &str) -> u64 {
        self.dead_lettered.with_label_values(&[reason]).get()
    }

    /// Kafka-side retries of `operation` so far.
    pub fn kafka_retries_total(&self, operation: &str) -> u64 {
        self.kafka_retries.with_label_values(&[operation]).get()
    }

    /// Commands finished and committed so far.
    pub fn records_total(&self) -> u64 {
        self.records.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_is_exported_from_the_start_and_records_add_up() {
        let registry = Registry::new();
        let metrics = DispatcherMetrics::register(&registry).unwrap();
        let families = registry.gather();
        let series =
            |name: &str| families.iter().find(|f| f.name() == name).map_or(0, |f| f.get_metric().len());
        assert_eq!(series("paystream_dispatcher_http_errors_total"), ERROR_TYPES.len());
        assert_eq!(series("paystream_dispatcher_outcomes_total"), 3);
        metrics.record_outcome(DispatchResult::Accepted);
        metrics.record_duplicate();
        metrics.record_dead_lettered("empty");
        assert_eq!(metrics.records_total(), 3);
        assert!(DispatcherMetrics::register(&registry).is_err(), "one dispatcher per registry");
    }
}
