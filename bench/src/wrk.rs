//! wrk (Debian's `wrk`, C, LuaJIT-scripted) as the HTTP load generator of a benchmark.
//!
//! A benchmark that compares the API with pgbench must not charge the API for a heavier client
//! than pgbench is: an in-process Rust client (reqwest over hyper) on the same two cores spent
//! about as much CPU per request as the API it drove. wrk is pgbench's counterpart: a closed
//! loop of N connections over a few threads, each request built by a Lua function, and the
//! numbers read from its own `done()` hook, which prints one JSON line after [`RESULT_MARKER`].
//!
//! A run is two wrk invocations: a warm-up whose numbers are dropped, then the measured one.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::latency::Summary;

/// The line of wrk's output that carries the result JSON starts with this.
pub const RESULT_MARKER: &str = "PAYSTREAM-WRK ";
/// How much of wrk's output an error message quotes, in characters.
pub const OUTPUT_QUOTED_CHARS_MAX: usize = 2_000;
/// wrk's run ends this long after its duration at the latest (its own clock, plus connects).
pub const EXIT_GRACE: Duration = Duration::from_secs(30);

/// The Lua `done()` hook every script ends with: the run's numbers as one JSON line.
/// `summary.errors.status` counts answers ≥ 400; latencies are in microseconds.
const DONE_HOOK: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format(
    'PAYSTREAM-WRK {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeout_errors":%d,"mean_us":%.1f,"p50_us":%d,' ..
    '"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout, latency.mean,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

/// Errors of a wrk run.
#[derive(Debug, thiserror::Error)]
pub enum WrkError {
    #[error("starting {program}: {source} (wrk comes with the Debian package wrk; dev/install installs it)")]
    Spawn { program: String, source: std::io::Error },
    #[error("wrk did not finish within {0:?} of its duration")]
    Hung(Duration),
    #[error("wrk failed ({status}): {output}")]
    Failed { status: std::process::ExitStatus, output: String },
    #[error("wrk printed no result line ({RESULT_MARKER}…): {output}")]
    NoResult { output: String },
    #[error("wrk's result line is not the expected JSON: {0}")]
    BadResult(#[from] serde_json::Error),
    #[error("writing the wrk script {path}: {source}")]
    Script { path: PathBuf, source: std::io::Error },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct WrkPlan {
    pub program: PathBuf,
    /// `http://host:port`.
    pub base_url: String,
    /// The Lua body that defines `request()` (the [`DONE_HOOK`] is appended).
    pub script: String,
    /// Where the script is written (removed after the run).
    pub script_path: PathBuf,
    pub connections: u32,
    pub threads: u32,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request slower than this counts as a timeout error.
    pub timeout: Duration,
}

/// wrk's `done()` numbers.
#[derive(Clone, Debug, Deserialize)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    status_errors: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    timeout_errors: u64,
    mean_us: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl WrkResult {
    fn summary(&self) -> Summary {
        let ms = |us: u64| us as f64 / 1_000.0;
        let window_s = self.duration_us as f64 / 1_000_000.0;
        let successes = self.requests.saturating_sub(self.status_errors);
        Summary {
            successes,
            errors: self.status_errors
                + self.connect_errors
                + self.read_errors
                + self.write_errors
                + self.timeout_errors,
            window_s,
            rate_per_s: successes as f64 / window_s,
            mean_ms: self.mean_us / 1_000.0,
            p50_ms: ms(self.p50_us),
            p99_ms: ms(self.p99_us),
            p999_ms: ms(self.p999_us),
            max_ms: ms(self.max_us),
        }
    }
}

/// One measured run (after its warm-up), and the measured command line.
pub async fn run(plan: &WrkPlan) -> Result<(Summary, String), WrkError> {
    let script = format!("{}\n{DONE_HOOK}", plan.script);
    let written = match plan.script_path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&plan.script_path, script)),
        None => std::fs::write(&plan.script_path, script),
    };
    written.map_err(|source| WrkError::Script { path: plan.script_path.clone(), source })?;
    let measured = async {
        if !plan.warmup.is_zero() {
            invoke(plan, plan.warmup).await?;
        }
        invoke(plan, plan.duration).await
    }
    .await;
    // Best effort: a leftover script in the temp dir harms nothing.
    let _ = std::fs::remove_file(&plan.script_path);
    let (result, command) = measured?;
    Ok((result.summary(), command))
}

async fn invoke(plan: &WrkPlan, duration: Duration) -> Result<(WrkResult, String), WrkError> {
    let args = [
        "-c".to_owned(),
        plan.connections.to_string(),
        "-t".to_owned(),
        plan.threads.min(plan.connections).to_string(),
        "-d".to_owned(),
        format!("{}s", duration.as_secs().max(1)),
        "--timeout".to_owned(),
        format!("{}s", plan.timeout.as_secs().max(1)),
        "-s".to_owned(),
        plan.script_path.display().to_string(),
        plan.base_url.clone(),
    ];
    let command = format!("{} {}", plan.program.display(), args.join(" "));
    let child = Command::new(&plan.program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| WrkError::Spawn { program: plan.program.display().to_string(), source })?;
    let output = tokio::time::timeout(duration + EXIT_GRACE, child.wait_with_output())
        .await
        .map_err(|_| WrkError::Hung(EXIT_GRACE))?
        .map_err(|source| WrkError::Spawn { program: plan.program.display().to_string(), source })?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let quoted = || text.chars().take(OUTPUT_QUOTED_CHARS_MAX).collect::<String>();
    if !output.status.success() {
        return Err(WrkError::Failed { status: output.status, output: quoted() });
    }
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_MARKER))
        .ok_or_else(|| WrkError::NoResult { output: quoted() })?;
    Ok((serde_json::from_str(line)?, command))
}

/// A Lua string literal (the values put into generated scripts are ids, words and tokens; this
/// escapes what could still break the literal).
pub fn lua_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Lua array of strings.
pub fn lua_array<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = values.into_iter().map(lua_string).collect();
    format!("{{\n  {}\n}}", items.join(",\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_done_hooks_line_becomes_a_summary() {
        let line = r#"{"requests":1000,"duration_us":2000000,"status_errors":10,"connect_errors":0,"read_errors":1,"write_errors":0,"timeout_errors":2,"mean_us":1500.0,"p50_us":1200,"p99_us":9000,"p999_us":15000,"max_us":20000}"#;
        let summary = serde_json::from_str::<WrkResult>(line).unwrap().summary();
        assert_eq!(summary.successes, 990);
        assert_eq!(summary.errors, 13);
        assert_eq!(summary.rate_per_s, 495.0);
        assert_eq!((summary.p50_ms, summary.p99_ms, summary.max_ms), (1.2, 9.0, 20.0));
    }

    #[test]
    fn lua_literals_escape_quotes_and_backslashes() {
        assert_eq!(lua_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(lua_array(["x", "y"]), "{\n  \"x\",\n  \"y\"\n}");
    }
}
