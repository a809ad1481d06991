//! `paystream-bench query`: the read side's `GET /api/v1/payments/{paymentId}` and search
//! (`GET /api/v1/payments?q=<word>`) against pgbench running the same SQL on the read database
//! (`bench/query/get.pgbench`, `bench/query/search.pgbench`), in one run. Target (issue 13): GET
//! by id at ≥ 80% of pgbench's rate.
//!
//! 1. Seed U users, each with a wallet and P payment views, straight into the read database
//!    (deterministic ids, as `ingest` does, so pgbench addresses them without a lookup), then
//!    `ANALYZE`.
//! 2. For each query, pgbench then the real API in-process driven by wrk (`crate::wrk`: a C
//!    load generator of pgbench's weight, so the API is not charged for a heavier client); both
//!    closed loops with the same concurrency, threads, warm-up and measured time, one after the
//!    other, never at once.
//! 3. Print the table, write it and its JSON twin under `bench/results/` (`query-<UTC>`).
//! 4. Remove the seeded rows, also when the run fails or is interrupted (Ctrl-C).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::Utc;
use serde::Serialize;
use sqlx::PgPool;
use tracing::info;
use uuid::Uuid;

use crate::latency::{Summary, Window};
use crate::pgbench::{self, PgbenchPlan, Protocol};
use crate::wrk::{self, WrkPlan};
use crate::{machine, report, server};

/// The most requests in flight / pgbench clients (Postgres allows 200 connections, shared).
pub const CONCURRENCY_MAX: u32 = 128;
pub const USERS_MAX: u32 = 100_000;
pub const PAYMENTS_PER_USER_MAX: u32 = 10_000;
pub const DURATION_S_MAX: u64 = 3_600;
pub const WARMUP_S_MAX: u64 = 600;
/// The longest a request may take before it counts as a `timeout` error (wrk's `--timeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bearer tokens outlive the run by this much.
pub const TOKEN_TTL_MARGIN: Duration = Duration::from_secs(600);
/// How long to wait for the databases at start.
pub const DB_TIMEOUT: Duration = Duration::from_secs(30);
/// The GET-by-id target: the API at least this share of pgbench's rate.
pub const TARGET_RATIO: f64 = 0.8;
/// The words the seed's descriptions are made of, one per description; search asks for one.
pub const WORDS: [&str; 8] = ["tea", "coffee", "mobile", "cinema", "taxi", "grocery", "book", "gym"];
const DESCRIPTIONS: [&str; 8] = [
    "green tea",
    "coffee beans",
    "mobile top-up",
    "cinema tickets",
    "taxi ride",
    "grocery store",
    "book shop",
    "gym membership",
];
/// Page size of the search requests (the pgbench script's `LIMIT 21` is this + 1, as the API's).
const SEARCH_LIMIT: u32 = 20;
/// Every seeded user's name starts with this.
const USER_NAME_PREFIX: &str = "paystream-bench-query ";
/// The middle groups of the seeded ids.
const USER_INFIX: &str = "be0d-4000-8000";
const WALLET_INFIX: &str = "be0d-4000-9000";
const PAYMENT_INFIX: &str = "be0d-4000-a000";

const DEFAULT_SCRIPTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/query");
const DEFAULT_RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");
const REPO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `paystream-bench query`'s flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Users to seed, each with one wallet.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(USERS_MAX)))]
    pub users: u32,
    /// Payment views per user.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(PAYMENTS_PER_USER_MAX)))]
    pub payments_per_user: u32,
    /// Requests in flight (paystream) and clients (pgbench).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONCURRENCY_MAX)))]
    pub concurrency: u32,
    /// Measured seconds per side and query.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=DURATION_S_MAX))]
    pub duration_s: u64,
    /// Seconds of load before the measurement starts, per side and query.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=WARMUP_S_MAX))]
    pub warmup_s: u64,
    /// Worker threads of pgbench (`-j`) and of wrk (`-t`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pgbench_threads: u32,
    /// The pgbench executable.
    #[arg(long, env = "PGBENCH", default_value = "pgbench")]
    pub pgbench: PathBuf,
    /// The wrk executable (the API's load generator).
    #[arg(long, env = "WRK", default_value = "wrk")]
    pub wrk: PathBuf,
    /// The folder of `get.pgbench` and `search.pgbench`.
    #[arg(long, default_value = DEFAULT_SCRIPTS_DIR)]
    pub scripts: PathBuf,
    /// Where the result files go.
    #[arg(long, default_value = DEFAULT_RESULTS_DIR)]
    pub results_dir: PathBuf,
}

/// The seeded rows of one run.
#[derive(Clone, Debug)]
struct Seed {
    /// Random per run, so runs never collide with each other's leftovers.
    tag: u32,
    users: u32,
    per_user: u32,
}

impl Seed {
    fn prefix(&self, infix: &str) -> String {
        format!("{:08x}-{infix}-", self.tag)
    }

    fn id(&self, infix: &str, n: u64) -> Uuid {
        // 8-4-4-4-12 hex digits and hyphens; n < 16^12 by the bounds on the flags.
        Uuid::parse_str(&format!("{}{n:012x}", self.prefix(infix))).expect("well-formed uuid")
    }

    fn payments(&self) -> u64 {
        u64::from(self.users) * u64::from(self.per_user)
    }

    /// The user payment `n` belongs to (the same rule as the pgbench and wrk scripts').
    #[cfg(test)]
    fn owner_of(&self, n: u64) -> u64 {
        (n - 1) % u64::from(self.users) + 1
    }
}

/// Which query a side runs.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Query {
    /// `GET /api/v1/payments/{paymentId}`.
    GetById,
    /// `GET /api/v1/payments?q=<word>&limit=20`.
    Search,
}

impl Query {
    fn script(self) -> &'static str {
        match self {
            Query::GetById => "get.pgbench",
            Query::Search => "search.pgbench",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Query::GetById => "GET /api/v1/payments/{id}",
            Query::Search => "GET /api/v1/payments?q=<word>&limit=20",
        }
    }
}

/// One query's two sides.
#[derive(Clone, Debug, Serialize)]
pub struct QueryResult {
    pub query: Query,
    pub paystream: Summary,
    pub pgbench: Summary,
    /// paystream's rate / pgbench's.
    pub ratio: f64,
    pub pgbench_command: String,
    pub wrk_command: String,
}

/// The whole run, as written to `bench/results/query-<UTC>.json`.
#[derive(Clone, Debug, Serialize)]
pub struct QueryReport {
    pub started_at: String,
    pub machine: machine::Machine,
    pub users: u32,
    pub payments: u64,
    pub concurrency: u32,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub results: Vec<QueryResult>,
    pub target: String,
    pub target_met: bool,
}

/// Runs the benchmark; see the module documentation.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = paystream_stack::StackSettings::from_env();
    let started_at = Utc::now();
    let query_db = paystream_stack::postgres::connect(&settings.query_db_url, DB_TIMEOUT).await?;
    paystream_stack::postgres::migrate_query(&query_db).await?;
    let wallet_db = paystream_stack::postgres::connect(&settings.wallet_db_url, DB_TIMEOUT).await?;
    let machine = machine::describe(&wallet_db, &settings.connect_url, Path::new(REPO_DIR)).await;
    let seed = Seed { tag: rand::random(), users: args.users, per_user: args.payments_per_user };
    info!(
        users = seed.users,
        payments = seed.payments(),
        tag = format!("{:08x}", seed.tag),
        "seeding the read database"
    );
    insert(&query_db, &seed).await.context("seeding the read database")?;
    let measured = tokio::select! {
        measured = measure(&args, &settings, &seed) => measured,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    remove(&query_db, &seed).await.context("removing the seeded rows")?;
    let results = measured?;
    let target_met = results
        .iter()
        .find(|r| r.query == Query::GetById)
        .is_some_and(|r| r.ratio >= TARGET_RATIO && r.paystream.errors == 0);
    let report = QueryReport {
        started_at: started_at.to_rfc3339(),
        machine,
        users: seed.users,
        payments: seed.payments(),
        concurrency: args.concurrency,
        warmup_s: args.warmup_s,
        duration_s: args.duration_s,
        results,
        target: format!("GET by id ≥ {:.0}% of pgbench's rate, no errors", TARGET_RATIO * 100.0),
        target_met,
    };
    let markdown = markdown(&report);
    println!("{markdown}");
    let stamp = started_at.format("%Y%m%dT%H%M%SZ").to_string();
    let (md, json) = report::write_files(&args.results_dir, "query", &stamp, &markdown, &report)?;
    println!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// Users, wallets and payment views, in one transaction, then `ANALYZE`.
async fn insert(db: &PgPool, seed: &Seed) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO users (user_id, name, phone)
         SELECT CAST($1 || lpad(to_hex(n), 12, '0') AS uuid), $2 || n, '+7999' || n
           FROM generate_series(1, $3::bigint) n",
    )
    .bind(seed.prefix(USER_INFIX))
    .bind(format!("{USER_NAME_PREFIX}{:08x} ", seed.tag))
    .bind(i64::from(seed.users))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO wallets (wallet_id, user_id, currency)
         SELECT CAST($1 || lpad(to_hex(n), 12, '0') AS uuid), CAST($2 || lpad(to_hex(n), 12, '0') AS uuid), 'RUB'
           FROM generate_series(1, $3::bigint) n",
    )
    .bind(seed.prefix(WALLET_INFIX))
    .bind(seed.prefix(USER_INFIX))
    .bind(i64::from(seed.users))
    .execute(&mut *tx)
    .await?;
    let base_us = Utc::now().timestamp_micros() - 86_400_000_000;
    sqlx::query(
        "INSERT INTO payment_views (payment_id, wallet_id, amount, currency, kind, description, status,
                                    created_at_us, updated_at_us, version)
         SELECT CAST($1 || lpad(to_hex(n), 12, '0') AS uuid),
                CAST($2 || lpad(to_hex((n - 1) % $3 + 1), 12, '0') AS uuid),
                12.50, 'RUB', 'mobile', ($4::text[])[n % 8 + 1] || ' #' || n, 'COMPLETED',
                $5 + n * 1000, $5 + n * 1000, 3
           FROM generate_series(1, $6::bigint) n",
    )
    .bind(seed.prefix(PAYMENT_INFIX))
    .bind(seed.prefix(WALLET_INFIX))
    .bind(i64::from(seed.users))
    .bind(DESCRIPTIONS.to_vec())
    .bind(base_us)
    .bind(i64::try_from(seed.payments()).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE users, wallets, payment_views").execute(db).await?;
    Ok(())
}

/// Removes the run's rows (by their ids' prefix).
async fn remove(db: &PgPool, seed: &Seed) -> sqlx::Result<()> {
    for (table, column, infix) in [
        ("payment_views", "payment_id", PAYMENT_INFIX),
        ("wallets", "wallet_id", WALLET_INFIX),
        ("users", "user_id", USER_INFIX),
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE {column}::text LIKE $1"))
            .bind(format!("{}%", seed.prefix(infix)))
            .execute(db)
            .await?;
    }
    Ok(())
}

/// Both queries, pgbench then paystream for each.
async fn measure(
    args: &Args,
    settings: &paystream_stack::StackSettings,
    seed: &Seed,
) -> anyhow::Result<Vec<QueryResult>> {
    let api = server::start(settings).await?;
    // Two queries, two sides each, one after the other.
    let ttl = Duration::from_secs(4 * (args.warmup_s + args.duration_s + pgbench::TAIL.as_secs()))
        + TOKEN_TTL_MARGIN;
    let tokens: Vec<String> = (1..=u64::from(seed.users))
        .map(|n| server::token(seed.id(USER_INFIX, n), ttl))
        .collect::<anyhow::Result<_>>()?;
    let window = Window::after(Duration::from_secs(args.warmup_s), Duration::from_secs(args.duration_s));
    let mut results = Vec::new();
    for query in [Query::GetById, Query::Search] {
        info!(query = query.describe(), "pgbench");
        let plan = PgbenchPlan {
            program: args.pgbench.clone(),
            script: args.scripts.join(query.script()),
            db_url: settings.query_db_url.clone(),
            clients: args.concurrency,
            threads: args.pgbench_threads.min(args.concurrency),
            protocol: Protocol::Prepared,
            window,
            variables: vec![
                ("payments".into(), seed.payments().to_string()),
                ("users".into(), seed.users.to_string()),
                ("payment_prefix".into(), seed.prefix(PAYMENT_INFIX)),
                ("user_prefix".into(), seed.prefix(USER_INFIX)),
            ],
            log_dir: std::env::temp_dir().join(format!("paystream-bench-query-{:08x}", seed.tag)),
        };
        let pgbench_run = pgbench::run(&plan).await?;
        info!(query = query.describe(), "paystream (wrk)");
        let wrk_plan = WrkPlan {
            program: args.wrk.clone(),
            base_url: api.base_url.clone(),
            script: wrk_script(query, seed, &tokens),
            script_path: std::env::temp_dir().join(format!(
                "paystream-bench-query-{:08x}-{}.lua",
                seed.tag,
                query.script()
            )),
            connections: args.concurrency,
            threads: args.pgbench_threads,
            warmup: Duration::from_secs(args.warmup_s),
            duration: Duration::from_secs(args.duration_s),
            timeout: REQUEST_TIMEOUT,
        };
        let (paystream, wrk_command) = wrk::run(&wrk_plan).await?;
        let pgbench = pgbench_run.tally.summarize(window.length());
        results.push(QueryResult {
            query,
            ratio: paystream.rate_per_s / pgbench.rate_per_s,
            paystream,
            pgbench,
            pgbench_command: pgbench_run.command,
            wrk_command,
        });
    }
    api.stop().await?;
    Ok(results)
}

/// The wrk script of `query`: `request()` picks a random seeded payment (GET by id, with its
/// owner's token) or a random word and user (search), as the pgbench scripts do.
fn wrk_script(query: Query, seed: &Seed, tokens: &[String]) -> String {
    let request = match query {
        Query::GetById => {
            "  local n = math.random(1, payments)\n  local u = (n - 1) % users + 1\n  \
             return wrk.format(\"GET\", \"/api/v1/payments/\" .. payment_prefix .. string.format(\"%012x\", n),\n    \
             { [\"Authorization\"] = \"Bearer \" .. tokens[u] })"
        }
        Query::Search => {
            "  local word = words[math.random(1, #words)]\n  local u = math.random(1, users)\n  \
             return wrk.format(\"GET\", \"/api/v1/payments?q=\" .. word .. \"&limit=\" .. search_limit,\n    \
             { [\"Authorization\"] = \"Bearer \" .. tokens[u] })"
        }
    };
    format!(
        "-- paystream-bench query ({query}): generated per run.\n\
         local tokens = {tokens}\n\
         local words = {words}\n\
         local users = {users}\n\
         local payments = {payments}\n\
         local search_limit = {SEARCH_LIMIT}\n\
         local payment_prefix = {prefix}\n\
         local threads = 0\n\
         -- each thread its own random sequence\n\
         function setup(thread)\n  threads = threads + 1\n  thread:set(\"seed\", threads)\nend\n\
         function init(args)\n  math.randomseed({tag} + seed)\nend\n\
         function request()\n{request}\nend\n",
        query = query.describe(),
        tokens = wrk::lua_array(tokens.iter().map(String::as_str)),
        words = wrk::lua_array(WORDS),
        users = seed.users,
        payments = seed.payments(),
        prefix = wrk::lua_string(&seed.prefix(PAYMENT_INFIX)),
        tag = seed.tag,
    )
}

/// The run as a markdown table.
fn markdown(report: &QueryReport) -> String {
    let mut md = format!(
        "# paystream-bench query, {}\n\n{} users × {} payments in the read database, {} in flight, {} s warm-up, {} s measured per side\n\n",
        report.started_at,
        report.users,
        report.payments / u64::from(report.users.max(1)),
        report.concurrency,
        report.warmup_s,
        report.duration_s
    );
    md.push_str("| query | side | rate /s | p50 ms | p99 ms | max ms | errors | ratio |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.results {
        for (side, s, ratio) in [
            ("paystream API", &r.paystream, format!("{:.2}", r.ratio)),
            ("pgbench, same SQL", &r.pgbench, String::new()),
        ] {
            md.push_str(&format!(
                "| {} | {side} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {ratio} |\n",
                r.query.describe(),
                s.rate_per_s,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                s.errors
            ));
        }
    }
    md.push_str(&format!(
        "\nTarget: {}: **{}**\n\nMachine: {} CPUs, {}, commit {}\n",
        report.target,
        if report.target_met { "met" } else { "missed" },
        report.machine.cpus,
        report.machine.postgres,
        report.machine.commit
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_follow_the_scripts_rule() {
        let seed = Seed { tag: 0xabcdef01, users: 3, per_user: 2 };
        assert_eq!(seed.id(PAYMENT_INFIX, 10).to_string(), "abcdef01-be0d-4000-a000-00000000000a");
        assert_eq!(seed.prefix(USER_INFIX).len(), 24, "pgbench appends 12 hex digits");
        assert_eq!((1..=6).map(|n| seed.owner_of(n)).collect::<Vec<_>>(), [1, 2, 3, 1, 2, 3]);
        assert_eq!(seed.payments(), 6);
    }
}
