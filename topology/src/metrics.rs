//! The runtime's Prometheus metrics, one registry per runtime (so two instances in one process,
//! as in the rebalance tests, do not collide). Every metric carries `application_id` as a const
//! label; binaries expose [`StreamsMetrics::registry`] next to their own.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Latency buckets from 100 µs to 10 s: a record takes microseconds, a commit milliseconds, a
/// restore seconds.
const LATENCY_BUCKETS_S: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// All metrics of one runtime.
#[derive(Clone)]
pub struct StreamsMetrics {
    /// Where they are registered.
    registry: Registry,
    /// Records each processor (or sink) received.
    pub records_in: IntCounterVec,
    /// Records each processor forwarded.
    pub records_out: IntCounterVec,
    /// Time to process one input record through the whole graph.
    pub process_latency: Histogram,
    /// Time of one commit (changelog flush, offsets, EndTxn).
    pub commit_latency: Histogram,
    /// Commits by outcome: committed, aborted, fenced, and an ambiguous (timed-out) commit as
    /// resolved: ambiguous_committed, ambiguous_aborted, ambiguous_restored (stores reopened).
    pub commits: IntCounterVec,
    /// Records restored per store.
    pub restore_records: IntCounterVec,
    /// Restore time per store and task.
    pub restore_duration: HistogramVec,
    /// Changelog partitions restoration had to read, per store. A start whose checkpoints are at
    /// their changelogs' ends reads none (a warm restart).
    pub restore_partitions: IntCounterVec,
    /// Records still to restore per store and partition (0 when running).
    pub restore_remaining: IntGaugeVec,
    /// Consumer lag per source topic and partition, from librdkafka's statistics.
    pub consumer_lag: IntGaugeVec,
    /// Approximate keys per store and partition.
    pub store_keys: IntGaugeVec,
    /// Poison records by reason.
    pub dead_letters: IntCounterVec,
    /// Retriable errors (a dependency away) by step: deserialization, processing, serialization,
    /// punctuation. Each one aborted the transaction and was retried after a back-off; a rate
    /// that does not fall to zero is an outage, not a bad record.
    pub retriable_errors: IntCounterVec,
    /// Punctuations by processor and clock.
    pub punctuations: IntCounterVec,
    /// Rebalance events by kind (assigned, revoked, error).
    pub rebalances: IntCounterVec,
    /// Tasks this instance owns.
    pub tasks: IntGaugeVec,
}

impl StreamsMetrics {
    /// Metrics for `application_id` in a fresh registry.
    pub fn new(application_id: &str) -> Self {
        let registry = Registry::new();
        let label = |opts: Opts| opts.const_label("application_id", application_id);
        let hlabel = |opts: HistogramOpts| {
            opts.const_label("application_id", application_id).buckets(LATENCY_BUCKETS_S.to_vec())
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c =
                IntCounterVec::new(label(Opts::new(name, help)), labels).expect("static metric definition");
            registry.register(Box::new(c.clone())).expect("unique metric name in a fresh registry");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(label(Opts::new(name, help)), labels).expect("static metric definition");
            registry.register(Box::new(g.clone())).expect("unique metric name in a fresh registry");
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(hlabel(HistogramOpts::new(name, help)))
                .expect("static metric definition");
            registry.register(Box::new(h.clone())).expect("unique metric name in a fresh registry");
            h
        };
        let restore_duration = HistogramVec::new(
            hlabel(HistogramOpts::new(
                "paystream_topology_restore_duration_seconds",
                "Time to restore one store of one task",
            )),
            &["store"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(restore_duration.clone()))
            .expect("unique metric name in a fresh registry");
        Self {
            records_in: counter(
                "paystream_topology_records_in_total",
                "Records received per processor",
                &["processor"],
            ),
            records_out: counter(
                "paystream_topology_records_out_total",
                "Records forwarded per processor",
                &["processor"],
            ),
            process_latency: histogram(
                "paystream_topology_process_latency_seconds",
                "Time to process one input record",
            ),
            commit_latency: histogram("paystream_topology_commit_latency_seconds", "Time of one commit"),
            commits: counter("paystream_topology_commits_total", "Commits by outcome", &["outcome"]),
            restore_records: counter(
                "paystream_topology_restore_records_total",
                "Changelog records restored",
                &["store"],
            ),
            restore_duration,
            restore_partitions: counter(
                "paystream_topology_restore_partitions_total",
                "Changelog partitions read by restoration",
                &["store"],
            ),
            restore_remaining: gauge(
                "paystream_topology_restore_remaining_records",
                "Changelog records left to restore",
                &["store", "partition"],
            ),
            consumer_lag: gauge(
                "paystream_topology_consumer_lag",
                "Records behind the end of a source partition",
                &["topic", "partition"],
            ),
            store_keys: gauge(
                "paystream_topology_store_keys",
                "Approximate number of keys in a store",
                &["store", "partition"],
            ),
            dead_letters: counter(
                "paystream_topology_dead_letters_total",
                "Poison records sent to the DLQ",
                &["reason"],
            ),
            retriable_errors: counter(
                "paystream_topology_retriable_errors_total",
                "Retriable errors (dependency away), each aborted and retried after a back-off",
                &["kind"],
            ),
            punctuations: counter(
                "paystream_topology_punctuations_total",
                "Punctuations fired",
                &["processor", "clock"],
            ),
            rebalances: counter("paystream_topology_rebalances_total", "Rebalance events", &["kind"]),
            tasks: gauge("paystream_topology_tasks", "Tasks owned by this instance", &["state"]),
            registry,
        }
    }

    /// The registry holding these metrics, to gather or to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
