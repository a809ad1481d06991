//! `paystream chaos`: a load through the whole flow while processes and the stack are broken on
//! purpose, then `paystream audit` over what the load created.
//!
//! It starts every process of `dev/services` itself (with the provider simulator's duplicate,
//! reordered and lost callbacks and 5xx answers on), runs `paystream load` as a child, and
//! meanwhile injects a seeded plan of faults: kill -9 of the saga, timers, dispatcher and
//! settlement (restarted with the same arguments after a pause, as a process supervisor would);
//! SIGSTOP of one of them for longer than its transaction and session timeouts, then SIGCONT —
//! the zombie of KAFKA-17754; a restart of Kafka Connect, of the broker and of PostgreSQL; the
//! registry stopped for a while. A process that dies on its own is restarted too, and counted.
//! When the load is done it waits for every payment to settle, then audits. The same seed gives
//! the same plan, so a failing run can be replayed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use paystream_audit::{Rules, Scope, Sources};
use paystream_stack::supervisor::{self, Fleet, FlowEnvironment};
use paystream_stack::StackSettings;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::process::Command;

/// How long a paused process stays frozen: past the topology's transaction and session
/// timeouts (10 s each), so the broker aborts its transaction and the group moves its partitions.
const PAUSE: Duration = Duration::from_secs(15);
/// How long the registry stays away.
const REGISTRY_OUTAGE: Duration = Duration::from_secs(20);
/// How long a killed process stays dead before it is restarted (up to).
const DEAD_FOR_MAX: Duration = Duration::from_secs(5);
/// How often the supervisor looks for processes that died on their own.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(500);
/// Budget for every payment to settle once the load is done and the faults are over.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(600);
/// What one fault can add to a timer's lateness besides its own outage: the 10 s session timeout
/// before a dead or frozen member's partitions move, their restore, a restarted process's start.
const RECOVERY_PER_FAULT: Duration = Duration::from_secs(15);
/// How long a restart of a stack part (`dev/fault restart`) keeps it away, at most.
const STACK_RESTART_OUTAGE: Duration = Duration::from_secs(20);
/// The processes a fault may kill or pause (the API and the provider stay up: the load's
/// client and the provider's ledger are the outside world).
const VICTIMS: [&str; 4] = ["saga", "timers", "dispatch", "settle"];
/// Payments of the run in the wallet database when the load's own payments have begun (its
/// warm-up payment, then the first measured one).
const LOAD_STARTED_PAYMENTS: i64 = 2;
/// How long the load may take to create its users and settle its warm-up payment.
const LOAD_START_TIMEOUT: Duration = Duration::from_secs(240);

/// Payments accepted into the load's wallets created since `since`.
async fn payments_since(db: &sqlx::PgPool, since: chrono::DateTime<Utc>) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM wallet_transactions WHERE wallet_id = ANY($1)")
        .bind(load_wallets(db, since).await?)
        .fetch_one(db)
        .await?)
}

/// The wallets `paystream load` made for this run (created since `since`, owned by its users).
async fn load_wallets(db: &sqlx::PgPool, since: chrono::DateTime<Utc>) -> anyhow::Result<Vec<uuid::Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT w.wallet_id FROM wallets w JOIN users u USING (user_id) WHERE w.created_at >= $1 AND u.name LIKE $2",
    )
    .bind(since)
    .bind(format!("{}%", paystream_bench::flow::accounts::USER_NAME_PREFIX))
    .fetch_all(db)
    .await?)
}

/// Users (each with a wallet) the chaos run's load pays from.
const LOAD_USERS: u32 = 20;
/// The stack's parts that are restarted (`dev/fault restart`).
const STACK_PARTS: [&str; 3] = ["connect", "kafka", "postgres"];

#[derive(clap::Args)]
pub struct Args {
    /// Seed of the fault plan and of the simulator's decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Payments the load sends.
    #[arg(long, default_value_t = 2_000)]
    payments: u64,
    /// Their rate, per second.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Kills (spread over the saga, timers, dispatcher and settlement).
    #[arg(long, default_value_t = 4)]
    kills: usize,
    /// Also pause one process past its timeouts, restart Connect, the broker and PostgreSQL once
    /// each, and stop the registry for a while.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    stack_faults: bool,
    /// The repository's `dev/` directory (for `dev/services` and `dev/fault`).
    #[arg(long, default_value = "dev")]
    dev_dir: PathBuf,
}

/// One fault of the plan.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    /// kill -9, restart after the pause.
    Kill { service: &'static str, dead_for: Duration },
    /// SIGSTOP for [`PAUSE`], then SIGCONT.
    Pause { service: &'static str },
    /// `dev/fault restart <part>`.
    RestartStack { part: &'static str },
    /// The registry stopped for [`REGISTRY_OUTAGE`].
    RegistryOutage,
}

impl Fault {
    fn describe(&self) -> String {
        match self {
            Fault::Kill { service, dead_for } => format!("kill -9 {service}, restarted after {dead_for:?}"),
            Fault::Pause { service } => format!("SIGSTOP {service} for {PAUSE:?}"),
            Fault::RestartStack { part } => format!("restart {part}"),
            Fault::RegistryOutage => format!("registry down for {REGISTRY_OUTAGE:?}"),
        }
    }
}

impl Fault {
    /// How long this fault keeps some part of the flow from working, recovery included.
    fn outage(&self) -> Duration {
        RECOVERY_PER_FAULT
            + match self {
                Fault::Kill { dead_for, .. } => *dead_for,
                Fault::Pause { .. } => PAUSE,
                Fault::RestartStack { .. } => STACK_RESTART_OUTAGE,
                Fault::RegistryOutage => REGISTRY_OUTAGE,
            }
    }
}

/// How late a payment timeout may fire under a plan: by as long as the plan keeps the flow
/// broken. Faults can overlap in what they stop (a timers process restarted with a cold schema
/// cache cannot encode while the registry is away), so the bound is the sum of their outages; the
/// whole-flow test, without faults, holds timeouts to the audit's 2 s.
fn timer_tolerance(faults: &[(Duration, Fault)]) -> Duration {
    faults
        .iter()
        .map(|(_, f)| f.outage())
        .sum::<Duration>()
        .max(paystream_audit::checks::DEFAULT_TIMER_TOLERANCE)
}

/// The faults and when each starts, from the beginning of the load, in order.
fn plan(seed: u64, kills: usize, stack_faults: bool, window: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults: Vec<Fault> = (0..kills)
        .map(|i| Fault::Kill {
            service: VICTIMS[i % VICTIMS.len()],
            dead_for: Duration::from_millis(rng.random_range(0..=DEAD_FOR_MAX.as_millis() as u64)),
        })
        .collect();
    if stack_faults {
        faults.push(Fault::Pause { service: VICTIMS[rng.random_range(0..VICTIMS.len())] });
        faults.extend(STACK_PARTS.iter().map(|&part| Fault::RestartStack { part }));
        faults.push(Fault::RegistryOutage);
    }
    // Spread over the first 80% of the window, so the last fault still meets traffic.
    let span_ms = (window.as_millis() as u64 * 4 / 5).max(1);
    let mut timed: Vec<(Duration, Fault)> =
        faults.into_iter().map(|f| (Duration::from_millis(rng.random_range(0..span_ms)), f)).collect();
    timed.sort_by_key(|(at, _)| *at);
    timed
}

async fn dev_fault(dev_dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status =
        Command::new(dev_dir.join("fault")).args(args).status().await.context("running dev/fault")?;
    if !status.success() {
        bail!("dev/fault {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// What happened during the run, for the summary.
#[derive(Default)]
struct Tally {
    injected: Vec<(Duration, String)>,
    crashes: Vec<(Duration, String)>,
}

/// Restarts every process that died on its own (not one a fault is holding dead).
async fn supervise(
    fleet: &mut Fleet,
    held: &[&str],
    started: Instant,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    for name in fleet.dead() {
        if held.contains(&name.as_str()) {
            continue;
        }
        tally.crashes.push((started.elapsed(), name.clone()));
        tracing::warn!(service = %name, "died on its own; restarting");
        if let Some(service) = fleet.get(&name) {
            service.restart().await.with_context(|| format!("restarting {name}"))?;
        }
    }
    Ok(())
}

/// Waits `d` while supervising.
async fn wait_supervising(
    fleet: &mut Fleet,
    d: Duration,
    held: &[&str],
    started: Instant,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        supervise(fleet, held, started, tally).await?;
        tokio::time::sleep(SUPERVISE_INTERVAL.min(until.saturating_duration_since(Instant::now()))).await;
    }
    Ok(())
}

async fn inject(
    fault: &Fault,
    fleet: &mut Fleet,
    dev_dir: &Path,
    started: Instant,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    tracing::info!(fault = %fault.describe(), "injecting");
    tally.injected.push((started.elapsed(), fault.describe()));
    match fault {
        Fault::Kill { service, dead_for } => {
            fleet.get(service).context("no such service")?.kill().await;
            wait_supervising(fleet, *dead_for, &[service], started, tally).await?;
            fleet.get(service).context("no such service")?.restart().await?;
        }
        Fault::Pause { service } => {
            fleet.get(service).context("no such service")?.pause();
            wait_supervising(fleet, PAUSE, &[service], started, tally).await?;
            fleet.get(service).context("no such service")?.resume();
        }
        Fault::RestartStack { part } => dev_fault(dev_dir, &["restart", part]).await?,
        Fault::RegistryOutage => {
            dev_fault(dev_dir, &["stop", "registry"]).await?;
            wait_supervising(fleet, REGISTRY_OUTAGE, &[], started, tally).await?;
            dev_fault(dev_dir, &["start"]).await?;
        }
    }
    Ok(())
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("the paystream binary's path")?;
    let log_dir = std::env::temp_dir().join(format!("paystream-chaos-{}", args.seed));
    std::fs::create_dir_all(&log_dir)?;
    let specs = supervisor::services_file(
        &args.dev_dir.join("services"),
        &program,
        &FlowEnvironment::faulty(args.seed).vars(),
    )
    .context("reading dev/services")?;
    let since = Utc::now();
    let mut fleet = Fleet::start(specs, &log_dir).await?;
    let window = Duration::from_secs((args.payments / args.rate.max(1)).max(1));
    let faults = plan(args.seed, args.kills, args.stack_faults, window);
    eprintln!(
        "chaos: seed {}, {} payments at {}/s, {} faults, logs in {}",
        args.seed,
        args.payments,
        args.rate,
        faults.len(),
        log_dir.display()
    );

    let started = Instant::now();
    let mut load = Command::new(&program)
        .args(["load", "--payments", &args.payments.to_string(), "--rate", &args.rate.to_string()])
        .args(["--users", &LOAD_USERS.to_string(), "--results-dir"])
        .arg(log_dir.join("load"))
        .kill_on_drop(true)
        .spawn()
        .context("starting paystream load")?;
    let mut tally = Tally::default();
    // The fault clock starts when the load's payments do (after its users and its warm-up).
    let db = paystream_stack::postgres::connect(&settings.wallet_db_url, Duration::from_secs(60)).await?;
    let waiting = Instant::now();
    while payments_since(&db, since).await? < LOAD_STARTED_PAYMENTS {
        if waiting.elapsed() > LOAD_START_TIMEOUT {
            bail!("the load sent no payment within {LOAD_START_TIMEOUT:?}; see its output above");
        }
        if let Some(status) = load.try_wait()? {
            bail!("the load ended before its payments began: {status}");
        }
        wait_supervising(&mut fleet, SUPERVISE_INTERVAL, &[], started, &mut tally).await?;
    }
    let started = Instant::now();
    for (at, fault) in &faults {
        wait_supervising(&mut fleet, at.saturating_sub(started.elapsed()), &[], started, &mut tally).await?;
        inject(fault, &mut fleet, &args.dev_dir, started, &mut tally).await?;
    }
    let load_status = loop {
        if let Some(status) = load.try_wait()? {
            break status;
        }
        wait_supervising(&mut fleet, SUPERVISE_INTERVAL, &[], started, &mut tally).await?;
    };

    // Quiescence: every payment of the run settled. The run's wallets are its load's, named so
    // by `paystream load`, so a test's wallets made meanwhile are not the run's business.
    let wallets = load_wallets(&db, since).await?;
    let quiet_started = Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM wallet_transactions WHERE wallet_id = ANY($1) AND status = 'PENDING'",
        )
        .bind(&wallets)
        .fetch_one(&db)
        .await?;
        if pending == 0 {
            break;
        }
        if quiet_started.elapsed() > QUIESCE_TIMEOUT {
            eprintln!("chaos: {pending} payments still pending after {QUIESCE_TIMEOUT:?}; auditing anyway");
            break;
        }
        wait_supervising(&mut fleet, Duration::from_secs(1), &[], started, &mut tally).await?;
    }
    let sources = Sources::new(settings, Some("http://127.0.0.1:8090".into()));
    let scope = Scope { wallets: Some(wallets), since: None };
    let rules = Rules { timer_tolerance: timer_tolerance(&faults), ..Rules::default() };
    eprintln!("chaos: payment timeouts may fire up to {:?} late under this plan", rules.timer_tolerance);
    let findings = paystream_audit::audit(&db, &sources, &scope, &rules).await?;
    fleet.stop().await;

    println!("\n| at (s) | fault |\n|---:|---|");
    for (at, what) in &tally.injected {
        println!("| {:.1} | {what} |", at.as_secs_f64());
    }
    for (at, what) in &tally.crashes {
        println!("| {:.1} | {what} died on its own; restarted |", at.as_secs_f64());
    }
    println!("\nload: {load_status}; quiet after {:.1} s\n", quiet_started.elapsed().as_secs_f64());
    print!("{}", paystream_audit::report::render(&findings));
    if !findings.clean() || !load_status.success() {
        bail!("chaos run (seed {}) failed: {}", args.seed, paystream_audit::report::summary(&findings));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_seeded_complete_and_inside_the_window() {
        let window = Duration::from_secs(100);
        let a = plan(7, 4, true, window);
        assert_eq!(a, plan(7, 4, true, window), "same seed, same plan");
        assert_ne!(a, plan(8, 4, true, window));
        assert_eq!(a.len(), 4 + 1 + STACK_PARTS.len() + 1);
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
        assert!(a.iter().all(|(at, _)| *at < window * 4 / 5));
        let killed: Vec<_> =
            a.iter().filter_map(|(_, f)| matches!(f, Fault::Kill { .. }).then_some(f)).collect();
        assert_eq!(killed.len(), 4);
        for victim in VICTIMS {
            assert!(
                a.iter().any(|(_, f)| matches!(f, Fault::Kill { service, .. } if *service == victim)),
                "{victim}"
            );
        }
        assert_eq!(plan(1, 2, false, window).len(), 2);
    }

    #[test]
    fn the_timer_tolerance_is_the_plans_outages_and_never_below_the_audits() {
        let kill = Fault::Kill { service: "saga", dead_for: Duration::from_secs(2) };
        assert_eq!(timer_tolerance(&[(Duration::ZERO, kill)]), RECOVERY_PER_FAULT + Duration::from_secs(2));
        let both =
            [(Duration::ZERO, Fault::Pause { service: "timers" }), (Duration::ZERO, Fault::RegistryOutage)];
        assert_eq!(timer_tolerance(&both), RECOVERY_PER_FAULT * 2 + PAUSE + REGISTRY_OUTAGE);
        assert_eq!(timer_tolerance(&[]), paystream_audit::checks::DEFAULT_TIMER_TOLERANCE);
    }
}
