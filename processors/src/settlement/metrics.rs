//! Settlement's Prometheus counters.
//!
//! Registered by the caller in a [`prometheus::Registry`] of its choice (the process's
//! default registry in the binary, a fresh one per test), then handed to `run` in the
//! config. Every label value that can occur is created at registration, so dashboards and
//! alerts see zeros instead of missing series.

use paystream_schemas::events::PaymentResultStatus;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::apply::Rejection;

/// Label values of `reason` that come from the decoder rather than from [`Rejection`]
/// (`paystream_schemas::DecodeError::kind`, non-retriable ones).
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

/// Operations that are retried, the `operation` label of the retry counter.
pub const OPERATIONS: &[&str] = &["decode", "apply", "dead-letter", "consume"];

/// The counters of one settlement consumer.
#[derive(Clone, Debug)]
pub struct SettlementMetrics {
    /// Results that settled their payment, by `status` (COMPLETED, FAILED, FAILED_TIMEOUT).
    applied: IntCounterVec,
    /// Results that had already been applied (redeliveries); nothing changed.
    duplicates: IntCounter,
    /// Records sent to the DLQ, by `reason`.
    dead_lettered: IntCounterVec,
    /// Transient failures that were retried, by `operation`.
    retries: IntCounterVec,
    /// Records whose offset was committed: applied + duplicates + dead-lettered.
    records: IntCounter,
}

impl SettlementMetrics {
    /// Creates the counters and registers them in `registry`. Fails if `registry` already
    /// holds them (one settlement consumer per registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            applied: IntCounterVec::new(
                Opts::new(
                    "paystream_settlement_results_applied_total",
                    "Results that settled their payment.",
                ),
                &["status"],
            )?,
            duplicates: IntCounter::new(
                "paystream_settlement_results_duplicate_total",
                "Results already applied, delivered again; nothing changed.",
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new("paystream_settlement_dead_lettered_total", "Records sent to the DLQ."),
                &["reason"],
            )?,
            retries: IntCounterVec::new(
                Opts::new("paystream_settlement_retries_total", "Transient failures retried."),
                &["operation"],
            )?,
            records: IntCounter::new(
                "paystream_settlement_records_total",
                "Records processed and committed: applied, duplicate or dead-lettered.",
            )?,
        };
        registry.register(Box::new(metrics.applied.clone()))?;
        registry.register(Box::new(metrics.duplicates.clone()))?;
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.records.clone()))?;
        for status in
            [PaymentResultStatus::Completed, PaymentResultStatus::Failed, PaymentResultStatus::FailedTimeout]
        {
            metrics.applied.with_label_values(&[status.symbol()]);
        }
        for reason in Rejection::KINDS.iter().chain(DECODE_REASONS) {
            metrics.dead_lettered.with_label_values(&[reason]);
        }
        for operation in OPERATIONS {
            metrics.retries.with_label_values(&[operation]);
        }
        Ok(metrics)
    }

    pub(crate) fn record_applied(&self, status: PaymentResultStatus) {
        self.applied.with_label_values(&[status.symbol()]).inc();
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

    pub(crate) fn record_retry(&self, operation: &str) {
        self.retries.with_label_values(&[operation]).inc();
    }

    /// Results applied with `status` so far.
    pub fn applied_total(&self, status: PaymentResultStatus) -> u64 {
        self.applied.with_label_values(&[status.symbol()]).get()
    }

    /// Duplicates seen so far.
    pub fn duplicates_total(&self) -> u64 {
        self.duplicates.get()
    }

    /// Records dead-lettered with `reason` so far.
    pub fn dead_lettered_total(&self, reason: &str) -> u64 {
        self.dead_lettered.with_label_values(&[reason]).get()
    }

    /// Retries of `operation` so far.
    pub fn retries_total(&self, operation: &str) -> u64 {
        self.retries.with_label_values(&[operation]).get()
    }

    /// Records processed and committed so far.
    pub fn records_total(&self) -> u64 {
        self.records.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_is_exported_from_the_start_and_counts_add_up() {
        let registry = Registry::new();
        let metrics = SettlementMetrics::register(&registry).unwrap();
        let families = registry.gather();
        let series =
            |name: &str| families.iter().find(|f| f.name() == name).map_or(0, |f| f.get_metric().len());
        assert_eq!(series("paystream_settlement_results_applied_total"), 3);
        assert_eq!(
            series("paystream_settlement_dead_lettered_total"),
            Rejection::KINDS.len() + DECODE_REASONS.len()
        );
        metrics.record_applied(PaymentResultStatus::Failed);
        metrics.record_duplicate();
        metrics.record_dead_lettered("unknown-payment");
        assert_eq!(metrics.applied_total(PaymentResultStatus::Failed), 1);
        assert_eq!(metrics.records_total(), 3);
        assert!(SettlementMetrics::register(&registry).is_err(), "one consumer per registry");
    }
}
