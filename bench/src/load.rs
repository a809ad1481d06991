//! An HTTP load generator of `POST /api/v1/payment`: `concurrency` workers on their own
//! keep-alive connections, each taking the next request from one shared schedule.
//!
//! Two ways to pace it ([`Pace`]), one mechanism:
//! - **closed loop** (`ingest`): a worker sends its next request as soon as its last one
//!   answered, so the rate is whatever `concurrency` requests in flight achieve;
//! - **open loop** (`paystream load`): request *i* is due `i / rate` seconds after the start,
//!   whoever sends it; a due request waits only when all `concurrency` workers are busy, so
//!   the in-flight bound holds and the wait is reported as lag ([`Lag`]) rather than hidden.
//!
//! And three ways to stop ([`Stop`]): a measurement window (only requests *completing* inside
//! it count: `ingest`'s rate), a duration (no request starts after it; all count), a count.
//!
//! The workers run on a runtime of their own, on threads named [`THREAD_NAME`], so that
//! the CPU the generator takes from the server (they share the machine) can be measured
//! apart from the server's ([`cpu::threads_ticks`]).
//!
//! Every request is a new paymentId on a wallet chosen uniformly at random, with that
//! wallet's owner's token (minted before the run, so signing is not on the clock). A
//! request counts as a 200 latency, or as an error of its kind (another status, a timeout,
//! a refused connection). With [`LoadPlan::keep_sent`], every request is also kept as a
//! [`Sent`], so its payment can be followed downstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::Rng;
use reqwest::StatusCode;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::latency::{Tally, Window};
use crate::{cpu, payment};

/// The longest a request may take before it counts as a `timeout` error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads of the generator's runtime: one keeps up with thousands of requests a second
/// and leaves the rest of the machine to the server and Postgres.
pub const THREADS: usize = 1;
/// The generator's threads' name (Linux keeps the first 15 bytes).
pub const THREAD_NAME: &str = "bench-load";
/// An open-loop request that starts later than this after its due time counts as late
/// (timer granularity and scheduling make a few milliseconds normal).
pub const LATE_AFTER: Duration = Duration::from_millis(10);

/// When the next request may start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As soon as a worker is free.
    Closed,
    /// Request `i` is due `i / per_s` seconds after the start (`per_s` > 0).
    Open { per_s: f64 },
}

impl Pace {
    /// When request `index` is due, from the start; `None` for a closed loop (now).
    pub fn due(self, index: u64) -> Option<Duration> {
        match self {
            Pace::Closed => None,
            // Rates are validated positive and finite by the callers; the quotient of two
            // finite non-negative numbers is a valid duration.
            Pace::Open { per_s } => Some(Duration::from_secs_f64(index as f64 / per_s)),
        }
    }
}

/// When the generator stops starting requests, and which ones count.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// Until the window ends; only requests completing inside it count (a warm-up before).
    Window(Window),
    /// No request starts after this much time; every request counts.
    After(Duration),
    /// After this many requests; every request counts.
    Count(u64),
}

impl Stop {
    /// Whether request `index`, starting at `start` (offset from the run's start), is sent.
    pub fn sends(self, index: u64, start: Duration) -> bool {
        match self {
            Stop::Window(window) => start < window.end,
            Stop::After(duration) => start < duration,
            Stop::Count(count) => index < count,
        }
    }

    /// Whether a request completing at `offset` counts.
    fn counts(self, offset: Duration) -> bool {
        match self {
            Stop::Window(window) => window.contains(offset),
            Stop::After(_) | Stop::Count(_) => true,
        }
    }
}

/// What the generator needs.
pub struct LoadPlan {
    /// Where the API listens: `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Requests in flight at most (one per worker).
    pub concurrency: u32,
    pub pace: Pace,
    pub stop: Stop,
    /// Wallet and a bearer token of its owner, one pair per wallet.
    pub wallets: Arc<Vec<(Uuid, String)>>,
    /// The request's `timestamp` field, in the seeds' form.
    pub timestamp: String,
    /// Keep a [`Sent`] for every request (costs memory per request: off for `ingest`).
    pub keep_sent: bool,
    /// Counters the caller may read while the load runs (a progress display).
    pub progress: Arc<Progress>,
}

/// Live counters of a run.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests started.
    pub started: AtomicU64,
    /// Requests answered 200.
    pub accepted: AtomicU64,
    /// Requests that failed (any kind).
    pub failed: AtomicU64,
}

impl Progress {
    /// (started, accepted, failed), each read once.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// One request, for following its payment downstream.
#[derive(Clone, Debug)]
pub struct Sent {
    pub payment_id: Uuid,
    pub wallet_id: Uuid,
    /// The wall clock when the request was sent (comparable with the stack's timestamps:
    /// one machine, one clock).
    pub sent_at: DateTime<Utc>,
    /// How long the answer took.
    pub latency: Duration,
    /// Answered 200.
    pub accepted: bool,
}

/// How far behind its schedule an open-loop run fell, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Requests taken up more than [`LATE_AFTER`] after they were due: every worker was busy
    /// (the `concurrency` bound held the rate back).
    pub throttled: u64,
    /// Requests taken up in time whose worker woke more than [`LATE_AFTER`] late: the machine
    /// was too busy to run the generator on time.
    pub woke_late: u64,
    /// The largest delay past a due time.
    pub max: Duration,
}

impl Lag {
    /// A request due at `due`, taken up at `taken`, started at `started` (offsets from the
    /// run's start).
    fn record(&mut self, due: Duration, taken: Duration, started: Duration) {
        if taken.saturating_sub(due) > LATE_AFTER {
            self.throttled += 1;
        } else if started.saturating_sub(due) > LATE_AFTER {
            self.woke_late += 1;
        }
        self.max = self.max.max(started.saturating_sub(due));
    }

    fn merge(&mut self, other: Lag) {
        self.throttled += other.throttled;
        self.woke_late += other.woke_late;
        self.max = self.max.max(other.max);
    }
}

/// What the generator saw and what it cost.
pub struct LoadOutcome {
    /// What counted (see [`Stop`]).
    pub tally: Tally,
    /// CPU ticks the generator's threads used (warm-up included).
    pub cpu_ticks: u64,
    /// Every request, if the plan kept them, in no particular order.
    pub sent: Vec<Sent>,
    /// Open loop only: how far the run fell behind its schedule.
    pub lag: Lag,
    /// From the start to the last answer.
    pub elapsed: Duration,
}

/// Runs the plan.
pub async fn run(plan: LoadPlan) -> anyhow::Result<LoadOutcome> {
    anyhow::ensure!(!plan.wallets.is_empty(), "no wallets to pay from");
    if let Pace::Open { per_s } = plan.pace {
        anyhow::ensure!(per_s.is_finite() && per_s > 0.0, "the rate must be a positive number, got {per_s}");
    }
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(plan.concurrency as usize)
        .tcp_nodelay(true)
        // Loopback only: a proxy from the environment must not sit in between.
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let url = Arc::new(format!("{}/api/v1/payment", plan.base_url));
    let timestamp = Arc::new(plan.timestamp);
    let next = Arc::new(AtomicU64::new(0));
    let runtime = LoadRuntime::new()?;
    let started = Instant::now();
    // Dropping the set (an interrupted run) aborts every worker.
    let mut workers = JoinSet::new();
    for _ in 0..plan.concurrency {
        let worker = Worker {
            http: http.clone(),
            url: Arc::clone(&url),
            wallets: Arc::clone(&plan.wallets),
            timestamp: Arc::clone(&timestamp),
            started,
            pace: plan.pace,
            stop: plan.stop,
            next: Arc::clone(&next),
            keep_sent: plan.keep_sent,
            progress: Arc::clone(&plan.progress),
        };
        workers.spawn_on(worker.run(), runtime.handle());
    }
    let mut tally = Tally::new();
    let mut sent = Vec::new();
    let mut lag = Lag::default();
    while let Some(joined) = workers.join_next().await {
        let done = joined.context("a load worker panicked")?;
        tally.merge(done.tally);
        sent.extend(done.sent);
        lag.merge(done.lag);
    }
    let elapsed = started.elapsed();
    // Read while the runtime's threads still exist: their times go with them.
    let cpu_ticks = cpu::threads_ticks(THREAD_NAME);
    drop(runtime);
    Ok(LoadOutcome { tally, cpu_ticks, sent, lag, elapsed })
}

/// The generator's own runtime; shut down without blocking when dropped (it is dropped
/// inside the caller's runtime, where blocking on its threads is not allowed).
struct LoadRuntime(Option<tokio::runtime::Runtime>);

impl LoadRuntime {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()
            .context("building the load generator's runtime")?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        // Only `drop` takes the runtime out.
        self.0.as_ref().expect("runtime present until dropped").handle()
    }
}

impl Drop for LoadRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Takes the next request of the schedule until the plan stops.
struct Worker {
    http: reqwest::Client,
    url: Arc<String>,
    wallets: Arc<Vec<(Uuid, String)>>,
    timestamp: Arc<String>,
    /// Offsets of the schedule and the window are measured from here.
    started: Instant,
    pace: Pace,
    stop: Stop,
    /// The index of the next request of the schedule, shared by all workers.
    next: Arc<AtomicU64>,
    keep_sent: bool,
    progress: Arc<Progress>,
}

/// What one worker did.
struct Done {
    tally: Tally,
    sent: Vec<Sent>,
    lag: Lag,
}

impl Worker {
    async fn run(self) -> Done {
        let mut done = Done { tally: Tally::new(), sent: Vec::new(), lag: Lag::default() };
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let taken = self.started.elapsed();
            let due = self.pace.due(index);
            if !self.stop.sends(index, due.unwrap_or(taken)) {
                break;
            }
            if let Some(due) = due {
                tokio::time::sleep_until((self.started + due).into()).await;
                done.lag.record(due, taken, self.started.elapsed());
            }
            let (wallet_id, token) = &self.wallets[rand::rng().random_range(0..self.wallets.len())];
            let payment_id = Uuid::new_v4();
            let body = payment::request_body(payment_id, *wallet_id, &self.timestamp);
            self.progress.started.fetch_add(1, Ordering::Relaxed);
            let sent_at = Utc::now();
            let sent = Instant::now();
            let outcome = self.send(token, body).await;
            let latency = sent.elapsed();
            let counter = if outcome.is_ok() { &self.progress.accepted } else { &self.progress.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            if self.keep_sent {
                let accepted = outcome.is_ok();
                done.sent.push(Sent { payment_id, wallet_id: *wallet_id, sent_at, latency, accepted });
            }
            if !self.stop.counts(self.started.elapsed()) {
                continue;
            }
            match outcome {
                Ok(()) => done.tally.success(latency),
                Err((kind, example)) => done.tally.error(&kind, &example),
            }
        }
        done
    }

    /// Sends one payment and reads the whole answer; an error is (kind, example).
    async fn send(&self, token: &str, body: String) -> Result<(), (String, String)> {
        let response = self
            .http
            .post(self.url.as_str())
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let text = response.text().await.map_err(transport_error)?;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err((format!("HTTP {}", status.as_u16()), text))
        }
    }
}

/// An HTTP client error as (kind, example): `timeout`, `connect` or `transport`.
pub fn transport_error(error: reqwest::Error) -> (String, String) {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "transport"
    };
    (kind.to_owned(), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_spaces_requests_by_the_rate() {
        let pace = Pace::Open { per_s: 200.0 };
        assert_eq!(pace.due(0), Some(Duration::ZERO));
        assert_eq!(pace.due(1), Some(Duration::from_millis(5)));
        assert_eq!(pace.due(200), Some(Duration::from_secs(1)));
        assert_eq!(Pace::Open { per_s: 0.5 }.due(3), Some(Duration::from_secs(6)));
        assert_eq!(Pace::Closed.due(1_000), None, "a closed loop sends when a worker is free");
    }

    #[test]
    fn each_stop_decides_what_is_sent_and_what_counts() {
        let count = Stop::Count(3);
        assert!(count.sends(2, Duration::from_secs(3_600)) && !count.sends(3, Duration::ZERO));
        assert!(count.counts(Duration::from_secs(3_600)));
        let after = Stop::After(Duration::from_secs(10));
        assert!(after.sends(1_000_000, Duration::from_millis(9_999)));
        assert!(!after.sends(0, Duration::from_secs(10)));
        assert!(after.counts(Duration::from_secs(40)), "a request started in time counts when it ends");
        let window = Stop::Window(Window::after(Duration::from_secs(2), Duration::from_secs(5)));
        assert!(window.sends(0, Duration::ZERO) && !window.sends(0, Duration::from_secs(7)));
        assert!(!window.counts(Duration::from_secs(1)), "the warm-up does not count");
        assert!(window.counts(Duration::from_secs(2)) && !window.counts(Duration::from_secs(7)));
        // A schedule at 100/s under a 1 s limit sends exactly requests 0..100.
        let pace = Pace::Open { per_s: 100.0 };
        let sent =
            (0..1_000).take_while(|&i| Stop::After(Duration::from_secs(1)).sends(i, pace.due(i).unwrap()));
        assert_eq!(sent.count(), 100);
    }

    #[test]
    fn lag_tells_a_full_bound_from_a_busy_machine_and_keeps_the_worst() {
        let ms = Duration::from_millis;
        let mut lag = Lag::default();
        lag.record(ms(100), ms(20), ms(102)); // on time
        lag.record(ms(100), ms(140), ms(141)); // taken up 40 ms late: every worker was busy
        let mut other = Lag::default();
        other.record(ms(100), ms(90), ms(115)); // taken in time, woke 15 ms late
        lag.merge(other);
        assert_eq!(lag, Lag { throttled: 1, woke_late: 1, max: ms(41) });
    }
}
