//! What a result was measured on: the machine, the database's settings that decide commit
//! speed, the Debezium connectors decoding its WAL meanwhile, and the commit of the code.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::process::Command;

/// How long the Connect REST API may take to list its connectors.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// What a fact that could not be read is reported as.
const UNKNOWN: &str = "unknown";

/// The environment of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs (nproc).
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cpu_model: String,
    /// `SELECT version()`'s first words.
    pub postgres: String,
    /// Settings that decide what a commit costs, as `name=value`.
    pub postgres_settings: Vec<String>,
    /// Every connector of the Connect worker, as `name: STATE`; the Debezium ones decode
    /// the WAL that both sides write.
    pub connectors: Vec<String>,
    /// `git rev-parse --short HEAD`, with `-dirty` when the work tree has changes.
    pub commit: String,
}

/// Postgres settings worth stating next to a commit-bound result.
const POSTGRES_SETTINGS: &[&str] =
    &["synchronous_commit", "fsync", "wal_level", "shared_buffers", "max_connections", "max_wal_size"];

/// The machine and the code, without the database: what the Kafka benchmarks (`join`,
/// `restore`) report.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    /// Logical CPUs (nproc).
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cpu_model: String,
    /// `git rev-parse --short HEAD`, with `-dirty` when the work tree has changes.
    pub commit: String,
}

/// Reads the host; a fact that cannot be read is `unknown` rather than an error.
pub async fn host(repo: &Path) -> Host {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Host {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: mem_total_kib(&meminfo).map_or(f64::NAN, |kib| kib as f64 / (1024.0 * 1024.0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| UNKNOWN.to_owned(), |s| s.trim().to_owned()),
        cpu_model: cpu_model(&cpuinfo).unwrap_or(UNKNOWN).to_owned(),
        commit: commit(repo).await,
    }
}

impl Host {
    /// One markdown line: CPUs, memory, kernel.
    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {:.1} GiB memory, kernel {}",
            self.cpus, self.cpu_model, self.memory_gib, self.kernel
        )
    }
}

/// Reads everything; a fact that cannot be read is `unknown` rather than an error.
pub async fn describe(db: &PgPool, connect_url: &str, repo: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: mem_total_kib(&meminfo).map_or(f64::NAN, |kib| kib as f64 / (1024.0 * 1024.0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| UNKNOWN.to_owned(), |s| s.trim().to_owned()),
        cpu_model: cpu_model(&cpuinfo).unwrap_or(UNKNOWN).to_owned(),
        postgres: postgres_version(db).await,
        postgres_settings: postgres_settings(db).await,
        connectors: connectors(connect_url).await,
        commit: commit(repo).await,
    }
}

fn cpu_model(cpuinfo: &str) -> Option<&str> {
    cpuinfo.lines().find(|line| line.starts_with("model name"))?.split_once(':').map(|(_, v)| v.trim())
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn postgres_version(db: &PgPool) -> String {
    let version: Result<String, _> = sqlx::query_scalar("SELECT version()").fetch_one(db).await;
    // "PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu, compiled by …"
    version.map_or_else(|_| UNKNOWN.to_owned(), |v| v.split(" on ").next().unwrap_or(&v).to_owned())
}

async fn postgres_settings(db: &PgPool) -> Vec<String> {
    let rows: Result<Vec<(String, String)>, _> = sqlx::query_as(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY($1) ORDER BY name",
    )
    .bind(POSTGRES_SETTINGS)
    .fetch_all(db)
    .await;
    match rows {
        Ok(rows) => rows.into_iter().map(|(name, value)| format!("{name}={value}")).collect(),
        Err(_) => vec![UNKNOWN.to_owned()],
    }
}

async fn connectors(connect_url: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Expanded {
        status: Status,
    }
    #[derive(serde::Deserialize)]
    struct Status {
        connector: State,
    }
    #[derive(serde::Deserialize)]
    struct State {
        state: String,
    }
    let listed = async {
        let http = reqwest::Client::builder().timeout(CONNECT_TIMEOUT).no_proxy().build()?;
        let url = format!("{}/connectors?expand=status", connect_url.trim_end_matches('/'));
        http.get(url)
            .send()
            .await?
            .error_for_status()?
            .json::<std::collections::BTreeMap<String, Expanded>>()
            .await
    };
    match listed.await {
        Ok(map) => map.into_iter().map(|(name, c)| format!("{name}: {}", c.status.connector.state)).collect(),
        Err(error) => vec![format!("{UNKNOWN} ({error})")],
    }
}

async fn commit(repo: &Path) -> String {
    let git = |args: &'static [&'static str]| async move {
        let output = Command::new("git").arg("-C").arg(repo).args(args).output().await.ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]).await else {
        return UNKNOWN.to_owned();
    };
    match git(&["status", "--porcelain"]).await {
        Some(changes) if changes.is_empty() => head,
        Some(_) => format!("{head}-dirty"),
        None => format!("{head}-{UNKNOWN}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read() {
        let cpuinfo =
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(cpu_model(cpuinfo), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert_eq!(cpu_model(""), None);
        assert_eq!(mem_total_kib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24_576_000));
        assert_eq!(mem_total_kib("nothing"), None);
    }
}
