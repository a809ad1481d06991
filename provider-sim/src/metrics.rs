//! The simulator's Prometheus metrics, served at its own `/metrics`.
//!
//! Every label value that can occur is created at registration, so a dashboard sees zeros
//! rather than missing series.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::decide::{Fate, Operation, Verdict};

/// Answers to `POST /v1/charges`, the `answer` label.
pub const ANSWERS: &[&str] = &[
    // 202, a new charge taken.
    "accepted",
    // 202 again: the same key with the same body.
    "replayed",
    // 409: the same key with another body.
    "conflict",
    // 400/422: no key, malformed or invalid body.
    "invalid",
    // 503 by the configured fault rate: not taken, a retry may succeed.
    "unavailable",
    // 503 because too many callbacks are pending: not taken.
    "overloaded",
    // 410: the key was voided, it is never charged.
    "voided",
];

/// What a status query, void or refund found (the charge's state), or `unavailable` (a 503),
/// the `answer` label of the request counter.
pub const REQUEST_ANSWERS: &[&str] =
    &["NONE", "PENDING", "SUCCEEDED", "DECLINED", "VOIDED", "REFUNDED", "unavailable"];

/// What became of a callback POST, the `result` label.
pub const DELIVERIES: &[&str] = &["delivered", "refused", "gave-up", "abandoned"];

/// The simulator's counters, and the registry they are served from.
#[derive(Clone, Debug)]
pub struct SimMetrics {
    /// What `/metrics` renders.
    registry: Registry,
    /// Charge requests by `answer`.
    charges: IntCounterVec,
    /// Callbacks decided, by `status` and `kind` (normal, duplicate, reordered, lost; a
    /// lost one is counted although it is never sent).
    callbacks: IntCounterVec,
    /// Callback POSTs by `result`: delivered (2xx), refused (a 4xx: a configuration error
    /// such as a wrong secret), gave-up (attempts exhausted), abandoned (shutdown).
    deliveries: IntCounterVec,
    /// Callback POST attempts that failed transiently and were retried.
    callback_retries: IntCounter,
    /// Charges whose callbacks are still to be sent.
    pending: IntGauge,
    /// Status queries, voids and refunds, by `request` and `answer`.
    requests: IntCounterVec,
}

impl SimMetrics {
    /// Creates the metrics and registers them in `registry` (one simulator per registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            registry: registry.clone(),
            charges: IntCounterVec::new(
                Opts::new("paystream_provider_sim_charges_total", "Charge requests, by answer."),
                &["answer"],
            )?,
            callbacks: IntCounterVec::new(
                Opts::new(
                    "paystream_provider_sim_callbacks_total",
                    "Callbacks decided, by status and kind (lost ones are never sent).",
                ),
                &["status", "kind"],
            )?,
            deliveries: IntCounterVec::new(
                Opts::new("paystream_provider_sim_callback_deliveries_total", "Callback POSTs, by result."),
                &["result"],
            )?,
            callback_retries: IntCounter::new(
                "paystream_provider_sim_callback_retries_total",
                "Callback POST attempts that failed transiently and were retried.",
            )?,
            pending: IntGauge::new(
                "paystream_provider_sim_callbacks_pending",
                "Accepted charges whose callbacks are still to be sent.",
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "paystream_provider_sim_requests_total",
                    "Status queries, voids and refunds, by request and the charge state found (or unavailable).",
                ),
                &["request", "answer"],
            )?,
        };
        registry.register(Box::new(metrics.charges.clone()))?;
        registry.register(Box::new(metrics.callbacks.clone()))?;
        registry.register(Box::new(metrics.deliveries.clone()))?;
        registry.register(Box::new(metrics.callback_retries.clone()))?;
        registry.register(Box::new(metrics.pending.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        for operation in Operation::ALL {
            for answer in REQUEST_ANSWERS {
                metrics.requests.with_label_values(&[operation.label(), answer]);
            }
        }
        for answer in ANSWERS {
            metrics.charges.with_label_values(&[answer]);
        }
        for verdict in [Verdict::Succeeded, Verdict::Failed] {
            for fate in Fate::ALL {
                metrics.callbacks.with_label_values(&[verdict.symbol(), fate.label()]);
            }
        }
        for result in DELIVERIES {
            metrics.deliveries.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }

    pub(crate) fn charge(&self, answer: &str) {
        self.charges.with_label_values(&[answer]).inc();
    }

    pub(crate) fn callback(&self, verdict: Verdict, kind: Fate) {
        self.callbacks.with_label_values(&[verdict.symbol(), kind.label()]).inc();
    }

    pub(crate) fn delivery(&self, result: &str) {
        self.deliveries.with_label_values(&[result]).inc();
    }

    pub(crate) fn request(&self, operation: Operation, answer: &str) {
        self.requests.with_label_values(&[operation.label(), answer]).inc();
    }

    /// Requests of `operation` answered `answer` so far.
    pub fn requests_total(&self, operation: Operation, answer: &str) -> u64 {
        self.requests.with_label_values(&[operation.label(), answer]).get()
    }

    pub(crate) fn callback_retry(&self) {
        self.callback_retries.inc();
    }

    pub(crate) fn pending(&self) -> &IntGauge {
        &self.pending
    }

    /// Charge requests answered `answer` so far.
    pub fn charges_total(&self, answer: &str) -> u64 {
        self.charges.with_label_values(&[answer]).get()
    }

    /// Callbacks of `kind` with `verdict`'s status decided so far.
    pub fn callbacks_total(&self, verdict: Verdict, kind: Fate) -> u64 {
        self.callbacks.with_label_values(&[verdict.symbol(), kind.label()]).get()
    }

    /// Callback POSTs that ended with `result` so far.
    pub fn deliveries_total(&self, result: &str) -> u64 {
        self.deliveries.with_label_values(&[result]).get()
    }

    /// Charges with callbacks still pending.
    pub fn pending_total(&self) -> i64 {
        self.pending.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_the_start() {
        let registry = Registry::new();
        let metrics = SimMetrics::register(&registry).unwrap();
        let text = metrics.render();
        assert!(text.contains(r#"paystream_provider_sim_charges_total{answer="overloaded"} 0"#), "{text}");
        assert!(text.contains(r#"paystream_provider_sim_callbacks_total{kind="lost",status="FAILED"} 0"#));
        assert!(SimMetrics::register(&registry).is_err(), "one simulator per registry");
    }
}
