//! Settlement's Prometheus counters.
//!
//! Registered by the caller in a [`prometheus::Registry`] of its choice (the process's
//! default registry in the binary, a fresh one per test), then handed to `run` in the
//! config. The shared loop's counters (dead letters by reason, retries by operation,
//! records, revocations) are [`ConsumerMetrics`] under the `paystream_settlement` prefix;
//! the ones here say what settlement made of the results. Every label value that can
//! occur is created at registration, so dashboards and alerts see zeros instead of missing
//! series.

use paystream_schemas::events::PaymentResultStatus;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::apply::Rejection;
use super::stranded::{self, StrandedGauges};
use crate::consumer::{ConsumerMetrics, Labels};

/// Operations settlement retries besides the loop's own, the `operation` label.
pub const OPERATIONS: &[&str] = &["apply", stranded::SCAN_OPERATION];

/// The counters of one settlement consumer.
#[derive(Clone, Debug)]
pub struct SettlementMetrics {
    /// Results that settled their payment, by `status` (COMPLETED, FAILED, FAILED_TIMEOUT).
    applied: IntCounterVec,
    /// Results that had already been applied (redeliveries); nothing changed.
    duplicates: IntCounter,
    /// The loop's counters; `paystream_settlement_dead_lettered_total{reason}` is the alert
    /// on records set aside (every [`Rejection::KINDS`] and decode reason).
    consumer: ConsumerMetrics,
    /// Stranded reservations, kept current by [`stranded::watch`] next to the loop.
    stranded: StrandedGauges,
}

impl SettlementMetrics {
    /// Creates the counters and registers them in `registry`. Fails if `registry` already
    /// holds them (one settlement consumer per registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let consumer = ConsumerMetrics::register(
            registry,
            Labels { prefix: "paystream_settlement", reasons: Rejection::KINDS, operations: OPERATIONS },
        )?;
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
            consumer,
            stranded: StrandedGauges::register(registry)?,
        };
        registry.register(Box::new(metrics.applied.clone()))?;
        registry.register(Box::new(metrics.duplicates.clone()))?;
        for status in
            [PaymentResultStatus::Completed, PaymentResultStatus::Failed, PaymentResultStatus::FailedTimeout]
        {
            metrics.applied.with_label_values(&[status.symbol()]);
        }
        Ok(metrics)
    }

    /// The loop's counters.
    pub fn consumer(&self) -> &ConsumerMetrics {
        &self.consumer
    }

    /// The gauges of stranded reservations.
    pub fn stranded(&self) -> &StrandedGauges {
        &self.stranded
    }

    pub(crate) fn record_applied(&self, status: PaymentResultStatus) {
        self.applied.with_label_values(&[status.symbol()]).inc();
    }

    pub(crate) fn record_duplicate(&self) {
        self.duplicates.inc();
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
        self.consumer.dead_lettered_total(reason)
    }

    /// Retries of `operation` so far.
    pub fn retries_total(&self, operation: &str) -> u64 {
        self.consumer.retries_total(operation)
    }

    /// Records processed and committed so far: applied, duplicate or dead-lettered.
    pub fn records_total(&self) -> u64 {
        self.consumer.records_total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::metrics::DECODE_REASONS;

    #[test]
    fn every_label_value_is_exported_from_the_start() {
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
        assert!(series("paystream_settlement_records_total") == 1);
        assert_eq!(series("paystream_wallet_stranded_reservations"), 1);
        assert_eq!(series("paystream_wallet_stranded_reservations_oldest_age_seconds"), 1);
        metrics.record_applied(PaymentResultStatus::Failed);
        metrics.record_duplicate();
        assert_eq!(metrics.applied_total(PaymentResultStatus::Failed), 1);
        assert_eq!(metrics.duplicates_total(), 1);
        assert!(SettlementMetrics::register(&registry).is_err(), "one consumer per registry");
    }
}
