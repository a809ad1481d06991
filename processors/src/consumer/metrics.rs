//! The counters every consumer loop keeps, under its processor's prefix.
//!
//! The names are the ones settlement and the dispatcher exported before they shared a loop
//! (`paystream_settlement_dead_lettered_total`, `paystream_dispatcher_retries_total`, ...),
//! so dashboards and alerts keep working. Every label value that can occur is created at
//! registration, so dashboards and alerts see zeros instead of missing series.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// `dlq.reason`s the loop itself writes: the decoder's non-retriable errors
/// (`paystream_schemas::DecodeError::kind`).
pub const DECODE_REASONS: &[&str] = &[
    "empty",
    "truncated",
    "wrong-magic-byte",
    "unknown-schema-id",
    "registry-error",
    "malformed-body",
    "incompatible-schema",
    "contract-violation",
];

/// Operations the loop itself retries, the `operation` label of the retry counter.
pub const LOOP_OPERATIONS: &[&str] = &["decode", "dead-letter", "consume"];

/// What a processor adds to the loop's label values.
#[derive(Clone, Copy, Debug)]
pub struct Labels {
    /// The metric name prefix, e.g. `paystream_settlement`.
    pub prefix: &'static str,
    /// The handler's own `dlq.reason`s ([`super::Handled::Poison`]).
    pub reasons: &'static [&'static str],
    /// The handler's own retried operations ([`super::Handled::Retriable`],
    /// [`super::Context::retry`]).
    pub operations: &'static [&'static str],
}

/// The counters of one consumer loop.
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    /// Records sent to the DLQ, by `reason`: the alert on poison records.
    dead_lettered: IntCounterVec,
    /// Transient failures that were retried, by `operation`.
    retries: IntCounterVec,
    /// Records whose effect is durable and whose offset was stored for commit: handled or
    /// dead-lettered.
    records: IntCounter,
    /// Partitions taken away by a rebalance (each stopped its worker and dropped its queue).
    partitions_revoked: IntCounter,
    /// Revoked partitions whose in-flight record did not finish within the bound and was
    /// abandoned (it is redone by the partition's next owner).
    revoke_timeouts: IntCounter,
}

impl ConsumerMetrics {
    /// Creates the counters and registers them in `registry` (one loop per registry and
    /// prefix).
    pub fn register(registry: &Registry, labels: Labels) -> Result<Self, prometheus::Error> {
        let prefix = labels.prefix;
        let metrics = Self {
            dead_lettered: IntCounterVec::new(
                Opts::new(format!("{prefix}_dead_lettered_total"), "Records sent to the DLQ, by reason."),
                &["reason"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(format!("{prefix}_retries_total"), "Transient failures retried, by operation."),
                &["operation"],
            )?,
            records: IntCounter::new(
                format!("{prefix}_records_total"),
                "Records finished and committed: handled or dead-lettered.",
            )?,
            partitions_revoked: IntCounter::new(
                format!("{prefix}_partitions_revoked_total"),
                "Partitions revoked by a rebalance; their workers stopped before the revocation completed.",
            )?,
            revoke_timeouts: IntCounter::new(
                format!("{prefix}_revoke_timeouts_total"),
                "Revoked partitions whose record in flight outlasted the bound and was abandoned.",
            )?,
        };
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.records.clone()))?;
        registry.register(Box::new(metrics.partitions_revoked.clone()))?;
        registry.register(Box::new(metrics.revoke_timeouts.clone()))?;
        for reason in DECODE_REASONS.iter().chain(labels.reasons) {
            metrics.dead_lettered.with_label_values(&[reason]);
        }
        for operation in LOOP_OPERATIONS.iter().chain(labels.operations) {
            metrics.retries.with_label_values(&[operation]);
        }
        Ok(metrics)
    }

    pub(crate) fn record_dead_lettered(&self, reason: &str) {
        self.dead_lettered.with_label_values(&[reason]).inc();
    }

    pub(crate) fn record_retry(&self, operation: &str) {
        self.retries.with_label_values(&[operation]).inc();
    }

    pub(crate) fn record_finished(&self) {
        self.records.inc();
    }

    pub(crate) fn record_revoked(&self, partitions: usize) {
        self.partitions_revoked.inc_by(u64::try_from(partitions).unwrap_or(u64::MAX));
    }

    pub(crate) fn record_revoke_timeout(&self) {
        self.revoke_timeouts.inc();
    }

    /// Records dead-lettered with `reason` so far.
    pub fn dead_lettered_total(&self, reason: &str) -> u64 {
        self.dead_lettered.with_label_values(&[reason]).get()
    }

    /// Retries of `operation` so far.
    pub fn retries_total(&self, operation: &str) -> u64 {
        self.retries.with_label_values(&[operation]).get()
    }

    /// Records finished and committed so far.
    pub fn records_total(&self) -> u64 {
        self.records.get()
    }

    /// Partitions revoked so far.
    pub fn partitions_revoked_total(&self) -> u64 {
        self.partitions_revoked.get()
    }

    /// Revocations whose in-flight record was abandoned so far.
    pub fn revoke_timeouts_total(&self) -> u64 {
        self.revoke_timeouts.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_every_label_value_exists_from_the_start() {
        let registry = Registry::new();
        let labels = Labels { prefix: "paystream_test", reasons: &["mine"], operations: &["apply"] };
        let metrics = ConsumerMetrics::register(&registry, labels).unwrap();
        let families = registry.gather();
        let series =
            |name: &str| families.iter().find(|f| f.name() == name).map_or(0, |f| f.get_metric().len());
        assert_eq!(series("paystream_test_dead_lettered_total"), DECODE_REASONS.len() + 1);
        assert_eq!(series("paystream_test_retries_total"), LOOP_OPERATIONS.len() + 1);
        metrics.record_dead_lettered("mine");
        metrics.record_finished();
        assert_eq!(metrics.dead_lettered_total("mine"), 1);
        assert_eq!(metrics.records_total(), 1);
        assert!(ConsumerMetrics::register(&registry, labels).is_err(), "one loop per registry and prefix");
    }
}
