//! Where a payment's time goes: its moments through the pipeline, each read from a timestamp
//! a record or row already carries, and the hops between them.
//!
//! Which timestamp marks each moment, and why that one:
//! - **accepted**: `wallet_transactions.accepted_at`, the API's clock before its transaction.
//! - **initiated**: the Kafka timestamp of the `PaymentInitiated` record on
//!   `payments.initiated` (Debezium's Outbox Event Router stamps it).
//! - **commanded**: `ChargeCommand.issuedAt`, the saga's wall clock as it processed the
//!   payment. Not the record's Kafka timestamp: the saga, like Kafka Streams, gives an output
//!   the timestamp of the input it came from, so every saga output carries its *input's* time.
//! - **dispatched**: the Kafka timestamp of the `DispatchOutcome` (the dispatcher's producer
//!   stamps it when the provider has answered the charge).
//! - **callback received**: `ProviderCallbackReceived.receivedAt`, the API's clock when the
//!   provider's callback arrived.
//! - **callback**: the Kafka timestamp of that record on `payments.callbacks` (Debezium again,
//!   for the ledger outbox).
//! - **result**: `PaymentResult.decidedAt`, the saga's wall clock (its Kafka timestamp is the
//!   callback's or timer's, as above).
//! - **settled**: `wallet_transactions.settled_at`, `now()` of settlement's transaction.
//! - **projected**: `payment_views.result_projected_at_us` in the read database, stamped by
//!   its trigger (`clock_timestamp()`) when the JDBC sink first wrote the view with its result.
//!
//! A hop ends when its stage *stamped* a moment, so whatever happens after the stamp (a
//! transaction's commit interval, Debezium's `poll.interval.ms` wait once it has read a
//! change) shows in the next hop. All clocks are this machine's.
//!
//! The dispatcher's outcome is a branch, not a step on the way to the result: the provider
//! calls back on its own schedule, possibly before the dispatcher has produced its outcome.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

use crate::latency::{Summary, Tally};

/// Timestamps on Kafka records have millisecond resolution; a hop shorter than minus this
/// is a real reordering, anything above is rounding and counts as zero.
pub const TIMESTAMP_RESOLUTION: Duration = Duration::from_millis(1);

type At = DateTime<Utc>;

/// The moments of one payment, each where a stage stamped it; `None` where it has none (a
/// lost callback has no callback moments; a refused POST has nothing after `posted`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// The load generator's wall clock when it sent the POST.
    pub posted: Option<At>,
    pub accepted: Option<At>,
    pub initiated: Option<At>,
    pub commanded: Option<At>,
    pub dispatched: Option<At>,
    pub callback_received: Option<At>,
    pub callback: Option<At>,
    pub result: Option<At>,
    pub settled: Option<At>,
    pub projected: Option<At>,
}

/// One measured span: from one moment to another.
pub struct Span {
    /// The row's name in the tables.
    pub name: &'static str,
    /// What happens inside it.
    pub covers: &'static str,
    from: fn(&Timeline) -> Option<At>,
    to: fn(&Timeline) -> Option<At>,
}

impl Span {
    /// `to - from`, if the payment has both moments.
    fn of(&self, timeline: &Timeline) -> Option<chrono::Duration> {
        Some((self.to)(timeline)? - (self.from)(timeline)?)
    }
}

/// From the client's POST to the end, as the person paying sees it.
pub const TOTALS: &[Span] = &[
    Span {
        name: "POST → result",
        covers: "from sending the POST to the saga deciding the PaymentResult",
        from: |t| t.posted,
        to: |t| t.result,
    },
    Span {
        name: "POST → settled",
        covers: "from sending the POST to settlement applying the result to the wallet",
        from: |t| t.posted,
        to: |t| t.settled,
    },
];

/// The hops, in the order a payment takes them; their sum is accepted → settled.
pub const HOPS: &[Span] = &[
    Span {
        name: "accepted → payments.initiated",
        covers: "the API's commit; Debezium reads the wallet outbox from the WAL (wallet-outbox)",
        from: |t| t.accepted,
        to: |t| t.initiated,
    },
    Span {
        name: "payments.initiated → ChargeCommand",
        covers: "Connect's batch wait and produce; the saga consumes and processes the payment",
        from: |t| t.initiated,
        to: |t| t.commanded,
    },
    Span {
        name: "ChargeCommand → callback received",
        covers:
            "the saga's commit; the dispatcher charges the provider; the provider's delay; its callback POST",
        from: |t| t.commanded,
        to: |t| t.callback_received,
    },
    Span {
        name: "callback received → payments.callbacks",
        covers: "the API's commit; Debezium reads the ledger outbox from the WAL (ledger-outbox)",
        from: |t| t.callback_received,
        to: |t| t.callback,
    },
    Span {
        name: "payments.callbacks → PaymentResult",
        covers: "Connect's batch wait and produce; the saga consumes the callback and decides",
        from: |t| t.callback,
        to: |t| t.result,
    },
    Span {
        name: "PaymentResult → settled",
        covers: "the saga's commit; settlement consumes the result and applies it",
        from: |t| t.result,
        to: |t| t.settled,
    },
];

/// Off the path to the result: what the dispatcher takes to report its charge, and the read
/// side's projection lag (issue 13's "time from the result's commit to the read store").
pub const BRANCHES: &[Span] = &[
    Span {
        name: "(branch) ChargeCommand → dispatch outcome",
        covers: "the saga's commit; the dispatcher consumes, charges the provider, produces the outcome",
        from: |t| t.commanded,
        to: |t| t.dispatched,
    },
    Span {
        name: "(branch) PaymentResult → read database",
        covers: "the saga's commit; paystream view folds it into the PaymentView; the JDBC sink upserts it",
        from: |t| t.result,
        to: |t| t.projected,
    },
];

/// One span's figures over a run.
#[derive(Clone, Debug, Serialize)]
pub struct SpanSummary {
    pub name: String,
    pub covers: String,
    /// Payments that had both moments.
    pub count: u64,
    /// Payments of the run that lacked one of them.
    pub missing: u64,
    /// Payments whose second moment came more than [`TIMESTAMP_RESOLUTION`] before the
    /// first (counted as zero in the percentiles).
    pub reordered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The shortest, to tell the provider's delay mode apart.
    pub min_ms: f64,
}

/// Tallies `spans` over `timelines`.
pub fn summarize(spans: &[Span], timelines: &[Timeline]) -> Vec<SpanSummary> {
    spans
        .iter()
        .map(|span| {
            let mut tally = Tally::new();
            let (mut missing, mut reordered) = (0, 0);
            for timeline in timelines {
                match span.of(timeline) {
                    None => missing += 1,
                    Some(length) => {
                        // `to_std` refuses a negative length: the second moment came first.
                        let length = length.to_std().unwrap_or_else(|_| {
                            if (-length).to_std().is_ok_and(|back| back > TIMESTAMP_RESOLUTION) {
                                reordered += 1;
                            }
                            Duration::ZERO
                        });
                        tally.success(length);
                    }
                }
            }
            let summary: Summary = tally.summarize(Duration::from_secs(1));
            let min_ms =
                if tally.successes() == 0 { f64::NAN } else { tally.latency_us.min() as f64 / 1_000.0 };
            SpanSummary {
                name: span.name.to_owned(),
                covers: span.covers.to_owned(),
                count: summary.successes,
                missing,
                reordered,
                p50_ms: summary.p50_ms,
                p99_ms: summary.p99_ms,
                p999_ms: summary.p999_ms,
                max_ms: summary.max_ms,
                min_ms,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(ms: i64) -> Option<At> {
        Some(Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap())
    }

    fn full(offset_ms: i64) -> Timeline {
        Timeline {
            posted: at(offset_ms),
            accepted: at(offset_ms + 2),
            initiated: at(offset_ms + 300),
            commanded: at(offset_ms + 400),
            dispatched: at(offset_ms + 450),
            callback_received: at(offset_ms + 430),
            callback: at(offset_ms + 700),
            result: at(offset_ms + 800),
            settled: at(offset_ms + 900),
            projected: at(offset_ms + 950),
        }
    }

    #[test]
    fn hops_add_up_to_accepted_to_settled() {
        let summaries = summarize(HOPS, &[full(0)]);
        let sum: f64 = summaries.iter().map(|s| s.p50_ms).sum();
        assert!((sum - 898.0).abs() < 1.0, "hops sum to {sum} ms");
        let names: Vec<_> = summaries.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[0], "accepted → payments.initiated");
        assert_eq!(names[5], "PaymentResult → settled");
        let totals = summarize(TOTALS, &[full(0)]);
        assert!((totals[0].p50_ms - 800.0).abs() < 1.0 && (totals[1].p50_ms - 900.0).abs() < 1.0);
        let projection = &summarize(BRANCHES, &[full(0)])[1];
        assert_eq!(projection.name, "(branch) PaymentResult → read database");
        assert!((projection.p50_ms - 150.0).abs() < 1.0, "{}", projection.p50_ms);
    }

    #[test]
    fn percentiles_missing_moments_and_reordering_are_counted() {
        let mut timelines: Vec<Timeline> = (0..100).map(|n| full(n * 10)).collect();
        // Payment n's result → settled hop takes n ms (n = 1..=100).
        for (n, timeline) in timelines.iter_mut().enumerate() {
            timeline.settled = Some(timeline.result.unwrap() + chrono::Duration::milliseconds(n as i64 + 1));
        }
        // A lost callback: the timeout decided, nothing in between.
        let mut lost = full(5_000);
        (lost.callback_received, lost.callback) = (None, None);
        timelines.push(lost);
        // A Kafka timestamp rounded down below the API's microsecond clock is no reordering;
        // a callback recorded well before its command is one.
        timelines[0].initiated = Some(timelines[0].accepted.unwrap() - chrono::Duration::microseconds(600));
        timelines[1].callback_received =
            Some(timelines[1].commanded.unwrap() - chrono::Duration::milliseconds(5));

        let hops = summarize(HOPS, &timelines);
        let settle = &hops[5];
        assert_eq!((settle.count, settle.missing), (101, 0));
        // 1..=100 ms, and the lost payment's 100 ms: the 51st and the 100th of 101.
        assert!((settle.p50_ms - 51.0).abs() < 0.1, "{}", settle.p50_ms);
        assert!((settle.p99_ms - 100.0).abs() < 0.1, "{}", settle.p99_ms);
        assert_eq!((hops[0].reordered, hops[0].missing), (0, 0));
        assert!(hops[0].min_ms < 0.01, "the rounded hop counts as zero: {}", hops[0].min_ms);
        assert_eq!((hops[2].reordered, hops[2].missing), (1, 1));
        assert_eq!(hops[3].missing, 1);
        let branch = &summarize(BRANCHES, &timelines)[0];
        assert!((branch.p50_ms - 50.0).abs() < 0.1 && branch.reordered == 0);
    }

    #[test]
    fn no_payment_gives_no_percentiles() {
        let summary = &summarize(TOTALS, &[Timeline::default()])[0];
        assert_eq!((summary.count, summary.missing), (0, 1));
        assert!(summary.p50_ms.is_nan() && summary.min_ms.is_nan());
    }
}
