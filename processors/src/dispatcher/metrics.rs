//! The dispatcher's Prometheus metrics.
//!
//! Registered by the caller in a registry of its choice (the process's in the binary, a
//! fresh one per test) and handed to `run` in the config. Every label value that can occur
//! is created at registration, so dashboards see zeros instead of missing series.

use paystream_schemas::events::DispatchResult;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::consumer::{ConsumerMetrics, Labels};

/// The `type` label of HTTP errors (see [`super::provider::AttemptError::label`]; `4xx`
/// counts rejections as well as 408/429, `key-in-use` the 409s retried on the same key).
pub const ERROR_TYPES: &[&str] = &["timeout", "connect", "5xx", "4xx", "key-in-use", "other"];
/// Kafka-side operations the handler retries besides the loop's own, the `operation` label.
pub const OPERATIONS: &[&str] = &["encode", "produce"];
const OUTCOMES: [DispatchResult; 4] = [
    DispatchResult::Accepted,
    DispatchResult::Rejected,
    DispatchResult::RetriesExhausted,
    DispatchResult::Expired,
];
/// The `request` label of provider requests.
pub const REQUESTS: &[&str] = &["status", "void", "refund"];
/// The `answer` label of provider requests.
const ANSWERS: [DispatchResult; 6] = [
    DispatchResult::Charged,
    DispatchResult::NotCharged,
    DispatchResult::Pending,
    DispatchResult::Voided,
    DispatchResult::Refunded,
    DispatchResult::Unanswered,
];

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
    /// Commands reported EXPIRED: their deadline passed before an attempt could start.
    expired: IntCounter,
    /// Provider requests answered, by `request` and `answer`.
    requests: IntCounterVec,
    /// The requests loop's counters under `paystream_dispatcher_requests`.
    requests_consumer: ConsumerMetrics,
    /// The loop's counters under `paystream_dispatcher`: dead letters by reason, Kafka-side
    /// retries by operation, records finished, revocations.
    consumer: ConsumerMetrics,
}

impl DispatcherMetrics {
    /// Creates the metrics and registers them in `registry` (one dispatcher per registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let consumer = ConsumerMetrics::register(
            registry,
            Labels { prefix: "paystream_dispatcher", reasons: &[], operations: OPERATIONS },
        )?;
        let requests_consumer = ConsumerMetrics::register(
            registry,
            Labels { prefix: "paystream_dispatcher_requests", reasons: &[], operations: OPERATIONS },
        )?;
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
            expired: IntCounter::new(
                "paystream_dispatcher_commands_expired_total",
                "Commands not (further) sent because their notAfter had passed.",
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "paystream_dispatcher_provider_requests_total",
                    "Status queries, voids and refunds answered, by request and answer.",
                ),
                &["request", "answer"],
            )?,
            consumer,
            requests_consumer,
        };
        registry.register(Box::new(metrics.attempts.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(metrics.outcomes.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.duplicates.clone()))?;
        registry.register(Box::new(metrics.expired.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        for request in REQUESTS {
            for answer in ANSWERS {
                metrics.requests.with_label_values(&[request, answer.symbol()]);
            }
        }
        for error_type in ERROR_TYPES {
            metrics.errors.with_label_values(&[error_type]);
        }
        for outcome in OUTCOMES {
            metrics.outcomes.with_label_values(&[outcome.symbol()]);
        }
        Ok(metrics)
    }

    /// The loop's counters.
    pub fn consumer(&self) -> &ConsumerMetrics {
        &self.consumer
    }

    /// The requests loop's counters.
    pub fn requests_consumer(&self) -> &ConsumerMetrics {
        &self.requests_consumer
    }

    pub(crate) fn record_expired(&self) {
        self.expired.inc();
    }

    pub(crate) fn record_request(&self, request: &str, answer: DispatchResult) {
        self.requests.with_label_values(&[request, answer.symbol()]).inc();
    }

    /// Commands reported EXPIRED so far.
    pub fn expired_total(&self) -> u64 {
        self.expired.get()
    }

    /// Provider requests `request` answered `answer` so far.
    pub fn requests_total(&self, request: &str, answer: DispatchResult) -> u64 {
        self.requests.with_label_values(&[request, answer.symbol()]).get()
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
    }

    pub(crate) fn record_duplicate(&self) {
        self.duplicates.inc();
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
        self.consumer.dead_lettered_total(reason)
    }

    /// Kafka-side retries of `operation` so far.
    pub fn kafka_retries_total(&self, operation: &str) -> u64 {
        self.consumer.retries_total(operation)
    }

    /// Commands finished and committed so far: answered, duplicate or dead-lettered.
    pub fn records_total(&self) -> u64 {
        self.consumer.records_total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_is_exported_from_the_start() {
        let registry = Registry::new();
        let metrics = DispatcherMetrics::register(&registry).unwrap();
        let families = registry.gather();
        let series =
            |name: &str| families.iter().find(|f| f.name() == name).map_or(0, |f| f.get_metric().len());
        assert_eq!(series("paystream_dispatcher_http_errors_total"), ERROR_TYPES.len());
        assert_eq!(series("paystream_dispatcher_outcomes_total"), 4);
        assert_eq!(series("paystream_dispatcher_provider_requests_total"), REQUESTS.len() * ANSWERS.len());
        assert_eq!(series("paystream_dispatcher_requests_records_total"), 1);
        assert_eq!(series("paystream_dispatcher_records_total"), 1);
        metrics.record_outcome(DispatchResult::Accepted);
        metrics.record_duplicate();
        assert_eq!(metrics.outcomes_total(DispatchResult::Accepted), 1);
        assert_eq!(metrics.duplicates_total(), 1);
        assert!(DispatcherMetrics::register(&registry).is_err(), "one dispatcher per registry");
    }
}
