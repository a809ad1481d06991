//! `paystream load` (issue 10): payments through the whole running pipeline — the real API,
//! Debezium, the saga, the dispatcher, the provider simulator, settlement — at a target rate,
//! each followed until its wallet is settled, with where its time went hop by hop.
//!
//! 1. Check the stack and the processes (or start them, `--start-services`).
//! 2. Create the run's users through the API: a token each, a wallet each, an operator's
//!    deposit each ([`accounts`]); then one warm-up payment, not measured, waited for until
//!    settled (processors just started have joined their groups by then).
//! 3. Send the payments with the load generator of [`crate::load`] in its open loop: request
//!    *i* due at *i / rate*, at most `concurrency` in flight.
//! 4. Wait, bounded, until every accepted payment is settled ([`SETTLE_TIMEOUT_DEFAULT`]),
//!    counting the ones that are not.
//! 5. Read the moments each payment left behind ([`hops`]): its row's `accepted_at` and
//!    `settled_at`, its records on the flow's topics ([`records`]).
//! 6. The table ([`report`]), printed and written to `bench/results/load-<UTC>.md` + `.json`.
//!
//! # Why here, in `paystream-bench`
//! The mechanisms a load needs already live in this crate: the HTTP load generator
//! ([`crate::load`], which gained the open loop for this), the HDR latency tally
//! ([`crate::latency`]), the machine description ([`crate::machine`]), the result files
//! ([`crate::report::write_files`]) and the payment request ([`crate::payment`]). So the
//! load is a module of this library, and the `paystream` binary depends on the library for
//! its `load` subcommand (`cli/src/load.rs`: flags and the terminal's progress bar only),
//! rather than the generator being written twice or moved out of the benchmarks. Like the
//! rest of this crate it is a harness whose errors are read by a person: `anyhow` with
//! context, not an error enum.
//!
//! It is a benchmark: it reports figures and never asserts them.

pub mod accounts;
pub mod hops;
pub mod records;
pub mod report;
pub mod services;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use paystream_schemas::events::{topics, ChargeCommand, PaymentResult, ProviderCallbackReceived};
use paystream_schemas::{Event, EventCodec};
use paystream_stack::{kafka, postgres, StackSettings};
use sqlx::PgPool;
use uuid::Uuid;

use self::hops::Timeline;
use self::report::{LoadReport, Parameters, Posts, Settlement};
use self::services::ProviderMode;
use crate::load::{self, LoadPlan, Pace, Progress, Sent, Stop};
use crate::{machine, payment};

/// How long accepted payments may take to settle after the last POST, unless told otherwise.
/// A lost callback is the slowest path: the saga's payment timeout (60 s by default,
/// `PAYSTREAM_PAYMENT_TIMEOUT_MS`) fires, then it asks the provider for the charge's status
/// (retrying from 1 s, doubling), and the answer goes through the pipeline; 90 s proved too
/// short for that in a seeds run.
pub const SETTLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(180);
/// How long the warm-up payment may take to settle: processors just started join their
/// groups and restore their stores first.
pub const WARM_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the wallet database is asked how many payments are settled.
pub const SETTLE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// After settling, how long the run waits for the read database to show every settled
/// payment's result (the projection lag is measured by the rows' own stamps, not this wait).
pub const PROJECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the read database is asked meanwhile.
pub const PROJECTION_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the progress display is updated during the load.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// How long to wait for the wallet database and Kafka at start.
pub const STACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Records are read from this long before the first POST (clocks are one machine's, so
/// this only covers the milliseconds of Kafka's timestamps).
pub const RECORDS_MARGIN: Duration = Duration::from_secs(1);
/// Tokens outlive the planned run by this much (set-up, settling, reading).
pub const TOKEN_MARGIN: Duration = Duration::from_secs(600);
/// The most requests in flight: Postgres allows 200 connections, shared by every service.
pub const CONCURRENCY_MAX: u32 = 128;
/// The most users a run creates (each is two API calls before the load starts).
pub const USERS_MAX: u32 = 100_000;
/// The outbox connectors whose batch wait shapes the hops.
pub const OUTBOX_CONNECTORS: &[&str] = &["wallet-outbox", "ledger-outbox"];
/// Debezium's `poll.interval.ms` when a connector does not set it.
pub const DEBEZIUM_POLL_INTERVAL_DEFAULT_MS: u64 = 500;

/// The results folder and the repository, inside this checkout.
pub const RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");
pub const REPO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Size {
    Payments(u64),
    Duration(Duration),
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The running API, `http://127.0.0.1:8080`.
    pub api_url: String,
    /// The running provider simulator, `http://127.0.0.1:8090`.
    pub provider_url: String,
    /// Payments per second; `None` for a closed loop.
    pub rate_per_s: Option<f64>,
    pub concurrency: u32,
    pub size: Size,
    pub users: u32,
    pub provider_mode: ProviderMode,
    /// Start the processes of `dev/services` for the run (and stop them after).
    pub start_services: bool,
    /// The paystream binary the processes run as (with `start_services`).
    pub program: PathBuf,
    /// Their logs (with `start_services`).
    pub log_dir: PathBuf,
    pub settle_timeout: Duration,
    /// The API's HS256 secret, to mint the run's tokens.
    pub jwt_secret: Vec<u8>,
    pub results_dir: PathBuf,
}

impl Plan {
    /// Refuses what cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(rate) = self.rate_per_s {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of payments per second (0 for a closed loop), got {rate}");
            }
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            bail!("--concurrency must be 1 to {CONCURRENCY_MAX}, got {}", self.concurrency);
        }
        if !(1..=USERS_MAX).contains(&self.users) {
            bail!("--users must be 1 to {USERS_MAX}, got {}", self.users);
        }
        match self.size {
            Size::Payments(0) => bail!("--payments must be at least 1"),
            Size::Duration(d) if d.is_zero() => bail!("--duration must be longer than 0 s"),
            _ => {}
        }
        if self.jwt_secret.is_empty() {
            bail!("set PAYSTREAM_JWT_HS256_SECRET to the running API's secret (dev/lib.sh exports the local one)");
        }
        Ok(())
    }

    /// How long the payments take to send, if it can be known beforehand.
    pub fn planned_duration(&self) -> Option<Duration> {
        match (self.size, self.rate_per_s) {
            (Size::Duration(d), _) => Some(d),
            (Size::Payments(n), Some(rate)) => Some(Duration::from_secs_f64(n as f64 / rate)),
            (Size::Payments(_), None) => None,
        }
    }

    /// How many payments the run will send, if it can be known beforehand.
    pub fn planned_payments(&self) -> Option<u64> {
        match (self.size, self.rate_per_s) {
            (Size::Payments(n), _) => Some(n),
            (Size::Duration(d), Some(rate)) => Some((d.as_secs_f64() * rate).ceil() as u64),
            (Size::Duration(_), None) => None,
        }
    }
}

/// Parses `--duration`: seconds, or a number with `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_s) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 'h')) => (&text[..i], 3_600),
        _ => (text, 1),
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (seconds, or a whole number with s, m or h)"))?;
    value.checked_mul(unit_s).map(Duration::from_secs).ok_or_else(|| format!("{text:?} is too long"))
}

/// The steps of a run, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Users,
    WarmUp,
    Payments,
    Settling,
    Projecting,
    Reading,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Users => "users",
            Phase::WarmUp => "warm-up",
            Phase::Payments => "payments",
            Phase::Settling => "settling",
            Phase::Projecting => "read side",
            Phase::Reading => "reading",
        }
    }
}

/// Shows a run's progress (a terminal's bar, or plain lines).
pub trait Observer: Sync {
    /// A phase begins; `total` is its number of steps if known.
    fn phase(&self, phase: Phase, total: Option<u64>);
    /// `done` steps of the phase so far, and a short state.
    fn progress(&self, done: u64, detail: &str);
    /// A line for the person running it.
    fn note(&self, line: &str);
}

/// What a run produced.
pub struct Finished {
    pub report: LoadReport,
    pub markdown: String,
    pub md_path: PathBuf,
    pub json_path: PathBuf,
}

/// Runs the plan; see the module documentation.
pub async fn run(plan: Plan, settings: &StackSettings, observer: &dyn Observer) -> anyhow::Result<Finished> {
    plan.validate()?;
    let started_at = Utc::now();
    let db = postgres::connect(&settings.wallet_db_url, STACK_TIMEOUT).await?;
    kafka::wait_until_ready(&settings.kafka_bootstrap, STACK_TIMEOUT).await?;
    let codec = EventCodec::new(&settings.schema_registry_url)?;
    let mut fleet = if plan.start_services {
        let services = Path::new(REPO_DIR).join("dev/services");
        let services = std::fs::canonicalize(&services).unwrap_or(services);
        observer.note(&format!(
            "starting the processes of {} (provider mode {}); logs in {}",
            services.display(),
            plan.provider_mode.name(),
            plan.log_dir.display()
        ));
        Some(
            services::start(
                &services,
                &plan.program,
                plan.provider_mode,
                &plan.log_dir,
                &plan.api_url,
                &plan.provider_url,
            )
            .await?,
        )
    } else {
        services::check_running(&plan.api_url, &plan.provider_url).await?;
        observer.note(&format!(
            "loading the running processes; provider mode `{}` is assumed, not set (a running simulator keeps \
             its mode: {})",
            plan.provider_mode.name(),
            plan.provider_mode.restart_hint()
        ));
        None
    };
    let outcome = tokio::select! {
        outcome = measure(&plan, settings, &db, &codec, observer, started_at) => outcome,
        signal = crate::ingest::interrupted() => Err(anyhow!("interrupted by {signal}")),
    };
    if let Some(fleet) = fleet.as_mut() {
        observer.note("stopping the processes this run started");
        fleet.stop().await;
    }
    let report = outcome?;
    let markdown = report::markdown(&report);
    let stamp = started_at.format("%Y%m%dT%H%M%SZ").to_string();
    let (md_path, json_path) =
        crate::report::write_files(&plan.results_dir, "load", &stamp, &markdown, &report)?;
    Ok(Finished { report, markdown, md_path, json_path })
}

/// Users, payments, settling, reading: everything but the processes.
async fn measure(
    plan: &Plan,
    settings: &StackSettings,
    db: &PgPool,
    codec: &EventCodec,
    observer: &dyn Observer,
    started_at: DateTime<Utc>,
) -> anyhow::Result<LoadReport> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let lifetime =
        plan.planned_duration().unwrap_or(Duration::MAX).saturating_add(plan.settle_timeout + TOKEN_MARGIN);
    let tokens = accounts::Tokens::new(&plan.jwt_secret, lifetime);

    // One user more than asked: the warm-up's, kept apart so its payment is not measured.
    observer.phase(Phase::Users, Some(u64::from(plan.users) + 1));
    let mut users =
        accounts::create(&plan.api_url, &tag, plan.users + 1, plan.concurrency as usize, &tokens, |n| {
            observer.progress(n, "users with a funded wallet")
        })
        .await
        .context("creating the run's users through the API")?;
    let warm_up_user = users.pop().ok_or_else(|| anyhow!("no user was created"))?;
    let wallet_ids: Vec<Uuid> = users.iter().map(|u| u.wallet_id).collect();

    observer.phase(Phase::WarmUp, Some(1));
    warm_up(plan, db, &warm_up_user, observer).await?;

    observer.phase(Phase::Payments, plan.planned_payments());
    let progress = Arc::new(Progress::default());
    let load_plan = LoadPlan {
        base_url: plan.api_url.clone(),
        concurrency: plan.concurrency,
        pace: plan.rate_per_s.map_or(Pace::Closed, |per_s| Pace::Open { per_s }),
        stop: match plan.size {
            Size::Payments(n) => Stop::Count(n),
            Size::Duration(d) => Stop::After(d),
        },
        wallets: Arc::new(users.iter().map(|u| (u.wallet_id, u.token.clone())).collect()),
        timestamp: paystream_api::timestamp::format(Utc::now()),
        keep_sent: true,
        progress: Arc::clone(&progress),
    };
    let load_started = Utc::now();
    let outcome = {
        let load = load::run(load_plan);
        tokio::pin!(load);
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        let mut settled = 0;
        let mut polled = Instant::now();
        loop {
            tokio::select! {
                outcome = &mut load => break outcome?,
                _ = ticker.tick() => {
                    if polled.elapsed() >= SETTLE_POLL_INTERVAL {
                        settled = counts(db, &wallet_ids).await.map_or(settled, |(_, settled)| settled);
                        polled = Instant::now();
                    }
                    let (started, accepted, failed) = progress.snapshot();
                    let in_flight = started - accepted - failed;
                    observer.progress(started, &format!(
                        "accepted {accepted}, failed {failed}, in flight {in_flight}, settled {settled}"
                    ));
                }
            }
        }
    };
    let load_ended = Instant::now();
    let accepted_by_client = outcome.sent.iter().filter(|s| s.accepted).count() as u64;

    observer.phase(Phase::Settling, Some(accepted_by_client));
    let deadline = load_ended + plan.settle_timeout;
    let (rows_total, settled_total) = loop {
        // The database may be restarting (the chaos run restarts it): a failed count is "not yet",
        // bounded by the deadline like any other.
        let (rows, settled) = match counts(db, &wallet_ids).await {
            Ok(counts) => counts,
            Err(error) if Instant::now() < deadline => {
                observer.note(&format!("counting settled payments failed ({error}); trying again"));
                tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
                continue;
            }
            Err(error) => return Err(error).context("counting settled payments"),
        };
        observer.progress(settled, &format!("settled {settled} of {rows} accepted"));
        if (settled >= rows && rows >= accepted_by_client) || Instant::now() >= deadline {
            break (rows, settled);
        }
        tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
    };
    let waited = load_ended.elapsed();
    if settled_total < rows_total {
        observer.note(&format!(
            "{} of {rows_total} accepted payments were not settled {:.0} s after the last POST",
            rows_total - settled_total,
            plan.settle_timeout.as_secs_f64()
        ));
    }

    let rows = payment_rows(db, &wallet_ids).await.context("reading the run's payments")?;
    observer.phase(Phase::Projecting, Some(settled_total));
    let (projected, projection_warning) =
        projections(settings, &rows, |n| observer.progress(n, "results in the read database")).await;
    observer.phase(Phase::Reading, Some(topics_read().len() as u64));
    let since_ms = (load_started - chrono::Duration::from_std(RECORDS_MARGIN)?).timestamp_millis();
    let (timelines, mut warnings) =
        timelines(settings, codec, &outcome.sent, &rows, &projected, since_ms, |n| {
            observer.progress(n, "topics read")
        })
        .await?;
    warnings.extend(projection_warning);

    let totals = hops::summarize(hops::TOTALS, &timelines);
    let hop_summaries = hops::summarize(hops::HOPS, &timelines);
    let branches = hops::summarize(hops::BRANCHES, &timelines);
    if let Some(provider) = hop_summaries.iter().find(|h| h.name == "ChargeCommand → callback received") {
        if provider.count > 0 {
            warnings.extend(plan.provider_mode.contradiction(provider.min_ms, provider.p50_ms));
        }
    }
    if outcome.lag.throttled > 0 {
        warnings.push(format!(
            "{} POSTs started more than {} ms late because all {} were in flight: the run offered less than \
             --rate (raise --concurrency, or the API is the bottleneck)",
            outcome.lag.throttled,
            load::LATE_AFTER.as_millis(),
            plan.concurrency
        ));
    }

    let mut errors_by_kind = outcome.tally.errors.clone();
    let mut error_examples = outcome.tally.error_examples.clone();
    if settled_total < rows_total {
        let kind = format!("not settled within {:.0} s", plan.settle_timeout.as_secs_f64());
        errors_by_kind.insert(kind.clone(), rows_total - settled_total);
        let stuck = rows.iter().filter(|r| r.settled_at.is_none()).take(3).map(|r| r.payment_id.to_string());
        error_examples.insert(kind, format!("e.g. paymentId {}", stuck.collect::<Vec<_>>().join(", ")));
    }
    let mut by_status = BTreeMap::new();
    for row in rows.iter().filter(|r| r.settled_at.is_some()) {
        *by_status.entry(row.result_status.clone().unwrap_or_else(|| "unknown".into())).or_insert(0) += 1;
    }
    let first_post = outcome.sent.iter().map(|s| s.sent_at).min();
    let last_settled = rows.iter().filter_map(|r| r.settled_at).max();
    let settled_span_s = match (first_post, last_settled) {
        (Some(first), Some(last)) => (last - first).to_std().map_or(f64::NAN, |d| d.as_secs_f64()),
        _ => f64::NAN,
    };
    let elapsed_s = outcome.elapsed.as_secs_f64();
    let sent = outcome.sent.len() as u64;
    let posts = Posts {
        sent,
        accepted: accepted_by_client,
        failed: sent - accepted_by_client,
        latency: outcome.tally.summarize(outcome.elapsed),
        elapsed_s,
        sent_per_s: sent as f64 / elapsed_s,
        accepted_per_s: accepted_by_client as f64 / elapsed_s,
        throttled_starts: outcome.lag.throttled,
        woke_late_starts: outcome.lag.woke_late,
        max_lag_ms: outcome.lag.max.as_secs_f64() * 1_000.0,
    };
    let settlement = Settlement {
        accepted: rows_total,
        settled: settled_total,
        not_settled: rows_total - settled_total,
        by_status,
        waited_s: waited.as_secs_f64(),
        settled_per_s: settled_total as f64 / settled_span_s,
    };
    let parameters = Parameters {
        rate_per_s: plan.rate_per_s,
        concurrency: plan.concurrency,
        payments: match plan.size {
            Size::Payments(n) => Some(n),
            Size::Duration(_) => None,
        },
        duration_s: match plan.size {
            Size::Duration(d) => Some(d.as_secs_f64()),
            Size::Payments(_) => None,
        },
        users: plan.users,
        provider_mode: plan.provider_mode,
        services_started_by_run: plan.start_services,
        settle_timeout_s: plan.settle_timeout.as_secs_f64(),
        api_url: plan.api_url.clone(),
        amount: payment::AMOUNT.to_owned(),
        tag,
    };
    Ok(LoadReport {
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        parameters,
        machine: machine::describe(db, &settings.connect_url, Path::new(REPO_DIR)).await,
        connector_polls: connector_polls(&settings.connect_url).await,
        posts,
        settlement,
        totals,
        hops: hop_summaries,
        branches,
        errors_by_kind,
        error_examples,
        warnings,
    })
}

/// Sends one payment (not measured) and waits, bounded, until it is settled: processors that
/// were just started (or sat idle) have joined their groups and taken their partitions by then,
/// so the first measured payments do not pay for a rebalance, and a pipeline that does not
/// work at all is found before the load rather than after it.
async fn warm_up(
    plan: &Plan,
    db: &PgPool,
    user: &accounts::LoadUser,
    observer: &dyn Observer,
) -> anyhow::Result<()> {
    let outcome = load::run(LoadPlan {
        base_url: plan.api_url.clone(),
        concurrency: 1,
        pace: Pace::Closed,
        stop: Stop::Count(1),
        wallets: Arc::new(vec![(user.wallet_id, user.token.clone())]),
        timestamp: paystream_api::timestamp::format(Utc::now()),
        keep_sent: false,
        progress: Arc::default(),
    })
    .await?;
    if let Some((kind, example)) = outcome.tally.error_examples.iter().next() {
        bail!("the warm-up payment was refused ({kind}): {example}");
    }
    let started = Instant::now();
    loop {
        let (_, settled) = match counts(db, &[user.wallet_id]).await {
            Ok(counts) => counts,
            Err(error) if started.elapsed() < WARM_UP_TIMEOUT => {
                observer.note(&format!("counting the warm-up payment failed ({error}); trying again"));
                tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
                continue;
            }
            Err(error) => return Err(error).context("counting the warm-up payment"),
        };
        if settled > 0 {
            observer.progress(1, &format!("settled after {:.1} s", started.elapsed().as_secs_f64()));
            return Ok(());
        }
        if started.elapsed() >= WARM_UP_TIMEOUT {
            bail!(
                "the warm-up payment (wallet {}) was not settled within {WARM_UP_TIMEOUT:?}: is every process of \
                 dev/services running (saga, timers, dispatch, settle)? `dev/status` lists them",
                user.wallet_id
            );
        }
        tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
    }
}

/// (accepted payments, settled ones) of the run's wallets.
async fn counts(db: &PgPool, wallets: &[Uuid]) -> sqlx::Result<(u64, u64)> {
    let (rows, settled): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(settled_at) FROM wallet_transactions WHERE wallet_id = ANY($1)",
    )
    .bind(wallets)
    .fetch_one(db)
    .await?;
    Ok((rows.max(0) as u64, settled.max(0) as u64))
}

/// An accepted payment as the wallet database has it.
#[derive(sqlx::FromRow)]
struct PaymentRow {
    payment_id: Uuid,
    accepted_at: DateTime<Utc>,
    settled_at: Option<DateTime<Utc>>,
    result_status: Option<String>,
}

async fn payment_rows(db: &PgPool, wallets: &[Uuid]) -> sqlx::Result<Vec<PaymentRow>> {
    sqlx::query_as(
        "SELECT payment_id, accepted_at, settled_at, result_status FROM wallet_transactions WHERE wallet_id = ANY($1)",
    )
    .bind(wallets)
    .fetch_all(db)
    .await
}

/// When each settled payment's result reached the read database (`payment_views.
/// result_projected_at_us`, stamped by its trigger), waiting at most [`PROJECTION_TIMEOUT`] for
/// all of them; and a warning when some never showed (is `paystream view` running, and the
/// `query-views` connector?). A read database that cannot be reached is a warning, not a failed
/// run: the read side is measured beside the payment flow, not part of it.
async fn projections(
    settings: &StackSettings,
    rows: &[PaymentRow],
    progress: impl Fn(u64),
) -> (HashMap<Uuid, DateTime<Utc>>, Option<String>) {
    let settled: Vec<Uuid> = rows.iter().filter(|r| r.settled_at.is_some()).map(|r| r.payment_id).collect();
    let query_db = match postgres::connect(&settings.query_db_url, STACK_TIMEOUT).await {
        Ok(pool) => pool,
        Err(error) => return (HashMap::new(), Some(format!("the read database was not reached: {error}"))),
    };
    let deadline = Instant::now() + PROJECTION_TIMEOUT;
    loop {
        let read = sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT payment_id, result_projected_at_us FROM payment_views \
             WHERE payment_id = ANY($1) AND result_projected_at_us IS NOT NULL",
        )
        .bind(&settled)
        .fetch_all(&query_db)
        .await;
        let found: HashMap<Uuid, DateTime<Utc>> = match read {
            Ok(found) => found
                .into_iter()
                .filter_map(|(id, us)| Some((id, DateTime::from_timestamp_micros(us)?)))
                .collect(),
            Err(error) => {
                return (HashMap::new(), Some(format!("reading the read database failed: {error}")))
            }
        };
        progress(found.len() as u64);
        if found.len() >= settled.len() || Instant::now() >= deadline {
            let warning = (found.len() < settled.len()).then(|| {
                format!(
                    "{} of {} settled payments had no result in the read database {:.0} s later \
                     (is `paystream view` running, and the query-views connector?)",
                    settled.len() - found.len(),
                    settled.len(),
                    PROJECTION_TIMEOUT.as_secs_f64()
                )
            });
            return (found, warning);
        }
        tokio::time::sleep(PROJECTION_POLL_INTERVAL).await;
    }
}

/// The topics read for the timelines, and whether their values are needed.
fn topics_read() -> [(&'static str, bool); 5] {
    [
        (topics::PAYMENTS_INITIATED, false),
        (topics::PAYMENTS_PROVIDER_COMMANDS, true),
        (topics::PAYMENTS_DISPATCH_OUTCOMES, false),
        (topics::PAYMENTS_CALLBACKS, true),
        (topics::PAYMENTS_RESULTS, true),
    ]
}

/// Every accepted payment's moments; and warnings about records that could not be read.
async fn timelines(
    settings: &StackSettings,
    codec: &EventCodec,
    sent: &[Sent],
    rows: &[PaymentRow],
    projected: &HashMap<Uuid, DateTime<Utc>>,
    since_ms: i64,
    read: impl Fn(u64),
) -> anyhow::Result<(Vec<Timeline>, Vec<String>)> {
    let mut by_payment: HashMap<Uuid, Timeline> = rows
        .iter()
        .map(|row| {
            let timeline = Timeline {
                accepted: Some(row.accepted_at),
                settled: row.settled_at,
                projected: projected.get(&row.payment_id).copied(),
                ..Timeline::default()
            };
            (row.payment_id, timeline)
        })
        .collect();
    for s in sent {
        if let Some(timeline) = by_payment.get_mut(&s.payment_id) {
            timeline.posted = Some(s.sent_at);
        }
    }
    let payments: Arc<HashSet<Uuid>> = Arc::new(by_payment.keys().copied().collect());
    let mut warnings = Vec::new();
    for (n, (topic, with_values)) in topics_read().into_iter().enumerate() {
        let records = records::read_since(
            &settings.kafka_bootstrap,
            topic,
            since_ms,
            Arc::clone(&payments),
            with_values,
        )
        .await?;
        let mut undecodable = (0u64, None::<String>);
        for record in records {
            match moments(codec, topic, &record).await {
                Ok(moments) => {
                    if let Some(timeline) = by_payment.get_mut(&record.payment_id) {
                        for (moment, at) in moments {
                            earliest(moment.of(timeline), Some(at));
                        }
                    }
                }
                Err(error) => {
                    undecodable.0 += 1;
                    undecodable.1.get_or_insert_with(|| format!("{error:#}"));
                }
            }
        }
        if let (count @ 1.., Some(first)) = undecodable {
            warnings.push(format!(
                "{count} records on {topic} could not be decoded (left out of the hops): {first}"
            ));
        }
        read(n as u64 + 1);
    }
    Ok((by_payment.into_values().collect(), warnings))
}

/// A moment of [`Timeline`] that a topic's record marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    Initiated,
    Commanded,
    Dispatched,
    CallbackReceived,
    Callback,
    Result,
}

impl Moment {
    fn of(self, timeline: &mut Timeline) -> &mut Option<DateTime<Utc>> {
        match self {
            Moment::Initiated => &mut timeline.initiated,
            Moment::Commanded => &mut timeline.commanded,
            Moment::Dispatched => &mut timeline.dispatched,
            Moment::CallbackReceived => &mut timeline.callback_received,
            Moment::Callback => &mut timeline.callback,
            Moment::Result => &mut timeline.result,
        }
    }
}

/// The moments `record` of `topic` marks (see [`hops`] for which timestamp marks which).
async fn moments(
    codec: &EventCodec,
    topic: &str,
    record: &records::Stamped,
) -> anyhow::Result<Vec<(Moment, DateTime<Utc>)>> {
    let kafka_at = || {
        DateTime::from_timestamp_millis(record.timestamp_ms)
            .ok_or_else(|| anyhow!("Kafka timestamp {} is out of range", record.timestamp_ms))
    };
    let value = record.value.as_deref().unwrap_or_default();
    Ok(match topic {
        topics::PAYMENTS_INITIATED => vec![(Moment::Initiated, kafka_at()?)],
        topics::PAYMENTS_DISPATCH_OUTCOMES => vec![(Moment::Dispatched, kafka_at()?)],
        topics::PAYMENTS_PROVIDER_COMMANDS => {
            vec![(Moment::Commanded, decode::<ChargeCommand>(codec, value).await?.issued_at)]
        }
        topics::PAYMENTS_CALLBACKS => {
            let callback = decode::<ProviderCallbackReceived>(codec, value).await?;
            vec![(Moment::CallbackReceived, callback.received_at), (Moment::Callback, kafka_at()?)]
        }
        topics::PAYMENTS_RESULTS => {
            vec![(Moment::Result, decode::<PaymentResult>(codec, value).await?.decided_at)]
        }
        other => bail!("{other} is not a topic of the timeline"),
    })
}

async fn decode<E: Event>(codec: &EventCodec, value: &[u8]) -> anyhow::Result<E> {
    Ok(codec.decode::<E>(value).await?)
}

/// Keeps the earlier of a moment and another sighting of it (a record delivered twice, a
/// dispatcher's second outcome): the first time a stage stamped the payment.
fn earliest(slot: &mut Option<DateTime<Utc>>, at: Option<DateTime<Utc>>) {
    if let Some(at) = at {
        *slot = Some(slot.map_or(at, |seen| seen.min(at)));
    }
}

/// Each outbox connector's `poll.interval.ms`, as `name value` (or why it is unknown).
async fn connector_polls(connect_url: &str) -> Vec<String> {
    let Ok(http) = reqwest::Client::builder().timeout(machine::CONNECT_TIMEOUT).no_proxy().build() else {
        return Vec::new();
    };
    let mut polls = Vec::new();
    for name in OUTBOX_CONNECTORS {
        let url = format!("{}/connectors/{name}/config", connect_url.trim_end_matches('/'));
        let config =
            async { http.get(url).send().await?.error_for_status()?.json::<HashMap<String, String>>().await };
        polls.push(match config.await {
            Ok(config) => match config.get("poll.interval.ms") {
                Some(ms) => format!("{name} {ms} ms"),
                None => format!("{name} {DEBEZIUM_POLL_INTERVAL_DEFAULT_MS} ms (Debezium's default)"),
            },
            Err(error) => format!("{name} unknown ({error})"),
        });
    }
    polls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(size: Size, rate: Option<f64>) -> Plan {
        Plan {
            api_url: "http://127.0.0.1:8080".into(),
            provider_url: "http://127.0.0.1:8090".into(),
            rate_per_s: rate,
            concurrency: 32,
            size,
            users: 100,
            provider_mode: ProviderMode::Instant,
            start_services: false,
            program: "paystream".into(),
            log_dir: "/tmp".into(),
            settle_timeout: SETTLE_TIMEOUT_DEFAULT,
            jwt_secret: b"secret".to_vec(),
            results_dir: RESULTS_DIR.into(),
        }
    }

    #[test]
    fn durations_take_seconds_or_a_unit() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3_600)));
        assert!(parse_duration("1.5m").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_plan_knows_its_length_when_it_can() {
        let p = plan(Size::Payments(1_000), Some(50.0));
        assert_eq!(p.planned_duration(), Some(Duration::from_secs(20)));
        assert_eq!(p.planned_payments(), Some(1_000));
        let p = plan(Size::Duration(Duration::from_secs(10)), Some(2.5));
        assert_eq!(p.planned_payments(), Some(25));
        let p = plan(Size::Payments(10), None);
        assert_eq!((p.planned_duration(), p.planned_payments()), (None, Some(10)));
        assert_eq!(plan(Size::Duration(Duration::from_secs(5)), None).planned_payments(), None);
    }

    #[test]
    fn nonsense_plans_are_refused_with_the_flag_named() {
        assert!(plan(Size::Payments(10), Some(50.0)).validate().is_ok());
        let refused = |p: Plan| p.validate().unwrap_err().to_string();
        assert!(refused(plan(Size::Payments(10), Some(f64::NAN))).contains("--rate"));
        assert!(refused(plan(Size::Payments(0), None)).contains("--payments"));
        assert!(refused(plan(Size::Duration(Duration::ZERO), None)).contains("--duration"));
        let mut p = plan(Size::Payments(10), None);
        p.concurrency = 0;
        assert!(refused(p).contains("--concurrency"));
        let mut p = plan(Size::Payments(10), None);
        p.jwt_secret.clear();
        assert!(refused(p).contains("PAYSTREAM_JWT_HS256_SECRET"));
    }

    #[test]
    fn the_earliest_sighting_of_a_moment_is_kept() {
        let (early, late) = (DateTime::from_timestamp_millis(1_000), DateTime::from_timestamp_millis(2_000));
        let mut slot = None;
        earliest(&mut slot, late);
        earliest(&mut slot, early);
        earliest(&mut slot, late);
        earliest(&mut slot, None);
        assert_eq!(slot, early);
    }
}
