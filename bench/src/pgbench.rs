//! pgbench on `bench/ingest/payment.pgbench`: the API's transaction, with no HTTP, JSON,
//! JWT or Avro in front of it.
//!
//! pgbench runs for the warm-up plus the measured duration (and a little tail, so the
//! window is surely covered) and writes one log line per transaction (`-l`). The log is
//! read into the same [`Tally`] as the API's requests: a transaction counts when it ends
//! inside the window, offsets taken from the moment pgbench was spawned.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use tokio::process::Command;

use crate::latency::{Tally, Window};

/// pgbench runs this much longer than warm-up + measured duration: its clock starts only
/// once its connections are up, and the window must end before pgbench does.
pub const TAIL: Duration = Duration::from_secs(1);
/// pgbench's per-transaction logs are named `<LOG_PREFIX>.<pid>[.<thread>]`.
pub const LOG_PREFIX: &str = "pgbench";
/// pgbench's exit status when some clients aborted on an error (the run itself finished).
pub const EXIT_CLIENTS_ABORTED: i32 = 2;
/// How much of pgbench's stderr an error message quotes, in characters.
pub const STDERR_QUOTED_CHARS_MAX: usize = 2_000;

/// How pgbench sends its statements (`-M`). The script's values are bound as parameters,
/// which the simple protocol cannot do (it pastes them into the text, unquoted), so it is
/// not offered.
#[derive(Clone, Copy, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Extended protocol, unnamed statements parsed every time.
    Extended,
    /// Extended protocol with named prepared statements, as sqlx does (it caches a
    /// prepared statement per connection and query).
    Prepared,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

/// Errors of a pgbench run.
#[derive(Debug, thiserror::Error)]
pub enum PgbenchError {
    #[error("starting {program}: {source} (pgbench comes with the Debian package postgresql-client)")]
    Spawn { program: String, source: std::io::Error },
    #[error("pgbench failed ({status}): {stderr}")]
    Failed { status: std::process::ExitStatus, stderr: String },
    #[error("the database URL {0} is not a URL")]
    Url(String),
    #[error("reading pgbench's log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("pgbench's log {path}, line {line_number}: {reason}: {line:?}")]
    Log { path: PathBuf, line_number: usize, line: String, reason: &'static str },
}

/// What to run.
pub struct PgbenchPlan {
    /// The pgbench executable.
    pub program: PathBuf,
    /// The custom script (`-f`).
    pub script: PathBuf,
    /// The database, as a `postgres://` URL; its password goes to pgbench as PGPASSWORD.
    pub db_url: String,
    /// Concurrent clients (`-c`), each on its own connection.
    pub clients: u32,
    /// pgbench worker threads (`-j`).
    pub threads: u32,
    pub protocol: Protocol,
    pub window: Window,
    /// `-D name=value` for every variable the script reads.
    pub variables: Vec<(String, String)>,
    /// A fresh directory for the per-transaction logs; removed however the run ends.
    pub log_dir: PathBuf,
}

/// What pgbench did.
#[derive(Debug)]
pub struct PgbenchRun {
    /// Transactions that ended inside the window.
    pub tally: Tally,
    /// The part of the window pgbench was still running in (the whole window, normally).
    pub covered: Duration,
    /// pgbench's own figure over its whole run, warm-up included: a cross-check.
    pub reported_tps: Option<f64>,
    /// The command line, without the password and the variables' values.
    pub command: String,
}

/// Runs the plan and reads its logs.
pub async fn run(plan: &PgbenchPlan) -> Result<PgbenchRun, PgbenchError> {
    let (url, password) = split_password(&plan.db_url)?;
    let io = |source| PgbenchError::Io { path: plan.log_dir.clone(), source };
    if plan.log_dir.exists() {
        std::fs::remove_dir_all(&plan.log_dir).map_err(io)?;
    }
    std::fs::create_dir_all(&plan.log_dir).map_err(io)?;
    let _remove_logs = RemoveOnDrop(&plan.log_dir);
    let duration_s = (plan.window.end + TAIL).as_secs_f64().ceil() as u64;
    let mut args: Vec<String> = vec![
        "--no-vacuum".into(),
        format!("--protocol={}", plan.protocol.as_str()),
        format!("--client={}", plan.clients),
        format!("--jobs={}", plan.threads),
        format!("--time={duration_s}"),
        format!("--file={}", plan.script.display()),
        "--log".into(),
        format!("--log-prefix={}", plan.log_dir.join(LOG_PREFIX).display()),
    ];
    let command = format!("{} {} [-D ...] {url}", plan.program.display(), args.join(" "));
    for (name, value) in &plan.variables {
        args.push(format!("--define={name}={value}"));
    }
    args.push(url);
    let mut child = Command::new(&plan.program);
    child.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // An interrupted run drops this future: pgbench must not outlive it.
    child.kill_on_drop(true);
    if let Some(password) = password {
        child.env("PGPASSWORD", password);
    }
    let origin = SystemTime::now();
    let output = child
        .output()
        .await
        .map_err(|source| PgbenchError::Spawn { program: plan.program.display().to_string(), source })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let clients_aborted = match output.status.code() {
        Some(0) => 0,
        Some(EXIT_CLIENTS_ABORTED) => aborted_clients(&stderr).count(),
        _ => {
            let stderr = stderr.chars().take(STDERR_QUOTED_CHARS_MAX).collect();
            return Err(PgbenchError::Failed { status: output.status, stderr });
        }
    };
    let origin_us = origin.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
    let (mut tally, last_end) = read_logs(&plan.log_dir, origin_us, plan.window)?;
    for line in aborted_clients(&stderr).take(clients_aborted) {
        tally.error("pgbench client aborted", line);
    }
    let covered = last_end.min(plan.window.end).saturating_sub(plan.window.start);
    Ok(PgbenchRun { tally, covered, reported_tps: reported_tps(&stdout), command })
}

/// Removes the log directory however `run` ends: done, failed, or dropped by an interrupt.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temp dir harms nothing.
        let _ = std::fs::remove_dir_all(self.0);
    }
}

/// The URL without its password, and the password.
fn split_password(db_url: &str) -> Result<(String, Option<String>), PgbenchError> {
    let mut url = Url::parse(db_url).map_err(|_| PgbenchError::Url(db_url.to_owned()))?;
    let password = url.password().map(str::to_owned);
    // Only fails for URLs that cannot have credentials, which a postgres:// URL can.
    let _ = url.set_password(None);
    Ok((url.to_string(), password))
}

/// Reads every log file: the tally of the window, and the offset of the last transaction's end.
fn read_logs(dir: &Path, origin_us: u64, window: Window) -> Result<(Tally, Duration), PgbenchError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PgbenchError::Io { path, source }
    };
    let mut tally = Tally::new();
    let mut last_end = Duration::ZERO;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let is_log = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(LOG_PREFIX));
        if !is_log {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        for (index, line) in text.lines().enumerate() {
            let entry = parse_line(line).map_err(|reason| PgbenchError::Log {
                path: path.clone(),
                line_number: index + 1,
                line: line.to_owned(),
                reason,
            })?;
            let end = Duration::from_micros(entry.end_us.saturating_sub(origin_us));
            last_end = last_end.max(end);
            if !window.contains(end) {
                continue;
            }
            match entry.outcome {
                Outcome::Done(latency) => tally.success(latency),
                Outcome::Failed(word) => tally.error(&format!("pgbench {word}"), line),
            }
        }
    }
    Ok((tally, last_end))
}

/// One transaction of pgbench's log.
#[derive(Debug, PartialEq)]
struct LogEntry {
    outcome: Outcome,
    /// When it ended, microseconds since the epoch.
    end_us: u64,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Done(Duration),
    /// pgbench's word for it: `failed`, `serialization`, `deadlock` or `skipped`.
    Failed(String),
}

/// `client_id transaction_no time script_no time_epoch time_us [schedule_lag] [retries]`,
/// where `time` is the latency in microseconds or a word for a transaction that did not
/// complete (PostgreSQL 15's pgbench documentation, "Per-Transaction Logging").
fn parse_line(line: &str) -> Result<LogEntry, &'static str> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 6 {
        return Err("fewer than 6 fields");
    }
    let epoch_s: u64 = fields[4].parse().map_err(|_| "time_epoch is not a number")?;
    let epoch_us: u64 = fields[5].parse().map_err(|_| "time_us is not a number")?;
    let outcome = match fields[2].parse::<u64>() {
        Ok(latency_us) => Outcome::Done(Duration::from_micros(latency_us)),
        Err(_) if fields[2].chars().all(|c| c.is_ascii_alphabetic()) => Outcome::Failed(fields[2].to_owned()),
        Err(_) => return Err("time is neither a number nor a word"),
    };
    Ok(LogEntry { outcome, end_us: epoch_s * 1_000_000 + epoch_us })
}

/// `tps = 1234.567890 (without initial connection time)` from pgbench's summary.
fn reported_tps(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|line| line.starts_with("tps = "))?;
    line["tps = ".len()..].split_whitespace().next()?.parse().ok()
}

/// pgbench's line for each client that aborted (`client 3 script 0 aborted in command …`;
/// not its closing "Run was aborted" line).
fn aborted_clients(stderr: &str) -> impl Iterator<Item = &str> {
    stderr.lines().filter(|line| line.contains("client ") && line.contains(" aborted in "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_read() {
        let entry = parse_line("0 1 15599 0 1795843326 894227").unwrap();
        assert_eq!(entry.outcome, Outcome::Done(Duration::from_micros(15_599)));
        assert_eq!(entry.end_us, 1_795_843_326_894_227);
        let failed = parse_line("3 17 failed 0 1795843326 894227 0").unwrap();
        assert_eq!(failed.outcome, Outcome::Failed("failed".into()));
        assert!(parse_line("0 1 15599 0").is_err());
        assert!(parse_line("0 1 -5 0 1795843326 894227").is_err());
        assert!(parse_line("0 1 15599 0 x 894227").is_err());
    }

    #[test]
    fn logs_count_what_ends_in_the_window() {
        let dir = std::env::temp_dir().join(format!("paystream-bench-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let origin_us = 1_000_000_000_000_000;
        let at = |offset_ms: u64| {
            let end = origin_us + offset_ms * 1_000;
            format!("{} {:06}", end / 1_000_000, end % 1_000_000)
        };
        let log = [
            format!("0 1 1000 0 {}", at(500)),     // warm-up: not counted
            format!("0 2 2000 0 {}", at(1_500)),   // counted
            format!("0 3 failed 0 {}", at(1_600)), // counted as an error
            format!("0 4 4000 0 {}", at(2_500)),   // after the window
        ];
        std::fs::write(dir.join("pgbench.42"), log.join("\n")).unwrap();
        std::fs::write(dir.join("unrelated"), "not a log").unwrap();
        let window = Window::after(Duration::from_secs(1), Duration::from_secs(1));
        let (tally, last_end) = read_logs(&dir, origin_us, window).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(tally.successes(), 1);
        assert_eq!(tally.errors["pgbench failed"], 1);
        assert_eq!(last_end, Duration::from_millis(2_500));
    }

    #[test]
    fn the_summary_and_the_url_are_read() {
        let stdout = "latency average = 10.034 ms\ntps = 199.328926 (without initial connection time)\n";
        assert_eq!(reported_tps(stdout), Some(199.328926));
        assert_eq!(reported_tps("nothing"), None);
        let (url, password) = split_password("postgres://wallet:secret@127.0.0.1:5432/wallet").unwrap();
        assert_eq!(url, "postgres://wallet@127.0.0.1:5432/wallet");
        assert_eq!(password.as_deref(), Some("secret"));
        let stderr = "pgbench: error: client 3 script 0 aborted in command 4 query 0: ERROR: x\n\
                      pgbench: error: Run was aborted; the above results are incomplete.\n";
        assert_eq!(aborted_clients(stderr).count(), 1);
    }
}
