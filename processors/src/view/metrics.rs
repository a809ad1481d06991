//! The view's metrics: how far behind the topics the published view is, and what became of each
//! input event.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Buckets of the projection lag, in seconds: the target is a p99 under 0.5 s, and a
/// rebuild replaying a month of records lags by up to that month.
const LAG_BUCKETS_S: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3_600.0, 86_400.0];

/// Counters and the lag histogram of the payment view.
#[derive(Clone)]
pub struct ViewMetrics {
    /// Time from an input record's timestamp (when it was written to its topic) to the view it
    /// changed being forwarded to `payments.view`; the commit that makes it visible follows within
    /// the runtime's commit interval (100 ms).
    pub projection_lag: Histogram,
    /// Input events by input and admission (applied, duplicate, over_bound, ignored).
    pub events: IntCounterVec,
    /// Timeline entries published, new or moved by an event that sorted before them.
    pub timeline_entries: IntCounterVec,
}

impl ViewMetrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let projection_lag = Histogram::with_opts(
            HistogramOpts::new(
                "paystream_view_projection_lag_seconds",
                "From an input record's timestamp to the payment view it changed being emitted",
            )
            .buckets(LAG_BUCKETS_S.to_vec()),
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "paystream_view_events_total",
                "Input events of the payment view by what became of them",
            ),
            &["input", "admission"],
        )?;
        let timeline_entries = IntCounterVec::new(
            Opts::new("paystream_view_timeline_entries_total", "Timeline entries published"),
            &["change"],
        )?;
        registry.register(Box::new(projection_lag.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(timeline_entries.clone()))?;
        Ok(Self { projection_lag, events, timeline_entries })
    }
}
