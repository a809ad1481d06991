//! The result of a `paystream load` run: a markdown table (latencies, throughput, where the
//! time goes, errors by type) with its parameters and machine, printed and written to
//! `bench/results/load-<UTC timestamp>.md`, and its JSON twin. Figures only: nothing here
//! judges them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::hops::SpanSummary;
use super::services::ProviderMode;
use crate::latency::Summary;
use crate::machine::Machine;

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// When the run started, UTC, RFC 3339.
    pub started_at: String,
    pub parameters: Parameters,
    pub machine: Machine,
    /// `poll.interval.ms` of each outbox connector, as `name: value`.
    pub connector_polls: Vec<String>,
    pub posts: Posts,
    pub settlement: Settlement,
    /// POST → result, POST → settled.
    pub totals: Vec<SpanSummary>,
    /// accepted → … → settled, hop by hop.
    pub hops: Vec<SpanSummary>,
    /// Spans off the path to the result (the dispatcher's outcome).
    pub branches: Vec<SpanSummary>,
    /// Failed POSTs by kind, and payments that did not settle in time.
    pub errors_by_kind: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, String>,
    /// What the reader must know to read the figures right.
    pub warnings: Vec<String>,
}

/// How the run was made.
#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    /// Target rate of the open loop; `None`: closed loop (as fast as the concurrency allows).
    pub rate_per_s: Option<f64>,
    pub concurrency: u32,
    /// The run's size: a number of payments, or a duration.
    pub payments: Option<u64>,
    pub duration_s: Option<f64>,
    pub users: u32,
    pub provider_mode: ProviderMode,
    /// Whether the run started the processes itself (`--start-services`) or found them running.
    pub services_started_by_run: bool,
    pub settle_timeout_s: f64,
    pub api_url: String,
    pub amount: String,
    /// The run's tag, in its users' names.
    pub tag: String,
}

/// What the POSTs did.
#[derive(Clone, Debug, Serialize)]
pub struct Posts {
    pub sent: u64,
    pub accepted: u64,
    pub failed: u64,
    /// Latency of the accepted ones.
    pub latency: Summary,
    /// From the first POST to the last answer.
    pub elapsed_s: f64,
    /// POSTs sent per second over that time.
    pub sent_per_s: f64,
    /// Accepted POSTs per second over that time.
    pub accepted_per_s: f64,
    /// Open loop: POSTs that started late because every worker was busy (the bound held the
    /// rate back) …
    pub throttled_starts: u64,
    /// … or because the generator was woken late (a busy machine).
    pub woke_late_starts: u64,
    pub max_lag_ms: f64,
}

/// What became of the accepted payments.
#[derive(Clone, Debug, Serialize)]
pub struct Settlement {
    /// Payments the API accepted (rows in `wallet_transactions`).
    pub accepted: u64,
    pub settled: u64,
    /// Accepted but not settled when the wait ended.
    pub not_settled: u64,
    /// Settled payments by result status.
    pub by_status: BTreeMap<String, u64>,
    /// From the end of the load to the last settlement (or to the timeout).
    pub waited_s: f64,
    /// Settled payments per second, from the first POST to the last settlement.
    pub settled_per_s: f64,
}

/// A millisecond figure with two places, `–` where there is none.
fn ms(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "–".to_owned()
    }
}

/// A table cell: no pipes, no line breaks, no backticks.
fn cell(text: &str) -> String {
    text.replace(['|', '\n', '`'], " ")
}

/// The report as markdown.
pub fn markdown(report: &LoadReport) -> String {
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    let p = &report.parameters;
    let size = match (p.payments, p.duration_s) {
        (Some(n), _) => format!("{n} payments"),
        (None, Some(s)) => format!("{s:.0} s of payments"),
        (None, None) => "payments".to_owned(),
    };
    let rate = p.rate_per_s.map_or_else(|| "closed loop".to_owned(), |r| format!("{r} /s"));
    line(format!(
        "# load: {size} at {rate}, {} in flight, provider `{}`, {}",
        p.concurrency,
        p.provider_mode.name(),
        report.started_at
    ));
    line(String::new());
    for warning in &report.warnings {
        line(format!("> Warning: {warning}"));
        line(String::new());
    }
    line("| latency | payments | p50 ms | p99 ms | p99.9 ms | max ms |".into());
    line("|---|---:|---:|---:|---:|---:|".into());
    let l = &report.posts.latency;
    line(format!(
        "| POST /api/v1/payment | {} | {} | {} | {} | {} |",
        l.successes,
        ms(l.p50_ms),
        ms(l.p99_ms),
        ms(l.p999_ms),
        ms(l.max_ms)
    ));
    for total in &report.totals {
        line(format!(
            "| {} | {} | {} | {} | {} | {} |",
            total.name,
            total.count,
            ms(total.p50_ms),
            ms(total.p99_ms),
            ms(total.p999_ms),
            ms(total.max_ms)
        ));
    }
    line(String::new());
    let posts = &report.posts;
    let s = &report.settlement;
    line("| throughput | value |".into());
    line("|---|---:|".into());
    line(format!("| POSTs sent | {} in {:.1} s ({:.1} /s) |", posts.sent, posts.elapsed_s, posts.sent_per_s));
    line(format!("| POSTs accepted | {} ({:.1} /s) |", posts.accepted, posts.accepted_per_s));
    line(format!(
        "| payments settled | {} of {} ({:.1} /s, first POST to last settlement) |",
        s.settled, s.accepted, s.settled_per_s
    ));
    let statuses: Vec<String> = s.by_status.iter().map(|(status, n)| format!("{status} {n}")).collect();
    line(format!(
        "| results | {} |",
        if statuses.is_empty() { "none".to_owned() } else { statuses.join(", ") }
    ));
    line(format!("| not settled within {:.0} s of the last POST | {} |", p.settle_timeout_s, s.not_settled));
    if p.rate_per_s.is_some() {
        line(format!(
            "| POSTs started > {} ms late: all {} in flight / generator woken late | {} / {} (worst {} ms) |",
            crate::load::LATE_AFTER.as_millis(),
            p.concurrency,
            posts.throttled_starts,
            posts.woke_late_starts,
            ms(posts.max_lag_ms)
        ));
    }
    line(String::new());

    line("## Where the time goes: accepted → settled, hop by hop".into());
    line(String::new());
    line("| hop | p50 ms | p99 ms | max ms | payments | missing | reordered | what happens in it |".into());
    line("|---|---:|---:|---:|---:|---:|---:|---|".into());
    for hop in report.hops.iter().chain(&report.branches) {
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            hop.name,
            ms(hop.p50_ms),
            ms(hop.p99_ms),
            ms(hop.max_ms),
            hop.count,
            hop.missing,
            hop.reordered,
            cell(&hop.covers)
        ));
    }
    line(String::new());
    line(
        "Each hop ends when its stage stamped the payment (a row's time, a record's Kafka timestamp, a \
         processor's clock in the event), so a wait after the stamp (a transaction's commit interval, \
         Debezium's batch wait) shows in the next hop. *missing*: payments without one of the two moments \
         (a lost callback has none; the timeout decided). *reordered*: the second moment came first."
            .into(),
    );
    line(String::new());
    if !report.connector_polls.is_empty() {
        line(format!("Debezium `poll.interval.ms`: {}.", report.connector_polls.join(", ")));
        line(String::new());
    }

    if !report.errors_by_kind.is_empty() {
        line("## Errors by type".into());
        line(String::new());
        line("| kind | count | example |".into());
        line("|---|---:|---|".into());
        for (kind, count) in &report.errors_by_kind {
            let example = report.error_examples.get(kind).map_or("", String::as_str);
            line(format!("| {} | {count} | `{}` |", cell(kind), cell(example)));
        }
        line(String::new());
    }

    line("## Parameters".into());
    line(String::new());
    line(format!(
        "- {size}, {rate}, at most {} POSTs in flight, {} users (one RUB wallet each, a random one per payment), amount {}",
        p.concurrency, p.users, p.amount
    ));
    line(format!(
        "- provider `{}`; processes {}",
        p.provider_mode.name(),
        if p.services_started_by_run {
            "started by this run (`--start-services`)"
        } else {
            "found running (`dev/run`)"
        }
    ));
    line(format!("- API {}; run tag {} (users `paystream-load {} <n>`)", p.api_url, p.tag, p.tag));
    line(String::new());
    let m = &report.machine;
    line("## Machine".into());
    line(String::new());
    line(format!("- {} CPUs ({}), {:.1} GiB memory, kernel {}", m.cpus, m.cpu_model, m.memory_gib, m.kernel));
    line(format!("- {}: {}", m.postgres, m.postgres_settings.join(", ")));
    line(format!("- Connect connectors: {}", m.connectors.join("; ")));
    line(format!("- commit: {}", m.commit));
    md
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::flow::hops::{self, Timeline};
    use crate::latency::Tally;

    fn report() -> LoadReport {
        let mut tally = Tally::new();
        for ms in 1..=100 {
            tally.success(Duration::from_millis(ms));
        }
        let timelines = vec![Timeline::default()];
        LoadReport {
            started_at: "2026-12-01T10:00:00Z".into(),
            parameters: Parameters {
                rate_per_s: Some(50.0),
                concurrency: 16,
                payments: Some(100),
                duration_s: None,
                users: 10,
                provider_mode: ProviderMode::Instant,
                services_started_by_run: false,
                settle_timeout_s: 90.0,
                api_url: "http://127.0.0.1:8080".into(),
                amount: "0.01".into(),
                tag: "0badcafe".into(),
            },
            machine: Machine {
                cpus: 2,
                memory_gib: 8.0,
                kernel: "6.1".into(),
                cpu_model: "cpu".into(),
                postgres: "PostgreSQL 15".into(),
                postgres_settings: vec![],
                connectors: vec!["wallet-outbox: RUNNING".into()],
                commit: "abc1234".into(),
            },
            connector_polls: vec!["wallet-outbox 500 (default)".into()],
            posts: Posts {
                sent: 101,
                accepted: 100,
                failed: 1,
                latency: tally.summarize(Duration::from_secs(2)),
                elapsed_s: 2.0,
                sent_per_s: 50.5,
                accepted_per_s: 50.0,
                throttled_starts: 0,
                woke_late_starts: 2,
                max_lag_ms: 14.0,
            },
            settlement: Settlement {
                accepted: 100,
                settled: 99,
                not_settled: 1,
                by_status: BTreeMap::from([("COMPLETED".to_owned(), 90), ("FAILED".to_owned(), 9)]),
                waited_s: 3.0,
                settled_per_s: 20.0,
            },
            totals: hops::summarize(hops::TOTALS, &timelines),
            hops: hops::summarize(hops::HOPS, &timelines),
            branches: hops::summarize(hops::BRANCHES, &timelines),
            errors_by_kind: BTreeMap::from([("HTTP 422".to_owned(), 1)]),
            error_examples: BTreeMap::from([("HTTP 422".to_owned(), "{\"a\":\"b|c\"}".to_owned())]),
            warnings: vec!["the simulator was slow".into()],
        }
    }

    #[test]
    fn the_table_has_the_latencies_throughput_hops_and_errors() {
        let report = report();
        let md = markdown(&report);
        assert!(md.starts_with("# load: 100 payments at 50 /s, 16 in flight, provider `instant`"), "{md}");
        let l = &report.posts.latency;
        assert!((l.p50_ms - 50.0).abs() < 0.1, "{}", l.p50_ms);
        let row = format!(
            "| POST /api/v1/payment | 100 | {} | {} | {} |",
            ms(l.p50_ms),
            ms(l.p99_ms),
            ms(l.p999_ms)
        );
        assert!(md.contains(&row), "{row} in {md}");
        assert!(md.contains("| POST → result | 0 | – | – | – | – |"), "no percentile without payments: {md}");
        assert!(md.contains("all 16 in flight / generator woken late | 0 / 2 (worst 14.00 ms) |"), "{md}");
        assert!(md.contains("| payments settled | 99 of 100 (20.0 /s"), "{md}");
        assert!(md.contains("| results | COMPLETED 90, FAILED 9 |"), "{md}");
        assert!(md.contains("| not settled within 90 s of the last POST | 1 |"), "{md}");
        assert!(md.contains("| accepted → payments.initiated | – | – | – | 0 | 1 | 0 |"), "{md}");
        assert!(md.contains("| (branch) ChargeCommand → dispatch outcome |"), "{md}");
        assert!(md.contains("| HTTP 422 | 1 | `{\"a\":\"b c\"}` |"), "pipes are escaped: {md}");
        assert!(md.contains("> Warning: the simulator was slow"), "{md}");
        assert!(md.contains("Debezium `poll.interval.ms`: wallet-outbox 500 (default)."), "{md}");
        assert!(md.contains("- commit: abc1234"), "{md}");
    }

    #[test]
    fn a_closed_loop_has_no_lag_row_and_the_json_twin_names_the_mode() {
        let mut report = report();
        report.parameters.rate_per_s = None;
        report.parameters.payments = None;
        report.parameters.duration_s = Some(30.0);
        let md = markdown(&report);
        assert!(md.starts_with("# load: 30 s of payments at closed loop"), "{md}");
        assert!(!md.contains("started late"), "{md}");
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"provider_mode\":\"instant\""), "{json}");
    }
}
