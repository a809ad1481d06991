//! The result of a `join` run: one markdown table (throughput, latency, peak RSS, ratios to (a)
//! and (c), correctness), the issue's targets each judged PASS / MISS, and a JSON twin, written
//! to `bench/results/join-<UTC timestamp>.{md,json}`.

use std::path::Path;

use serde::Serialize;

use super::workload::{Throughput, Verification};
use super::PeerKind;
use crate::cpu::CpuUse;
use crate::latency::Summary;
use crate::machine::Host;
use crate::report::{round_down, round_up};

/// Issue 12's targets for (b), as ratios (issue 4's, met or missed in its runs, were 0.60 × (a)'s
/// and 1.5 × (c)'s throughput, p99 ≤ ½ (c)'s, RSS ≤ ¼ (c)'s, 20 × (d)'s throughput).
pub const TARGET_OF_RAW_THROUGHPUT: f64 = 0.85;
pub const TARGET_OF_KAFKA_STREAMS_P50: f64 = 1.0;
pub const TARGET_OF_KAFKA_STREAMS_P99: f64 = 0.5;
/// Peak RSS, absolute: judged as a ratio to this many MiB.
pub const TARGET_RSS_MIB: f64 = 100.0;
/// Restoring a store from its changelog (`paystream-bench restore`), records per second.
pub const TARGET_RESTORE_RECORDS_PER_S: u64 = 500_000;
/// A peer whose backlog throughput is below this multiple of the latency phase's rate may not
/// have kept up with it: its latency then includes queueing.
pub const LATENCY_HEADROOM: f64 = 1.2;

/// How a peer was stopped.
#[derive(Clone, Debug, Serialize)]
pub struct StopOutcome {
    /// From SIGTERM to exit.
    pub secs: f64,
    /// `exit 0`, `signal 9`, …
    pub exit: String,
    /// Whether it needed SIGKILL after the grace period.
    pub killed: bool,
}

/// One peer's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct PeerResult {
    pub peer: PeerKind,
    pub label: String,
    /// Pairs (keys) in its throughput backlog.
    pub keys: u64,
    pub throughput: Option<Throughput>,
    /// From starting the child to its first output (start-up, group join, first commit).
    pub first_output_after_s: Option<f64>,
    /// Pairs produced in the latency phase.
    pub latency_pairs: u64,
    pub latency: Option<Summary>,
    /// `VmHWM` of the child just before SIGTERM.
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds the child used, start-up included.
    pub peer_cpu_s: Option<f64>,
    /// The machine while the peer ran (and whether a compiler shared it).
    pub cpu: Option<CpuUse>,
    pub verification: Option<Verification>,
    pub stop: Option<StopOutcome>,
    /// Why the peer's run failed, with the tail of its log.
    pub error: Option<String>,
    pub cleanup_error: Option<String>,
    /// Its log (stdout and stderr).
    pub log: Option<String>,
}

impl PeerResult {
    pub fn new(peer: PeerKind, keys: u64, log: &Path) -> Self {
        Self {
            peer,
            label: peer.label().to_owned(),
            keys,
            throughput: None,
            first_output_after_s: None,
            latency_pairs: 0,
            latency: None,
            peak_rss_mib: None,
            peer_cpu_s: None,
            cpu: None,
            verification: None,
            stop: None,
            error: None,
            cleanup_error: None,
            log: Some(log.display().to_string()),
        }
    }

    /// Every output exactly once with the right value, and the run did not fail.
    pub fn correct(&self) -> bool {
        self.error.is_none() && self.verification.as_ref().is_some_and(Verification::correct)
    }

    fn pairs_per_s(&self) -> Option<f64> {
        self.throughput.as_ref().map(|t| t.pairs_per_s)
    }

    /// A lower bound of the throughput: the backlog over the time from starting the child to
    /// its last output, start-up and group join included. The main figure starts at the first
    /// output, i.e. after the first commit, so the work of that first transaction falls before its
    /// window; when a peer clears the whole backlog in a second or so, that matters.
    pub fn pairs_per_s_from_start(&self) -> Option<f64> {
        let t = self.throughput.as_ref()?;
        let secs = self.first_output_after_s? + t.window_s;
        (secs > 0.0).then(|| t.pairs as f64 / secs)
    }

    fn p50_ms(&self) -> Option<f64> {
        self.latency.as_ref().map(|l| l.p50_ms).filter(|v| v.is_finite())
    }

    fn p99_ms(&self) -> Option<f64> {
        self.latency.as_ref().map(|l| l.p99_ms).filter(|v| v.is_finite())
    }

    /// The table's "correct" cell.
    fn correct_cell(&self) -> String {
        let verified =
            self.verification.as_ref().map_or_else(|| "not verified".to_owned(), Verification::describe);
        match &self.error {
            None => verified,
            Some(_) => format!("{verified}; run failed (see below)"),
        }
    }
}

/// How the run was made.
#[derive(Clone, Debug, Serialize)]
pub struct JoinParameters {
    pub keys: u64,
    pub quix_keys: u64,
    pub partitions: i32,
    pub latency_rate_pairs_per_s: u64,
    pub latency_secs: u64,
    pub commit_interval_ms: u64,
    pub payload_bytes: usize,
    pub bootstrap: String,
    pub run_id: String,
    pub peer_versions: Vec<String>,
}

/// A peer's row: its result and its ratios.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    #[serde(flatten)]
    pub result: PeerResult,
    /// Its throughput divided by (a)'s.
    pub throughput_of_raw: Option<f64>,
    /// Its throughput divided by (c)'s.
    pub throughput_of_kafka_streams: Option<f64>,
}

/// Which way a target's ratio must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    AtLeast,
    AtMost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Pass,
    Miss,
    NotJudged,
}

/// One of the issue's targets, judged.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What is compared, e.g. "(b) throughput ≥ 0.60 × (a)".
    pub name: String,
    /// The measured ratio (b) / other.
    pub ratio: Option<f64>,
    pub bound: Bound,
    pub limit: f64,
    pub verdict: Verdict,
    /// Why it is not a plain PASS or MISS.
    pub note: Option<String>,
}

/// Judges `ours / theirs` against `limit`. (b)'s incorrect outputs make it a MISS; the other
/// peer's failure leaves it unjudged (nothing to compare with).
pub fn judge(
    name: &str,
    ours: Option<f64>,
    theirs: Option<f64>,
    bound: Bound,
    limit: f64,
    ours_correct: bool,
    theirs_correct: bool,
) -> Target {
    let ratio = match (ours, theirs) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => Some(a / b),
        _ => None,
    };
    let (verdict, note) = match ratio {
        None => (Verdict::NotJudged, Some("a side has no measurement".to_owned())),
        Some(_) if !ours_correct => {
            (Verdict::Miss, Some("(b)'s outputs were not correct, so it does not count".to_owned()))
        }
        Some(_) if !theirs_correct => {
            (Verdict::NotJudged, Some("the peer compared with did not produce correct outputs".to_owned()))
        }
        Some(r) => {
            let met = match bound {
                Bound::AtLeast => r >= limit,
                Bound::AtMost => r <= limit,
            };
            (if met { Verdict::Pass } else { Verdict::Miss }, None)
        }
    };
    Target { name: name.to_owned(), ratio, bound, limit, verdict, note }
}

/// A ratio rounded the unflattering way for its bound, so 0.599 never reads as 0.60.
pub fn shown_ratio(ratio: f64, bound: Bound) -> String {
    match bound {
        Bound::AtLeast => format!("{:.2}", round_down(ratio, 2)),
        Bound::AtMost => format!("{:.2}", round_up(ratio, 2)),
    }
}

impl Target {
    /// One markdown bullet.
    pub fn line(&self) -> String {
        let measured =
            self.ratio.map_or_else(|| "–".to_owned(), |r| format!("{}×", shown_ratio(r, self.bound)));
        let verdict = match self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::NotJudged => "NOT JUDGED",
        };
        let note = self.note.as_ref().map_or_else(String::new, |n| format!(" ({n})"));
        format!("- {}: measured {measured} → **{verdict}**{note}", self.name)
    }
}

/// Everything a `join` run found.
#[derive(Clone, Debug, Serialize)]
pub struct JoinReport {
    /// When the run started, UTC, RFC 3339.
    pub started_at: String,
    pub parameters: JoinParameters,
    pub machine: Host,
    pub peers: Vec<PeerRow>,
    pub targets: Vec<Target>,
    /// How to read the table.
    pub notes: Vec<String>,
    /// Anything that makes this run's numbers less trustworthy.
    pub warnings: Vec<String>,
}

impl JoinReport {
    pub fn new(
        started_at: String,
        parameters: JoinParameters,
        machine: Host,
        results: Vec<PeerResult>,
    ) -> Self {
        let find = |kind: PeerKind| results.iter().find(|r| r.peer == kind);
        let rate = |kind: PeerKind| find(kind).and_then(PeerResult::pairs_per_s);
        let (raw, kafka_streams) = (rate(PeerKind::Raw), rate(PeerKind::KafkaStreams));
        let ratio = |ours: Option<f64>, theirs: Option<f64>| match (ours, theirs) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let peers: Vec<PeerRow> = results
            .iter()
            .map(|r| PeerRow {
                result: r.clone(),
                throughput_of_raw: ratio(r.pairs_per_s(), raw),
                throughput_of_kafka_streams: ratio(r.pairs_per_s(), kafka_streams),
            })
            .collect();
        let targets = targets(&results);
        let notes = notes(&parameters);
        let warnings = warnings(&parameters, &results);
        Self { started_at, parameters, machine, peers, targets, notes, warnings }
    }
}

/// Issue 12's targets, in its order.
pub fn targets(results: &[PeerResult]) -> Vec<Target> {
    let find = |kind: PeerKind| results.iter().find(|r| r.peer == kind);
    let b = find(PeerKind::Paystream);
    let b_correct = b.is_some_and(PeerResult::correct);
    let compare =
        |name: &str, other: PeerKind, metric: fn(&PeerResult) -> Option<f64>, bound: Bound, limit: f64| {
            let theirs = find(other);
            judge(
                name,
                b.and_then(metric),
                theirs.and_then(metric),
                bound,
                limit,
                b_correct,
                theirs.is_some_and(PeerResult::correct),
            )
        };
    vec![
        compare(
            "(b) throughput ≥ 0.85 × (a)'s",
            PeerKind::Raw,
            PeerResult::pairs_per_s,
            Bound::AtLeast,
            TARGET_OF_RAW_THROUGHPUT,
        ),
        compare(
            "(b) p50 latency ≤ (c)'s",
            PeerKind::KafkaStreams,
            PeerResult::p50_ms,
            Bound::AtMost,
            TARGET_OF_KAFKA_STREAMS_P50,
        ),
        compare(
            "(b) p99 latency ≤ 0.5 × (c)'s",
            PeerKind::KafkaStreams,
            PeerResult::p99_ms,
            Bound::AtMost,
            TARGET_OF_KAFKA_STREAMS_P99,
        ),
        judge(
            "(b) peak RSS ≤ 100 MiB (as a multiple of 100 MiB)",
            b.and_then(|r| r.peak_rss_mib),
            Some(TARGET_RSS_MIB),
            Bound::AtMost,
            1.0,
            b_correct,
            true,
        ),
    ]
}

fn notes(p: &JoinParameters) -> Vec<String> {
    vec![
        "Throughput = backlog pairs / (arrival of the backlog's last output − arrival of its first), \
         outputs read `read_committed` by the harness; start-up and group join are outside the window."
            .to_owned(),
        "The window opens at the first output, i.e. after the peer's first commit, so the work of its \
         first transaction falls before it: the faster a peer clears the backlog, the more that flatters \
         it (see the backlog window in More numbers). \"pairs/s from start\" (backlog / time from \
         starting the peer to its last output, start-up and group join included) is a lower bound."
            .to_owned(),
        "(a) forwards both inputs of a pair unchanged (2 outputs per pair, no state); its rate is still \
         counted in pairs/s, and its latency is per forwarded record (now − that record's timestamp)."
            .to_owned(),
        format!(
            "(d) Quix runs a {}-key backlog instead of {} (`--quix-keys`, to keep a slow peer's run short); \
             throughput is a rate, so the rows still compare, though a shorter window is noisier.",
            p.quix_keys, p.keys
        ),
        format!(
            "Latency: {} pairs/s for {} s of keys not in the backlog, LEFT then RIGHT at once; latency = \
             arrival − production time of the later input; percentiles from an HDR histogram.",
            p.latency_rate_pairs_per_s, p.latency_secs
        ),
        "Peak RSS = VmHWM of the peer process (the JVM / Python / this binary's `join-peer`), read just \
         before SIGTERM."
            .to_owned(),
        "Every peer: exactly-once (transactions, read_committed), commit interval as below, its own fresh \
         topics, group and state; peers run one after the other on the same broker."
            .to_owned(),
    ]
}

fn warnings(p: &JoinParameters, results: &[PeerResult]) -> Vec<String> {
    let mut warnings = Vec::new();
    for r in results {
        if let Some(rate) = r.pairs_per_s() {
            if rate < LATENCY_HEADROOM * p.latency_rate_pairs_per_s as f64 {
                warnings.push(format!(
                    "{}: its throughput ({rate:.0} pairs/s) is not well above the latency phase's rate ({} \
                     pairs/s), so its latency includes queueing, not only processing.",
                    r.label, p.latency_rate_pairs_per_s
                ));
            }
        }
        if let Some(cpu) = &r.cpu {
            if !cpu.foreign_work.is_empty() {
                warnings.push(format!(
                    "{}: {} ran meanwhile: another build shared the CPU, so its numbers are not a fair comparison.",
                    r.label,
                    cpu.foreign_work.join(", ")
                ));
            }
        }
        if r.stop.as_ref().is_some_and(|s| s.killed) {
            warnings.push(format!("{}: did not stop within 30 s of SIGTERM and was killed.", r.label));
        }
    }
    warnings
}

/// `VmHWM:   123456 kB` from `/proc/<pid>/status`.
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_owned(),
    }
}

/// The report as markdown.
pub fn markdown(report: &JoinReport) -> String {
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line(format!("# join: one stateful keyed join, four implementations, {}", report.started_at));
    line(String::new());
    line("| peer | keys | throughput pairs/s | p50 ms | p99 ms | peak RSS MiB | × of (a) | × of (c) | correct |".into());
    line("|---|---:|---:|---:|---:|---:|---:|---:|---|".into());
    for row in &report.peers {
        let r = &row.result;
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.keys,
            opt(r.pairs_per_s(), 0),
            opt(r.latency.as_ref().map(|l| l.p50_ms), 1),
            opt(r.latency.as_ref().map(|l| l.p99_ms), 1),
            opt(r.peak_rss_mib, 0),
            opt(row.throughput_of_raw, 2),
            opt(row.throughput_of_kafka_streams, 2),
            r.correct_cell()
        ));
    }
    line(String::new());
    line("## Targets (issue 12)".into());
    line(String::new());
    for target in &report.targets {
        line(target.line());
    }
    line(
        format!(
            "- restoring a 1M-key store from its changelog ≥ {}k records/s: measured by `paystream-bench restore` \
             (`results/restore-*.md`)",
            TARGET_RESTORE_RECORDS_PER_S / 1_000
        ),
    );
    line(String::new());
    for warning in &report.warnings {
        line(format!("> Warning: {warning}"));
        line(String::new());
    }
    line("## How to read it".into());
    line(String::new());
    for note in &report.notes {
        line(format!("- {note}"));
    }
    line(String::new());

    let p = &report.parameters;
    line("## Parameters".into());
    line(String::new());
    line(format!(
        "- backlog {} keys ({} for Quix), {} partitions per topic, {}-byte payloads, commit interval {} ms",
        p.keys, p.quix_keys, p.partitions, p.payload_bytes, p.commit_interval_ms
    ));
    line(format!("- latency phase: {} pairs/s for {} s", p.latency_rate_pairs_per_s, p.latency_secs));
    line(format!("- Kafka at {}; run id {}", p.bootstrap, p.run_id));
    line(format!("- peers: {}", p.peer_versions.join("; ")));
    line(String::new());
    line("## Machine".into());
    line(String::new());
    line(format!("- {}", report.machine.describe()));
    line(format!("- commit: {}", report.machine.commit));
    line(String::new());

    line("## More numbers".into());
    line(String::new());
    line(
        "| peer | outputs received / expected | backlog window s | first output after s | pairs/s from start | latency pairs | mean ms | p99.9 ms | max ms | peer CPU s | machine busy % | stop |"
            .into(),
    );
    line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".into());
    for row in &report.peers {
        let r = &row.result;
        let (received, expected) = r.verification.as_ref().map_or((0, 0), |v| (v.received, v.expected));
        let stop = r.stop.as_ref().map_or_else(
            || "–".to_owned(),
            |s| format!("{} after {:.1} s{}", s.exit, s.secs, if s.killed { " (SIGKILL)" } else { "" }),
        );
        line(format!(
            "| {} | {received} / {expected} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {stop} |",
            r.label,
            opt(r.throughput.as_ref().map(|t| t.window_s), 2),
            opt(r.first_output_after_s, 1),
            opt(r.pairs_per_s_from_start(), 0),
            r.latency_pairs,
            opt(r.latency.as_ref().map(|l| l.mean_ms), 1),
            opt(r.latency.as_ref().map(|l| l.p999_ms), 1),
            opt(r.latency.as_ref().map(|l| l.max_ms), 1),
            opt(r.peer_cpu_s, 1),
            opt(r.cpu.as_ref().map(|c| c.machine_busy_percent), 0),
        ));
    }
    line(String::new());

    let troubled: Vec<&PeerResult> = report
        .peers
        .iter()
        .map(|row| &row.result)
        .filter(|r| r.error.is_some() || r.cleanup_error.is_some() || !r.correct())
        .collect();
    if !troubled.is_empty() {
        line("## Failures and wrong outputs".into());
        line(String::new());
        for r in troubled {
            line(format!("### {}", r.label));
            line(String::new());
            if let Some(error) = &r.error {
                line("```".into());
                line(error.clone());
                line("```".into());
            }
            if let Some(error) = &r.cleanup_error {
                line(format!("- clean-up failed: {error}"));
            }
            for example in r.verification.iter().flat_map(|v| &v.examples) {
                line(format!("- {example}"));
            }
            if let Some(log) = &r.log {
                line(format!("- log: `{log}`"));
            }
            line(String::new());
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::Tally;
    use std::time::Duration;

    fn result(peer: PeerKind, pairs_per_s: f64, p99_ms: f64, rss_mib: f64) -> PeerResult {
        let mut r = PeerResult::new(peer, 1000, Path::new("/tmp/x.log"));
        r.throughput =
            Some(Throughput { pairs: 1000, outputs: 1000, window_s: 1000.0 / pairs_per_s, pairs_per_s });
        let mut tally = Tally::new();
        tally.success(Duration::from_micros((p99_ms * 1000.0) as u64));
        r.latency = Some(tally.summarize(Duration::from_secs(1)));
        r.peak_rss_mib = Some(rss_mib);
        r.verification = Some(Verification { expected: 1000, received: 1000, ..Verification::default() });
        r
    }

    #[test]
    fn ratios_are_rounded_against_the_target() {
        assert_eq!(shown_ratio(0.5999, Bound::AtLeast), "0.59");
        assert_eq!(shown_ratio(0.2501, Bound::AtMost), "0.26");
        assert_eq!(shown_ratio(20.0, Bound::AtLeast), "20.00");
    }

    #[test]
    fn targets_pass_miss_or_stay_unjudged() {
        let t = judge("x", Some(60.0), Some(100.0), Bound::AtLeast, 0.60, true, true);
        assert_eq!((t.verdict, t.ratio), (Verdict::Pass, Some(0.6)));
        let t = judge("x", Some(59.0), Some(100.0), Bound::AtLeast, 0.60, true, true);
        assert_eq!(t.verdict, Verdict::Miss);
        assert!(t.line().contains("measured 0.59× → **MISS**"), "{}", t.line());
        let t = judge("x", Some(10.0), Some(40.0), Bound::AtMost, 0.25, true, true);
        assert_eq!(t.verdict, Verdict::Pass);
        let t = judge("x", Some(10.0), Some(30.0), Bound::AtMost, 0.25, true, true);
        assert_eq!(t.verdict, Verdict::Miss);
        let t = judge("x", Some(90.0), Some(100.0), Bound::AtLeast, 0.60, false, true);
        assert_eq!(t.verdict, Verdict::Miss, "incorrect outputs never pass");
        let t = judge("x", Some(90.0), Some(100.0), Bound::AtLeast, 0.60, true, false);
        assert_eq!(t.verdict, Verdict::NotJudged);
        let t = judge("x", Some(90.0), None, Bound::AtLeast, 0.60, true, true);
        assert_eq!(t.verdict, Verdict::NotJudged);
        assert!(t.line().contains("measured – → **NOT JUDGED**"), "{}", t.line());
    }

    #[test]
    fn the_report_has_a_row_per_peer_and_every_target() {
        let results = vec![
            result(PeerKind::Raw, 50_000.0, 20.0, 30.0),
            result(PeerKind::Paystream, 40_000.0, 30.0, 60.0),
            result(PeerKind::KafkaStreams, 20_000.0, 80.0, 400.0),
            result(PeerKind::Quix, 1_000.0, 900.0, 200.0),
        ];
        let parameters = JoinParameters {
            keys: 1000,
            quix_keys: 100,
            partitions: 4,
            latency_rate_pairs_per_s: 1000,
            latency_secs: 20,
            commit_interval_ms: 100,
            payload_bytes: 64,
            bootstrap: "127.0.0.1:9092".into(),
            run_id: "r".into(),
            peer_versions: vec![],
        };
        let host = Host {
            cpus: 2,
            memory_gib: 8.0,
            kernel: "6.1".into(),
            cpu_model: "cpu".into(),
            commit: "abc".into(),
        };
        let report = JoinReport::new("2026-11-28T00:00:00Z".into(), parameters, host, results);
        let verdicts: Vec<Verdict> = report.targets.iter().map(|t| t.verdict).collect();
        // 0.80 of (a): miss; p50 30 of 80: pass; p99 60 of 400: pass; RSS 60 MiB: pass.
        assert_eq!(verdicts, vec![Verdict::Miss, Verdict::Pass, Verdict::Pass, Verdict::Pass]);
        let md = markdown(&report);
        assert!(
            md.contains("| (b) paystream topology | 1000 | 40000 | 30.0 | 30.0 | 60 | 0.80 | 2.00 | yes |"),
            "{md}"
        );
        assert!(md.contains("| (a) raw rdkafka, no state | 1000 | 50000 |"), "{md}");
        assert!(md.contains("(b) throughput ≥ 0.85 × (a)'s: measured 0.80× → **MISS**"), "{md}");
        assert!(
            md.contains("(b) peak RSS ≤ 100 MiB (as a multiple of 100 MiB): measured 0.60× → **PASS**"),
            "{md}"
        );
        assert!(
            report.warnings.iter().any(|w| w.contains("(d) Quix Streams") && w.contains("queueing")),
            "{:?}",
            report.warnings
        );
        let json = serde_json::to_string(&report).unwrap();
        assert!(
            json.contains("\"peer\":\"kafka-streams\"") && json.contains("\"verdict\":\"PASS\""),
            "{json}"
        );
    }

    #[test]
    fn a_failed_peer_is_not_correct_and_is_explained() {
        let mut failed = result(PeerKind::Paystream, 1.0, 1.0, 1.0);
        failed.error = Some("timed out".into());
        assert!(!failed.correct());
        assert_eq!(failed.correct_cell(), "yes; run failed (see below)");
        assert_eq!(vm_hwm_kib("Name:\tjava\nVmHWM:\t  123456 kB\nVmRSS:\t 1 kB\n"), Some(123_456));
        assert_eq!(vm_hwm_kib("Name: x\n"), None);
        let mut r = result(PeerKind::Raw, 1000.0, 1.0, 1.0); // 1000 pairs in a 1 s window
        r.first_output_after_s = Some(1.0);
        assert_eq!(r.pairs_per_s_from_start(), Some(500.0));
    }
}
