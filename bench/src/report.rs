//! The result of an `ingest` run: one markdown table with its parameters and machine,
//! printed and written to `bench/results/ingest-<UTC timestamp>.md`, and a JSON twin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::cpu::{self, CpuUse};
use crate::latency::Summary;
use crate::machine::Machine;

/// paystream must sustain at least this fraction of pgbench's rate (issue 5).
pub const TARGET_RATIO: f64 = 0.80;
/// The rows of the CPU table, in this order.
const CPU_PARTS: &[&str] = &[
    cpu::POSTGRES,
    cpu::API,
    cpu::LOAD_GENERATOR,
    cpu::PGBENCH,
    cpu::CONNECT,
    cpu::KAFKA,
    cpu::REGISTRY,
    cpu::OTHER,
];

/// Everything an `ingest` run found.
#[derive(Clone, Debug, Serialize)]
pub struct IngestReport {
    /// When the run started, UTC, RFC 3339.
    pub started_at: String,
    pub parameters: Parameters,
    pub machine: Machine,
    pub paystream: SystemResult,
    pub pgbench: SystemResult,
    /// paystream's rate divided by pgbench's.
    pub ratio: f64,
    pub target_ratio: f64,
    /// Met only with the ratio reached and no error on either side.
    pub target_met: bool,
    /// The verdict in one sentence.
    pub verdict: String,
    /// Anything the reader must know to trust the numbers (a short window, …).
    pub warnings: Vec<String>,
}

/// How the run was made.
#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    pub wallets: u32,
    pub concurrency: u32,
    pub warmup_s: u64,
    pub duration_s: u64,
    /// Which side ran first.
    pub order: String,
    pub amount: String,
    /// Size of the encoded `PaymentInitiated` in the outbox row, in bytes.
    pub outbox_payload_bytes: usize,
    /// Connections in the API's wallet pool (`paystream_stack::postgres::POOL_CONNECTIONS_MAX`).
    pub api_pool_connections: u32,
    pub pgbench_threads: u32,
    pub pgbench_protocol: String,
    pub pgbench_command: String,
}

/// One side's result.
#[derive(Clone, Debug, Serialize)]
pub struct SystemResult {
    pub name: String,
    /// `req/s` or `tx/s`.
    pub unit: String,
    pub summary: Summary,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, String>,
    pub ratio_to_pgbench: f64,
    /// pgbench's own tps over its whole run (warm-up included), as a cross-check.
    pub self_reported_rate_per_s: Option<f64>,
    /// Where the CPU went while this side ran (warm-up included).
    pub cpu: CpuUse,
}

/// The verdict on the target, and whether it was met.
pub fn verdict(ratio: f64, paystream_errors: u64, pgbench_errors: u64) -> (bool, String) {
    // Rounded down, so a ratio just under the target never reads as reaching it.
    let percent = round_down(ratio * 100.0, 1);
    let target = TARGET_RATIO * 100.0;
    let errors = paystream_errors + pgbench_errors;
    let error_note = format!(
        "the run had errors (paystream {paystream_errors}, pgbench {pgbench_errors}), so it does not count"
    );
    if !ratio.is_finite() {
        let why = "Target not judged: there is no ratio (pgbench completed nothing in the window)";
        let text = if errors > 0 { format!("{why}; {error_note}.") } else { format!("{why}.") };
        (false, text)
    } else if ratio >= TARGET_RATIO && errors == 0 {
        let text = format!(
            "Target met: paystream sustained {percent:.1}% of pgbench's rate (target ≥ {target:.0}%), with no errors."
        );
        (true, text)
    } else if ratio >= TARGET_RATIO {
        (
            false,
            format!("Target not met: the ratio is {percent:.1}% (target ≥ {target:.0}%), but {error_note}."),
        )
    } else if errors > 0 {
        (false, format!("Target missed: paystream sustained {percent:.1}% of pgbench's rate (target ≥ {target:.0}%); also, {error_note}."))
    } else {
        (
            false,
            format!(
                "Target missed: paystream sustained {percent:.1}% of pgbench's rate (target ≥ {target:.0}%)."
            ),
        )
    }
}

/// `value` rounded toward negative infinity to `decimals` places (NaN stays NaN).
pub fn round_down(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).floor() / scale
}

/// The report as markdown.
pub fn markdown(report: &IngestReport) -> String {
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line(format!("# ingest: `POST /api/v1/payment` vs pgbench, {}", report.started_at));
    line(String::new());
    line("| system | requests or tx/s | p50 ms | p99 ms | errors | ratio to pgbench |".into());
    line("|---|---:|---:|---:|---:|---:|".into());
    for system in [&report.paystream, &report.pgbench] {
        let s = &system.summary;
        line(format!(
            "| {} | {:.1} {} | {:.2} | {:.2} | {} | {:.2} |",
            system.name,
            s.rate_per_s,
            system.unit,
            s.p50_ms,
            s.p99_ms,
            s.errors,
            round_down(system.ratio_to_pgbench, 2)
        ));
    }
    line(String::new());
    line(format!("**{}**", report.verdict));
    line(String::new());
    for warning in &report.warnings {
        line(format!("> Warning: {warning}"));
        line(String::new());
    }

    let p = &report.parameters;
    line("## Parameters".into());
    line(String::new());
    line(format!("- wallets: {} (one fresh user each; a random one per payment)", p.wallets));
    line(format!(
        "- concurrency: {} requests in flight (HTTP) / {} pgbench clients",
        p.concurrency, p.concurrency
    ));
    line(format!(
        "- warm-up {} s (not measured), then {} s measured, each side; order: {}",
        p.warmup_s, p.duration_s, p.order
    ));
    line(format!(
        "- payment: amount {}, new paymentId each; outbox payload {} bytes (a real encoded PaymentInitiated)",
        p.amount, p.outbox_payload_bytes
    ));
    line(format!(
        "- API wallet pool: {} connections; pgbench: {} threads, `-M {}`",
        p.api_pool_connections, p.pgbench_threads, p.pgbench_protocol
    ));
    line(format!("- pgbench: `{}`", p.pgbench_command));
    line(String::new());

    let m = &report.machine;
    line("## Machine".into());
    line(String::new());
    line(format!("- {} CPUs ({}), {:.1} GiB memory, kernel {}", m.cpus, m.cpu_model, m.memory_gib, m.kernel));
    line(format!("- {}: {}", m.postgres, m.postgres_settings.join(", ")));
    line(format!("- Connect connectors during the run: {}", m.connectors.join("; ")));
    line(format!("- commit: {}", m.commit));
    line(String::new());

    line("## More numbers".into());
    line(String::new());
    line(
        "| system | completed in window | window s | mean ms | p99.9 ms | max ms | self-reported rate |"
            .into(),
    );
    line("|---|---:|---:|---:|---:|---:|---:|".into());
    for system in [&report.paystream, &report.pgbench] {
        let s = &system.summary;
        let own = system
            .self_reported_rate_per_s
            .map_or_else(|| "–".to_owned(), |r| format!("{r:.1} {} (whole run)", system.unit));
        line(format!(
            "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
            system.name, s.successes, s.window_s, s.mean_ms, s.p999_ms, s.max_ms, own
        ));
    }
    line(String::new());

    let (ours, theirs) = (&report.paystream.cpu, &report.pgbench.cpu);
    line("## Where the CPU went".into());
    line(String::new());
    line(format!(
        "Average cores used while each side ran (warm-up included), of {} CPUs. Both sides share \
         the machine with Postgres and the running stack; Debezium decodes the WAL of both.",
        report.machine.cpus
    ));
    line(String::new());
    line("| part | paystream side | pgbench side |".into());
    line("|---|---:|---:|".into());
    let cores =
        |used: &CpuUse, part: &str| used.cores(part).map_or_else(|| "–".to_owned(), |c| format!("{c:.2}"));
    for part in CPU_PARTS {
        if ours.parts_cpu_s.contains_key(*part) || theirs.parts_cpu_s.contains_key(*part) {
            line(format!("| {part} | {} | {} |", cores(ours, part), cores(theirs, part)));
        }
    }
    line(format!(
        "| machine busy (hypervisor steal) | {:.0}% ({:.1}%) | {:.0}% ({:.1}%) |",
        ours.machine_busy_percent,
        ours.machine_steal_percent,
        theirs.machine_busy_percent,
        theirs.machine_steal_percent
    ));
    line(format!(
        "| waited for a quiet machine first | {:.0} s | {:.0} s |",
        ours.settle_wait_s, theirs.settle_wait_s
    ));
    line(String::new());

    let errors: Vec<_> = [&report.paystream, &report.pgbench]
        .into_iter()
        .flat_map(|system| system.errors_by_kind.iter().map(move |(kind, count)| (system, kind, count)))
        .collect();
    if !errors.is_empty() {
        line("## Errors".into());
        line(String::new());
        line("| system | kind | count | example |".into());
        line("|---|---|---:|---|".into());
        for (system, kind, count) in errors {
            let example = system.error_examples.get(kind).map_or("", String::as_str);
            line(format!(
                "| {} | {kind} | {count} | `{}` |",
                system.name,
                example.replace(['|', '\n', '`'], " ")
            ));
        }
        line(String::new());
    }
    md
}

/// Writes `ingest-<UTC timestamp>.md` and `.json` into `dir`; returns both paths.
pub fn write(dir: &Path, stamp: &str, report: &IngestReport) -> anyhow::Result<(PathBuf, PathBuf)> {
    write_files(dir, "ingest", stamp, &markdown(report), report)
}

/// Writes `<bench>-<UTC timestamp>.md` and its JSON twin into `dir`; returns both paths. Every
/// benchmark's results are named this way.
pub fn write_files(
    dir: &Path,
    bench: &str,
    stamp: &str,
    markdown: &str,
    report: &impl Serialize,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md_path = dir.join(format!("{bench}-{stamp}.md"));
    let json_path = dir.join(format!("{bench}-{stamp}.json"));
    std::fs::write(&md_path, markdown).with_context(|| format!("writing {}", md_path.display()))?;
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    Ok((md_path, json_path))
}

/// `value` rounded toward positive infinity to `decimals` places (NaN stays NaN): the
/// unflattering direction for an "at most" target.
pub fn round_up(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).ceil() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_needs_the_ratio_and_no_errors() {
        assert!(verdict(0.85, 0, 0).0);
        assert!(verdict(0.80, 0, 0).0);
        let (met, text) = verdict(0.79952, 0, 0);
        assert!(!met && text.contains("79.9%"), "just under the target reads as under it: {text}");
        assert_eq!(round_down(0.79952, 2), 0.79);
        let (met, text) = verdict(0.79, 0, 0);
        assert!(!met && text.starts_with("Target missed") && text.contains("79.0%"), "{text}");
        let (met, text) = verdict(0.9, 3, 0);
        assert!(!met && text.contains("does not count"), "{text}");
        let (met, text) = verdict(f64::NAN, 0, 32);
        assert!(!met && text.starts_with("Target not judged"), "{text}");
        let (met, text) = verdict(0.5, 0, 2);
        assert!(!met && text.contains("missed") && text.contains("pgbench 2"), "{text}");
    }

    #[test]
    fn the_table_has_a_row_per_system() {
        let summary = crate::latency::Tally::new().summarize(std::time::Duration::from_secs(1));
        let system = |name: &str| SystemResult {
            name: name.into(),
            unit: "req/s".into(),
            summary: summary.clone(),
            errors_by_kind: BTreeMap::from([("HTTP 500".to_owned(), 2)]),
            error_examples: BTreeMap::from([("HTTP 500".to_owned(), "a|b".to_owned())]),
            ratio_to_pgbench: 1.0,
            self_reported_rate_per_s: None,
            cpu: CpuUse {
                elapsed_s: 2.0,
                machine_busy_percent: 100.0,
                machine_steal_percent: 0.0,
                parts_cpu_s: BTreeMap::from([(cpu::POSTGRES.to_owned(), 2.0)]),
                foreign_work: vec![],
                settle_wait_s: 2.0,
                settled: true,
            },
        };
        let report = IngestReport {
            started_at: "2026-11-28T05:00:00Z".into(),
            parameters: Parameters {
                wallets: 1000,
                concurrency: 32,
                warmup_s: 3,
                duration_s: 20,
                order: "pgbench, then paystream".into(),
                amount: "0.01".into(),
                outbox_payload_bytes: 150,
                api_pool_connections: 16,
                pgbench_threads: 2,
                pgbench_protocol: "prepared".into(),
                pgbench_command: "pgbench ...".into(),
            },
            machine: Machine {
                cpus: 2,
                memory_gib: 24.0,
                kernel: "6.1".into(),
                cpu_model: "cpu".into(),
                postgres: "PostgreSQL 15".into(),
                postgres_settings: vec![],
                connectors: vec![],
                commit: "abc1234".into(),
            },
            paystream: system("paystream"),
            pgbench: system("pgbench"),
            ratio: 1.0,
            target_ratio: TARGET_RATIO,
            target_met: false,
            verdict: "Target not met".into(),
            warnings: vec![],
        };
        let md = markdown(&report);
        assert!(md.contains("| system | requests or tx/s | p50 ms | p99 ms | errors | ratio to pgbench |"));
        assert!(md.contains("| paystream | 0.0 req/s |"), "{md}");
        assert!(md.contains("## Errors"));
        assert!(md.contains("| Postgres | 1.00 | 1.00 |"), "{md}");
        assert!(md.contains("`a b`"), "pipes are escaped: {md}");
        assert!(serde_json::to_string(&report).unwrap().contains("\"target_met\":false"));
    }
}
