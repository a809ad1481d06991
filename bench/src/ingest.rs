//! `paystream-bench ingest`: `POST /api/v1/payment` against pgbench running the same
//! transaction on the same database, in one run (issue 5: paystream ≥ 80% of pgbench).
//!
//! 1. Seed W bench wallets (one fresh user each) straight into the wallet database.
//! 2. Run both sides one after the other, never at once, each after a `VACUUM ANALYZE` of
//!    the tables both write and once the machine is quiet again (`cpu::settle`: Debezium
//!    done with the previous side's WAL), each with the same concurrency, warm-up and window:
//!    - paystream: the real API in-process, driven by the closed-loop load generator;
//!    - pgbench: `bench/ingest/payment.pgbench`, the API's statements.
//! 3. Print the table, write it and its JSON twin under `bench/results/`.
//! 4. Remove the seeded rows, also when the run fails or is interrupted (SIGINT, SIGTERM).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::{SecondsFormat, Utc};
use paystream_schemas::events::topics;
use paystream_schemas::EventCodec;
use paystream_stack::{postgres, StackSettings};
use sqlx::PgPool;
use tracing::{info, warn};

use crate::cpu::{self, CpuUse};
use crate::latency::{Tally, Window};
use crate::pgbench::{PgbenchPlan, PgbenchRun, Protocol};
use crate::report::{IngestReport, Parameters, SystemResult, TARGET_RATIO};
use crate::seed::{BenchWallets, WALLETS_MAX};
use crate::{load, machine, payment, pgbench, report, seed, server};

/// The most requests in flight / pgbench clients: Postgres allows 200 connections, shared
/// with the API's pool and every other service of the stack.
pub const CONCURRENCY_MAX: u32 = 128;
/// The longest measured duration and warm-up a run accepts.
pub const DURATION_S_MAX: u64 = 3_600;
pub const WARMUP_S_MAX: u64 = 600;
/// pgbench worker threads: one per core of the machines paystream is developed on.
pub const PGBENCH_THREADS: u32 = 2;
pub const PGBENCH_THREADS_MAX: u32 = 64;
/// Bearer tokens outlive the run by this much (the API also tolerates 30 s of skew).
pub const TOKEN_TTL_MARGIN: Duration = Duration::from_secs(120);
/// Removing the seeded rows is tried this often, this far apart: right after an
/// interruption, transactions of the stopped side may still hold row locks for a moment.
pub const CLEANUP_ATTEMPTS: u32 = 3;
pub const CLEANUP_RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long to wait for the wallet database at start.
pub const DB_TIMEOUT: Duration = Duration::from_secs(30);

/// The pgbench script and the results folder, inside this crate.
const DEFAULT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ingest/payment.pgbench");
const DEFAULT_RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");
/// The repository, for `git rev-parse`.
const REPO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `paystream-bench ingest`'s flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bench wallets to seed, each with its own user; payments pick one at random. Many
    /// wallets keep row locks from dominating.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(WALLETS_MAX)))]
    pub wallets: u32,
    /// Requests in flight (paystream) and clients (pgbench).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONCURRENCY_MAX)))]
    pub concurrency: u32,
    /// Measured seconds per side.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=DURATION_S_MAX))]
    pub duration_s: u64,
    /// Seconds of load before the measurement starts, per side (not measured).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=WARMUP_S_MAX))]
    pub warmup_s: u64,
    /// Which side runs first.
    #[arg(long, value_enum, default_value_t = Order::PgbenchFirst)]
    pub order: Order,
    /// pgbench's query protocol (`-M`); sqlx uses prepared statements.
    #[arg(long, value_enum, default_value_t = Protocol::Prepared)]
    pub pgbench_protocol: Protocol,
    /// pgbench's worker threads (`-j`; at most the concurrency).
    #[arg(long, default_value_t = PGBENCH_THREADS, value_parser = clap::value_parser!(u32).range(1..=i64::from(PGBENCH_THREADS_MAX)))]
    pub pgbench_threads: u32,
    /// The pgbench executable.
    #[arg(long, env = "PGBENCH", default_value = "pgbench")]
    pub pgbench: PathBuf,
    /// The pgbench script.
    #[arg(long, default_value = DEFAULT_SCRIPT)]
    pub script: PathBuf,
    /// Where the result files go.
    #[arg(long, default_value = DEFAULT_RESULTS_DIR)]
    pub results_dir: PathBuf,
}

/// Which side runs first. The second one finds the tables a little larger (the first
/// side's payments stay until the end); the VACUUM before each side limits the difference.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Order {
    /// pgbench, then paystream (paystream meets the larger tables: the stricter order).
    PgbenchFirst,
    /// paystream, then pgbench.
    PaystreamFirst,
}

impl Order {
    fn describe(self) -> &'static str {
        match self {
            Order::PgbenchFirst => "pgbench, then paystream",
            Order::PaystreamFirst => "paystream, then pgbench",
        }
    }
}

/// What the two sides measured.
struct Measured {
    paystream: Tally,
    paystream_cpu: CpuUse,
    pgbench: PgbenchRun,
    pgbench_cpu: CpuUse,
}

/// Runs the benchmark; see the module documentation.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = StackSettings::from_env();
    let started_at = Utc::now();
    let db = postgres::connect(&settings.wallet_db_url, DB_TIMEOUT).await?;
    postgres::migrate_wallet(&db).await?;
    let wallets = BenchWallets::new(args.wallets);
    let codec = EventCodec::new(&settings.schema_registry_url)?;
    let payload = payment::encoded_event(&codec, wallets.wallet_id(1))
        .await
        .context("encoding a sample PaymentInitiated (is the Schema Registry up? `dev/status`)")?;
    let machine = machine::describe(&db, &settings.connect_url, Path::new(REPO_DIR)).await;

    info!(wallets = args.wallets, run = %wallets.tag(), "seeding bench wallets");
    seed::insert(&db, &wallets).await.context("seeding bench wallets")?;
    let measured = tokio::select! {
        measured = measure(&args, &settings, &db, &wallets, &payload) => measured,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
    };
    remove_seed(&db, &wallets).await;
    let measured = measured?;

    let report = build_report(&args, started_at, machine, payload.len(), measured);
    let markdown = report::markdown(&report);
    println!("{markdown}");
    let stamp = started_at.format("%Y%m%dT%H%M%SZ").to_string();
    let (md, json) = report::write(&args.results_dir, &stamp, &report)?;
    println!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// `paystream-bench clean`: removes the rows of every bench run left in the database.
pub async fn clean() -> anyhow::Result<()> {
    let settings = StackSettings::from_env();
    let db = postgres::connect(&settings.wallet_db_url, DB_TIMEOUT).await?;
    let removed = seed::remove_all_runs(&db).await?;
    println!(
        "removed {} bench users, {} wallets, {} payments, {} deposits",
        removed.users, removed.wallets, removed.payments, removed.deposits
    );
    Ok(())
}

/// Both sides, one after the other.
async fn measure(
    args: &Args,
    settings: &StackSettings,
    db: &PgPool,
    wallets: &BenchWallets,
    payload: &[u8],
) -> anyhow::Result<Measured> {
    let ((paystream, paystream_cpu), (pgbench, pgbench_cpu)) = match args.order {
        Order::PgbenchFirst => {
            let pgbench = run_pgbench(args, settings, db, wallets, payload).await?;
            (run_paystream(args, settings, db, wallets).await?, pgbench)
        }
        Order::PaystreamFirst => {
            let paystream = run_paystream(args, settings, db, wallets).await?;
            (paystream, run_pgbench(args, settings, db, wallets, payload).await?)
        }
    };
    Ok(Measured { paystream, paystream_cpu, pgbench, pgbench_cpu })
}

fn window(args: &Args) -> Window {
    Window::after(Duration::from_secs(args.warmup_s), Duration::from_secs(args.duration_s))
}

/// Both sides start from freshly vacuumed tables with current statistics.
async fn vacuum(db: &PgPool) -> anyhow::Result<()> {
    // VACUUM cannot run in a transaction block: send it as a simple query.
    sqlx::raw_sql("VACUUM (ANALYZE) wallets, wallet_transactions").execute(db).await.context("VACUUM")?;
    Ok(())
}

async fn run_paystream(
    args: &Args,
    settings: &StackSettings,
    db: &PgPool,
    wallets: &BenchWallets,
) -> anyhow::Result<(Tally, CpuUse)> {
    vacuum(db).await?;
    let window = window(args);
    let ttl = window.end + TOKEN_TTL_MARGIN;
    let tokens = (1..=wallets.count())
        .map(|n| Ok((wallets.wallet_id(n), server::token(wallets.user_id(n), ttl)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let api = server::start(settings).await.context("starting the API")?;
    let plan = load::LoadPlan {
        base_url: api.base_url.clone(),
        concurrency: args.concurrency,
        pace: load::Pace::Closed,
        stop: load::Stop::Window(window),
        wallets: Arc::new(tokens),
        timestamp: paystream_api::timestamp::format(Utc::now()),
        keep_sent: false,
        progress: Arc::default(),
    };
    let settled = settle("paystream").await;
    info!(url = %api.base_url, concurrency = args.concurrency, "paystream: warm-up {} s, measuring {} s", args.warmup_s, args.duration_s);
    let before = cpu::sample();
    let outcome = load::run(plan).await;
    let after = cpu::sample();
    api.stop().await?;
    let outcome = outcome?;
    Ok((
        outcome.tally,
        cpu::between(&before, &after, cpu::Own::ApiAndLoad { load_ticks: outcome.cpu_ticks }, settled),
    ))
}

async fn run_pgbench(
    args: &Args,
    settings: &StackSettings,
    db: &PgPool,
    wallets: &BenchWallets,
    payload: &[u8],
) -> anyhow::Result<(PgbenchRun, CpuUse)> {
    vacuum(db).await?;
    let hex: String = payload.iter().map(|byte| format!("{byte:02x}")).collect();
    let variables = [
        ("wallets", wallets.count().to_string()),
        ("wallet_prefix", wallets.wallet_id_prefix()),
        ("amount", payment::AMOUNT.to_owned()),
        ("kind", payment::KIND.to_owned()),
        ("description", payment::DESCRIPTION.to_owned()),
        ("aggregatetype", topics::PAYMENTS_INITIATED.to_owned()),
        ("payload_hex", hex),
        ("traceparent", payment::traceparent()),
    ];
    let plan = PgbenchPlan {
        program: args.pgbench.clone(),
        script: args.script.clone(),
        db_url: settings.wallet_db_url.clone(),
        clients: args.concurrency,
        threads: args.pgbench_threads.min(args.concurrency),
        protocol: args.pgbench_protocol,
        window: window(args),
        variables: variables.into_iter().map(|(name, value)| (name.to_owned(), value)).collect(),
        log_dir: std::env::temp_dir().join(format!("paystream-bench-{}", wallets.tag())),
    };
    let settled = settle("pgbench").await;
    info!(
        clients = plan.clients,
        threads = plan.threads,
        "pgbench: warm-up {} s, measuring {} s",
        args.warmup_s,
        args.duration_s
    );
    let before = cpu::sample();
    let run = pgbench::run(&plan).await?;
    let used = cpu::between(&before, &cpu::sample(), cpu::Own::Waiting, settled);
    Ok((run, used))
}

/// Waits for a quiet machine before `side` starts (see `cpu::settle`).
async fn settle(side: &str) -> cpu::Settled {
    info!("{side}: waiting for a quiet machine (at most {} % busy)", cpu::SETTLED_BUSY_PERCENT_MAX);
    let settled = cpu::settle().await;
    if !settled.settled {
        warn!("{side}: the machine stayed busy for {:?}; starting anyway", settled.waited);
    }
    settled
}

/// Removes the seeded rows; on failure says how to remove them later.
async fn remove_seed(db: &PgPool, wallets: &BenchWallets) {
    for attempt in 1..=CLEANUP_ATTEMPTS {
        match seed::remove(db, wallets).await {
            Ok(removed) => {
                info!(
                    users = removed.users,
                    wallets = removed.wallets,
                    payments = removed.payments,
                    deposits = removed.deposits,
                    "removed the bench rows"
                );
                return;
            }
            Err(error) if attempt < CLEANUP_ATTEMPTS => {
                warn!(%error, attempt, "removing the bench rows failed; trying again");
                tokio::time::sleep(CLEANUP_RETRY_DELAY).await;
            }
            Err(error) => {
                warn!(%error, "could not remove the bench rows; `paystream-bench clean` removes them later");
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM, naming it.
pub(crate) async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        },
        Err(_) => {
            // Without a SIGTERM handler, Ctrl-C still cleans up; a failing ctrl_c
            // handler means no signal can be awaited at all, so never complete.
            match tokio::signal::ctrl_c().await {
                Ok(()) => "SIGINT",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

fn build_report(
    args: &Args,
    started_at: chrono::DateTime<Utc>,
    machine: machine::Machine,
    payload_bytes: usize,
    measured: Measured,
) -> IngestReport {
    let window = window(args);
    let mut warnings = Vec::new();
    let pgbench_window = if measured.pgbench.covered.is_zero() {
        warnings.push("pgbench completed no transaction inside the window".to_owned());
        window.length()
    } else if measured.pgbench.covered < window.length() {
        warnings.push(format!(
            "pgbench ended {:.1} s into the {:.0} s window; its rate is over that part only",
            measured.pgbench.covered.as_secs_f64(),
            window.length().as_secs_f64()
        ));
        measured.pgbench.covered
    } else {
        window.length()
    };
    for (side, used) in [("paystream", &measured.paystream_cpu), ("pgbench", &measured.pgbench_cpu)] {
        if !used.settled {
            warnings.push(format!(
                "the machine was still busy after {:.0} s when the {side} side started",
                used.settle_wait_s
            ));
        }
        if !used.foreign_work.is_empty() {
            warnings.push(format!(
                "{} ran during the {side} side: another build shared the CPU, so this run is not a fair comparison",
                used.foreign_work.join(", ")
            ));
        }
    }
    let paystream_summary = measured.paystream.summarize(window.length());
    let pgbench_summary = measured.pgbench.tally.summarize(pgbench_window);
    let ratio = paystream_summary.rate_per_s / pgbench_summary.rate_per_s;
    let (target_met, verdict) = report::verdict(ratio, paystream_summary.errors, pgbench_summary.errors);
    let paystream = SystemResult {
        name: "paystream `POST /api/v1/payment`".into(),
        unit: "req/s".into(),
        errors_by_kind: measured.paystream.errors.clone(),
        error_examples: measured.paystream.error_examples.clone(),
        summary: paystream_summary,
        ratio_to_pgbench: ratio,
        self_reported_rate_per_s: None,
        cpu: measured.paystream_cpu,
    };
    let pgbench = SystemResult {
        name: "pgbench, same transaction".into(),
        unit: "tx/s".into(),
        errors_by_kind: measured.pgbench.tally.errors.clone(),
        error_examples: measured.pgbench.tally.error_examples.clone(),
        summary: pgbench_summary,
        ratio_to_pgbench: 1.0,
        self_reported_rate_per_s: measured.pgbench.reported_tps,
        cpu: measured.pgbench_cpu,
    };
    IngestReport {
        started_at: started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        parameters: Parameters {
            wallets: args.wallets,
            concurrency: args.concurrency,
            warmup_s: args.warmup_s,
            duration_s: args.duration_s,
            order: args.order.describe().into(),
            amount: payment::AMOUNT.into(),
            outbox_payload_bytes: payload_bytes,
            api_pool_connections: postgres::POOL_CONNECTIONS_MAX,
            pgbench_threads: args.pgbench_threads.min(args.concurrency),
            pgbench_protocol: args.pgbench_protocol.as_str().into(),
            pgbench_command: measured.pgbench.command.clone(),
        },
        machine,
        paystream,
        pgbench,
        ratio,
        target_ratio: TARGET_RATIO,
        target_met,
        verdict,
        warnings,
    }
}
