//! Where the CPU went while a side ran. Both sides share two cores with Postgres and the
//! running stack, so a side's rate is decided as much by who else used the CPU as by its
//! own code; this module makes that visible:
//!
//! - how busy the whole machine was, and how much the hypervisor took (steal);
//! - CPU per part: Postgres, Kafka, Connect (Debezium), the registry, the in-process API,
//!   the load generator, pgbench, anything else;
//! - whether a compiler ran meanwhile (another build on the same cores skews a result);
//! - and, before a side starts, waiting until the machine is quiet.
//!
//! Accounting: a process's CPU is its own user + system time plus that of its children it
//! has reaped (`cutime`, `cstime`), so Postgres backends and pgbench still count after they
//! exit: the postmaster reaps the backends, this process reaps pgbench. All read from
//! Linux's `/proc`; on a machine without it the numbers are NaN or empty.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second of `/proc` times (USER_HZ, 100 on every Linux architecture
/// paystream runs on).
pub const CLOCK_TICKS_PER_S: f64 = 100.0;
/// Processes whose presence means another build is sharing the CPU.
pub const FOREIGN_WORK: &[&str] = &["rustc", "cc1", "cc1plus", "ld", "javac"];
/// A side starts only once the machine is at most this busy: Debezium decoding the
/// previous side's WAL, autovacuum or the VACUUM would otherwise run during it. The idle
/// stack (Kafka, Connect, the registry) keeps the machine a few percent busy.
pub const SETTLED_BUSY_PERCENT_MAX: f64 = 20.0;
/// How long the machine must be that quiet.
pub const SETTLE_SAMPLE: Duration = Duration::from_secs(2);
/// How long to wait for quiet before starting anyway (and saying so in the report).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The parts CPU is attributed to.
pub const POSTGRES: &str = "Postgres";
pub const KAFKA: &str = "Kafka broker";
pub const CONNECT: &str = "Kafka Connect (Debezium)";
pub const REGISTRY: &str = "Schema Registry";
pub const API: &str = "in-process API";
pub const LOAD_GENERATOR: &str = "load generator";
pub const PGBENCH: &str = "pgbench";
pub const OTHER: &str = "other";

/// A point in time, as `/proc` counts it.
#[derive(Clone, Debug)]
pub struct CpuSample {
    at: Instant,
    /// All CPUs' ticks since boot, the idle (incl. iowait) part, and the part the
    /// hypervisor gave to other machines (steal).
    machine_total_ticks: u64,
    machine_idle_ticks: u64,
    machine_steal_ticks: u64,
    /// Ticks per part (this process's own are split by the caller).
    parts: BTreeMap<&'static str, u64>,
    /// This process's own ticks, and those of its reaped children (pgbench).
    own_ticks: u64,
    own_children_ticks: u64,
    /// Names of `FOREIGN_WORK` processes running at this moment.
    foreign: Vec<String>,
}

/// What happened between two samples.
#[derive(Clone, Debug, Serialize)]
pub struct CpuUse {
    /// Seconds between the samples.
    pub elapsed_s: f64,
    /// Busy share of all CPUs together: 100 means every core was busy all the time.
    pub machine_busy_percent: f64,
    /// Share of all CPUs' time the hypervisor gave to someone else.
    pub machine_steal_percent: f64,
    /// CPU seconds per part (`POSTGRES`, `CONNECT`, …).
    pub parts_cpu_s: BTreeMap<String, f64>,
    /// Compilers seen running at the start or the end.
    pub foreign_work: Vec<String>,
    /// How long the side waited for a quiet machine before it started.
    pub settle_wait_s: f64,
    /// Whether the machine did get quiet (else the side started after `SETTLE_TIMEOUT`).
    pub settled: bool,
}

impl CpuUse {
    /// Average cores `part` used over the side (CPU seconds / elapsed seconds).
    pub fn cores(&self, part: &str) -> Option<f64> {
        self.parts_cpu_s.get(part).map(|cpu_s| cpu_s / self.elapsed_s)
    }
}

pub fn sample() -> CpuSample {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let (machine_total_ticks, machine_idle_ticks, machine_steal_ticks) =
        machine_ticks(&stat).unwrap_or((0, 0, 0));
    let own = read_process(std::process::id()).unwrap_or_default();
    let mut parts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut foreign = Vec::new();
    for pid in other_pids() {
        let Some(process) = read_process(pid) else { continue };
        if FOREIGN_WORK.contains(&process.comm.as_str()) {
            foreign.push(process.comm.clone());
        }
        *parts.entry(part_of(pid, &process.comm)).or_default() += process.ticks + process.children_ticks;
    }
    foreign.sort();
    foreign.dedup();
    CpuSample {
        at: Instant::now(),
        machine_total_ticks,
        machine_idle_ticks,
        machine_steal_ticks,
        parts,
        own_ticks: own.ticks,
        own_children_ticks: own.children_ticks,
        foreign,
    }
}

/// User + system ticks of this process's live threads named `name`.
pub fn threads_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let needle = format!("({name})");
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter(|stat| stat.contains(&needle))
        .filter_map(|stat| parse_stat(&stat))
        .map(|process| process.ticks)
        .sum()
}

/// CPU seconds (user + system) a live process has used so far, e.g. a benchmark peer child.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    read_process(pid).map(|process| process.ticks as f64 / CLOCK_TICKS_PER_S)
}

/// How long waiting for a quiet machine took.
#[derive(Clone, Copy, Debug)]
pub struct Settled {
    pub waited: Duration,
    pub settled: bool,
}

/// Waits until the machine has been at most `SETTLED_BUSY_PERCENT_MAX` busy for a whole
/// `SETTLE_SAMPLE`, or `SETTLE_TIMEOUT` has passed.
pub async fn settle() -> Settled {
    let started = Instant::now();
    loop {
        let before = sample();
        tokio::time::sleep(SETTLE_SAMPLE).await;
        let busy =
            between(&before, &sample(), Own::Waiting, Settled { waited: Duration::ZERO, settled: true })
                .machine_busy_percent;
        // NaN means no /proc: nothing to wait for then.
        let quiet = busy.is_nan() || busy <= SETTLED_BUSY_PERCENT_MAX;
        if quiet || started.elapsed() >= SETTLE_TIMEOUT {
            return Settled { waited: started.elapsed(), settled: quiet };
        }
    }
}

/// What this process was doing between two samples.
#[derive(Clone, Copy, Debug)]
pub enum Own {
    /// Serving the API and generating load; the generator's threads used these ticks.
    ApiAndLoad { load_ticks: u64 },
    /// Waiting for pgbench, its child: its own little CPU counts as `OTHER`.
    Waiting,
}

/// The use between `start` and `end`. This process's own CPU is split as `own` says; its
/// reaped children are pgbench.
pub fn between(start: &CpuSample, end: &CpuSample, own: Own, settled: Settled) -> CpuUse {
    let total = end.machine_total_ticks.saturating_sub(start.machine_total_ticks);
    let idle = end.machine_idle_ticks.saturating_sub(start.machine_idle_ticks);
    let steal = end.machine_steal_ticks.saturating_sub(start.machine_steal_ticks);
    let percent = |part: u64| if total == 0 { f64::NAN } else { part as f64 * 100.0 / total as f64 };
    let seconds = |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_S;
    let mut parts_cpu_s: BTreeMap<String, f64> = BTreeMap::new();
    for (part, end_ticks) in &end.parts {
        let start_ticks = start.parts.get(part).copied().unwrap_or(0);
        parts_cpu_s.insert((*part).to_owned(), seconds(end_ticks.saturating_sub(start_ticks)));
    }
    let own_ticks = end.own_ticks.saturating_sub(start.own_ticks);
    let children = end.own_children_ticks.saturating_sub(start.own_children_ticks);
    let split = match own {
        Own::ApiAndLoad { load_ticks } => {
            [(API, own_ticks.saturating_sub(load_ticks)), (LOAD_GENERATOR, load_ticks)]
        }
        Own::Waiting => [(OTHER, own_ticks), (API, 0)],
    };
    for (part, ticks) in split.into_iter().chain([(PGBENCH, children)]) {
        if ticks > 0 {
            *parts_cpu_s.entry(part.to_owned()).or_default() += seconds(ticks);
        }
    }
    let mut foreign_work: Vec<String> = start.foreign.iter().chain(&end.foreign).cloned().collect();
    foreign_work.sort();
    foreign_work.dedup();
    CpuUse {
        elapsed_s: end.at.duration_since(start.at).as_secs_f64(),
        machine_busy_percent: percent(total.saturating_sub(idle)),
        machine_steal_percent: percent(steal),
        parts_cpu_s,
        foreign_work,
        settle_wait_s: settled.waited.as_secs_f64(),
        settled: settled.settled,
    }
}

/// Every process but this one.
fn other_pids() -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .collect()
}

/// Which part a process belongs to: by its name, and for Java by its main class.
fn part_of(pid: u32, comm: &str) -> &'static str {
    match comm {
        "postgres" => POSTGRES,
        "pgbench" => PGBENCH,
        "java" => {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("ConnectDistributed") {
                CONNECT
            } else if cmdline.contains("kafka.Kafka") {
                KAFKA
            } else if cmdline.contains("quarkus-run.jar") {
                REGISTRY
            } else {
                OTHER
            }
        }
        _ => OTHER,
    }
}

/// A process's name and CPU ticks.
#[derive(Clone, Debug, Default, PartialEq)]
struct ProcessTicks {
    comm: String,
    /// utime + stime.
    ticks: u64,
    /// cutime + cstime: children it has waited for.
    children_ticks: u64,
}

fn read_process(pid: u32) -> Option<ProcessTicks> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid (comm) state …`: utime, stime, cutime, cstime are fields 14 to 17, counted after
/// the `)` that ends the name (which may itself contain spaces and parentheses).
fn parse_stat(stat: &str) -> Option<ProcessTicks> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // The text after the name starts at field 3 (state), so field n is at index n - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let utime = field(14)?;
    let stime = field(15)?;
    // cutime and cstime are signed in the kernel's format; they are never negative in practice.
    let children = field(16).unwrap_or(0) + field(17).unwrap_or(0);
    Some(ProcessTicks { comm, ticks: utime + stime, children_ticks: children })
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice` (guest time is
/// already inside user, so only the first eight count): (total, idle + iowait, steal).
fn machine_ticks(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|t| t.parse().ok()).collect();
    if ticks.len() < 8 {
        return None;
    }
    Some((ticks.iter().sum(), ticks[3] + ticks[4], ticks[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_is_read() {
        let stat = "cpu  100 5 50 800 20 1 2 3 9 0\ncpu0 50 2 25 400 10 0 1 1 0 0\n";
        assert_eq!(machine_ticks(stat), Some((981, 820, 3)));
        assert_eq!(machine_ticks("intr 1 2 3"), None);
        let own = "4242 (tokio (runtime)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 40 2 20 0 2";
        let process = parse_stat(own).unwrap();
        assert_eq!(process.comm, "tokio (runtime)");
        assert_eq!((process.ticks, process.children_ticks), (325, 42));
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn use_is_the_difference() {
        let sample = |at, total, idle, steal, postgres, own, children| CpuSample {
            at,
            machine_total_ticks: total,
            machine_idle_ticks: idle,
            machine_steal_ticks: steal,
            parts: BTreeMap::from([(POSTGRES, postgres)]),
            own_ticks: own,
            own_children_ticks: children,
            foreign: if own > 100 { vec!["rustc".into()] } else { vec![] },
        };
        let now = Instant::now();
        let start = sample(now, 1000, 800, 0, 50, 10, 0);
        let end = sample(now + Duration::from_secs(2), 1400, 900, 4, 250, 110, 30);
        let settled = Settled { waited: Duration::from_secs(2), settled: true };
        let used = between(&start, &end, Own::ApiAndLoad { load_ticks: 20 }, settled);
        assert!((used.machine_busy_percent - 75.0).abs() < 1e-9);
        assert!((used.machine_steal_percent - 1.0).abs() < 1e-9);
        assert_eq!(used.parts_cpu_s[POSTGRES], 2.0);
        assert_eq!(used.parts_cpu_s[LOAD_GENERATOR], 0.2);
        assert_eq!(used.parts_cpu_s[API], 0.8);
        assert_eq!(used.parts_cpu_s[PGBENCH], 0.3);
        assert_eq!(used.cores(POSTGRES), Some(1.0));
        assert_eq!(used.foreign_work, ["rustc"]);
        let used = between(&start, &end, Own::Waiting, settled);
        assert_eq!(used.parts_cpu_s[OTHER], 1.0);
        assert!(!used.parts_cpu_s.contains_key(API));
        assert!(self::sample().machine_total_ticks > 0, "this runs on Linux");
        assert!(threads_ticks("no-such-thread") == 0);
    }
}
