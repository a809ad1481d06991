//! A closed-loop HTTP load generator: `concurrency` workers, each sending one
//! `POST /api/v1/payment` after the other on its own keep-alive connection, until the
//! window closes.
//!
//! The workers run on a runtime of their own, on threads named [`THREAD_NAME`], so that
//! the CPU the generator takes from the server (they share the machine) can be measured
//! apart from the server's ([`cpu::threads_ticks`]).
//!
//! Every request is a new paymentId on a wallet chosen uniformly at random, with that
//! wallet's owner's token (minted before the run, so signing is not on the clock). A
//! request counts when it completes inside the window: a 200 as a latency, anything else
//! (another status, a timeout, a refused connection) as an error of its kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
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

/// What the generator needs.
pub struct LoadPlan {
    /// Where the API listens: `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Requests in flight at any time (one per worker).
    pub concurrency: u32,
    /// The warm-up and the measured part, from the moment `run` starts.
    pub window: Window,
    /// Wallet and a bearer token of its owner, one pair per bench wallet.
    pub wallets: Arc<Vec<(Uuid, String)>>,
    /// The request's `timestamp` field, in the seeds' form.
    pub timestamp: String,
}

/// What the generator saw and what it cost.
pub struct LoadOutcome {
    /// What completed inside the window.
    pub tally: Tally,
    /// CPU ticks the generator's threads used (warm-up included).
    pub cpu_ticks: u64,
}

/// Runs the plan.
pub async fn run(plan: LoadPlan) -> anyhow::Result<LoadOutcome> {
    anyhow::ensure!(!plan.wallets.is_empty(), "no wallets to pay from");
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
            window: plan.window,
        };
        workers.spawn_on(worker.run(), runtime.handle());
    }
    let mut tally = Tally::new();
    while let Some(joined) = workers.join_next().await {
        tally.merge(joined.context("a load worker panicked")?);
    }
    // Read while the runtime's threads still exist: their times go with them.
    let cpu_ticks = cpu::threads_ticks(THREAD_NAME);
    drop(runtime);
    Ok(LoadOutcome { tally, cpu_ticks })
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

/// One request after the other until the window closes.
struct Worker {
    http: reqwest::Client,
    url: Arc<String>,
    wallets: Arc<Vec<(Uuid, String)>>,
    timestamp: Arc<String>,
    /// Offsets of the window are measured from here.
    started: Instant,
    window: Window,
}

impl Worker {
    async fn run(self) -> Tally {
        let mut tally = Tally::new();
        while self.started.elapsed() < self.window.end {
            let (wallet_id, token) = &self.wallets[rand::rng().random_range(0..self.wallets.len())];
            let body = payment::request_body(Uuid::new_v4(), *wallet_id, &self.timestamp);
            let sent = Instant::now();
            let outcome = self.send(token, body).await;
            let latency = sent.elapsed();
            if !self.window.contains(self.started.elapsed()) {
                continue;
            }
            match outcome {
                Ok(()) => tally.success(latency),
                Err((kind, example)) => tally.error(&kind, &example),
            }
        }
        tally
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

fn transport_error(error: reqwest::Error) -> (String, String) {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "transport"
    };
    (kind.to_owned(), error.to_string())
}
