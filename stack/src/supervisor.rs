//! Supervised paystream processes: started the way `dev/run` starts them (`paystream <subcommand>`
//! with its log in a file), probed until ready, and stopped, killed, paused or restarted on
//! demand. The whole-flow test and the chaos run use it; production runs its processes under
//! systemd or Kubernetes, never under this.
//!
//! A [`Service`] restarts with the very arguments and environment it first had, so a kill -9
//! followed by [`Service::restart`] is what a process supervisor does after a crash.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::wait::{self, NotReady};

/// How long a service gets between SIGTERM and SIGKILL when stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a service may take to answer its readiness probe after a start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of a log file quoted when a service fails to start or dies.
const LOG_TAIL_LINES: usize = 30;

/// Why a service could not be started or probed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The program could not be spawned or its log file opened.
    #[error("starting {name}: {source}")]
    Spawn {
        /// The service.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// It exited before it was ready.
    #[error("{name} exited before it was ready ({status}); last lines of {log}:\n{tail}")]
    Exited {
        /// The service.
        name: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: String,
        /// The end of the log.
        tail: String,
    },
    /// It did not answer its readiness probe in time.
    #[error("{not_ready}; last lines of {log}:\n{tail}")]
    NotReady {
        /// The probe's verdict.
        not_ready: NotReady,
        /// Its log file.
        log: String,
        /// The end of the log.
        tail: String,
    },
}

/// How to tell that a service is ready.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// An HTTP GET of this URL answers 2xx (a health or metrics endpoint).
    Http(String),
    /// Ready once spawned.
    Started,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// A short name, used for the log file and messages.
    pub name: String,
    /// The program (the `paystream` binary).
    pub program: PathBuf,
    /// Its arguments (the subcommand first).
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// How to probe it.
    pub readiness: Readiness,
}

/// A running (or stopped) supervised process.
pub struct Service {
    spec: ServiceSpec,
    log: PathBuf,
    child: Option<Child>,
    /// How many times it was started.
    pub starts: u32,
}

impl Service {
    /// Starts `spec` with its output appended to `<log_dir>/<name>.log`, and waits until ready.
    pub async fn start(spec: ServiceSpec, log_dir: &Path) -> Result<Self, ServiceError> {
        let log = log_dir.join(format!("{}.log", spec.name));
        let mut service = Self { spec, log, child: None, starts: 0 };
        service.spawn().await?;
        Ok(service)
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The OS pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn spawn(&mut self) -> Result<(), ServiceError> {
        let name = self.spec.name.clone();
        let spawn_error = |source| ServiceError::Spawn { name: name.clone(), source };
        let out = File::options().create(true).append(true).open(&self.log).map_err(spawn_error)?;
        let err = out.try_clone().map_err(spawn_error)?;
        let child = Command::new(&self.spec.program)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A test that fails or panics never leaves its services running.
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), ServiceError> {
        let Readiness::Http(url) = self.spec.readiness.clone() else { return Ok(()) };
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| {
            ServiceError::Spawn { name: self.spec.name.clone(), source: std::io::Error::other(e) }
        })?;
        let started = Instant::now();
        loop {
            // A process that died is reported at once, not after the probe's whole budget.
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(ServiceError::Exited {
                    name: self.spec.name.clone(),
                    status: status.to_string(),
                    log: self.log.display().to_string(),
                    tail: self.log_tail(),
                });
            }
            let last_error = match client.get(url.as_str()).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(service = %self.spec.name, ready_ms = started.elapsed().as_millis() as u64, "ready");
                    return Ok(());
                }
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= READY_TIMEOUT {
                return Err(ServiceError::NotReady {
                    not_ready: NotReady {
                        what: format!("{} at {url}", self.spec.name),
                        waited_ms: started.elapsed().as_millis(),
                        last_error,
                        hint: "see its log below",
                    },
                    log: self.log.display().to_string(),
                    tail: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(wait::PROBE_INTERVAL_MS)).await;
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of its log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) on our own child, which has not been reaped: `Child::id` returns
            // `None` once tokio has reaped it, so the pid cannot have been reused.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// kill -9: no goodbye, no commit, no checkpoint.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGSTOP: the process freezes with its connections open (a zombie to the broker).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Service::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns whether it stopped gracefully.
    pub async fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: as in `signal`: our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => true,
            Err(_) => {
                tracing::warn!(service = %self.spec.name, "did not stop in {STOP_GRACE:?}; SIGKILL");
                let _ = child.kill().await;
                false
            }
        }
    }

    /// Starts it again with the same arguments (after a kill or a stop).
    pub async fn restart(&mut self) -> Result<(), ServiceError> {
        if self.is_running() {
            self.stop().await;
        }
        self.spawn().await
    }
}

/// Where each paystream process answers when it is up, at its default address (the defaults of
/// `cli/src/*.rs`): its health endpoint, or its metrics endpoint for the stream processors.
pub fn default_readiness(name: &str) -> Readiness {
    let url = match name {
        "api" => "http://127.0.0.1:8080/health",
        "provider-sim" => "http://127.0.0.1:8090/health",
        "settle" => "http://127.0.0.1:9101/metrics",
        "dispatch" => "http://127.0.0.1:9102/metrics",
        "saga" => "http://127.0.0.1:9103/metrics",
        "timers" => "http://127.0.0.1:9104/metrics",
        "orders" => "http://127.0.0.1:9109/metrics",
        _ => return Readiness::Started,
    };
    Readiness::Http(url.into())
}

/// The processes `dev/run` starts, read from `dev/services` (`NAME SUBCOMMAND [ARGS...]` a line,
/// `#` comments), each to run as `program SUBCOMMAND ARGS...` with `env` added.
pub fn services_file(
    path: &Path,
    program: &Path,
    env: &[(String, String)],
) -> std::io::Result<Vec<ServiceSpec>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_owned();
            let args: Vec<String> = words.map(str::to_owned).collect();
            Some(ServiceSpec {
                readiness: default_readiness(&name),
                name,
                program: program.to_owned(),
                args,
                env: env.to_vec(),
            })
        })
        .collect())
}

/// Every process of a run, started in order and stopped in reverse.
pub struct Fleet {
    /// The services, in start order.
    pub services: Vec<Service>,
}

impl Fleet {
    /// Starts each of `specs` in order, each ready before the next starts.
    pub async fn start(specs: Vec<ServiceSpec>, log_dir: &Path) -> Result<Self, ServiceError> {
        let mut services = Vec::with_capacity(specs.len());
        for spec in specs {
            services.push(Service::start(spec, log_dir).await?);
        }
        Ok(Self { services })
    }

    /// The service called `name`.
    pub fn get(&mut self, name: &str) -> Option<&mut Service> {
        self.services.iter_mut().find(|s| s.name() == name)
    }

    /// Names of services that are not running (they died).
    pub fn dead(&mut self) -> Vec<String> {
        self.services.iter_mut().filter_map(|s| (!s.is_running()).then(|| s.name().to_owned())).collect()
    }

    /// Stops every service, the last started first.
    pub async fn stop(&mut self) {
        for service in self.services.iter_mut().rev() {
            service.stop().await;
        }
    }
}

/// The environment of a whole-flow run under test (the whole-flow test, the chaos run): the
/// provider simulator's faults and speed, and a dispatch budget and payment timeout short enough
/// that a lost callback is verified within seconds, not minutes. Only what differs from the
/// processes' defaults.
#[derive(Debug, Clone)]
pub struct FlowEnvironment {
    /// The simulator's seed: its decisions per payment are reproducible from it.
    pub seed: u64,
    /// The simulator's verdict delays, in ms.
    pub delay_ms: (u64, u64),
    /// Share of charges it declines.
    pub decline_rate: f64,
    /// Shares of charges whose callback is duplicated, reordered, lost.
    pub duplicate_rate: f64,
    /// See `duplicate_rate`.
    pub reorder_rate: f64,
    /// See `duplicate_rate`.
    pub lost_rate: f64,
    /// Share of provider calls answered 503.
    pub provider_5xx_rate: f64,
    /// Where the saga and timers keep their RocksDB state (`None`: inherited).
    pub state_dir: Option<PathBuf>,
}

impl FlowEnvironment {
    /// Dispatcher attempts per command: with the timeout and back-off below, the dispatcher
    /// gives up after 4 × 2 s + 3 × 0.5 s, and the saga refuses a payment timeout that is not
    /// longer than that plus its 10 s margin.
    const DISPATCH_ATTEMPTS_MAX: u32 = 4;
    /// One dispatch attempt's budget, ms.
    const DISPATCH_REQUEST_TIMEOUT_MS: u64 = 2_000;
    /// The dispatcher's longest pause, ms.
    const DISPATCH_BACKOFF_MAX_MS: u64 = 500;
    /// How long a payment waits for its verdict before the saga verifies it, ms.
    pub const PAYMENT_TIMEOUT_MS: u64 = 25_000;

    /// Every fault at `rate`-ish shares, seeded.
    pub fn faulty(seed: u64) -> Self {
        Self {
            seed,
            delay_ms: (50, 1_000),
            decline_rate: 0.2,
            duplicate_rate: 0.1,
            reorder_rate: 0.05,
            lost_rate: 0.05,
            provider_5xx_rate: 0.1,
            state_dir: None,
        }
    }

    /// As environment variables of the processes (their clap `env` names).
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("PAYSTREAM_PROVIDER_SIM_SEED", self.seed.to_string()),
            ("PAYSTREAM_PROVIDER_SIM_DELAY_MIN_MS", self.delay_ms.0.to_string()),
            ("PAYSTREAM_PROVIDER_SIM_DELAY_MAX_MS", self.delay_ms.1.to_string()),
            ("PAYSTREAM_PROVIDER_SIM_SUCCESS_RATIO", (1.0 - self.decline_rate).to_string()),
            ("PAYSTREAM_PROVIDER_SIM_DUPLICATE_RATE", self.duplicate_rate.to_string()),
            ("PAYSTREAM_PROVIDER_SIM_REORDER_RATE", self.reorder_rate.to_string()),
            ("PAYSTREAM_PROVIDER_SIM_LOST_RATE", self.lost_rate.to_string()),
            ("PAYSTREAM_PROVIDER_SIM_CHARGE_5XX_RATE", self.provider_5xx_rate.to_string()),
            ("PAYSTREAM_PROVIDER_SIM_SECOND_CALLBACK_DELAY_MS", "200".to_owned()),
            ("PAYSTREAM_DISPATCH_ATTEMPTS_MAX", Self::DISPATCH_ATTEMPTS_MAX.to_string()),
            ("PAYSTREAM_DISPATCH_REQUEST_TIMEOUT_MS", Self::DISPATCH_REQUEST_TIMEOUT_MS.to_string()),
            ("PAYSTREAM_DISPATCH_BACKOFF_INITIAL_MS", "50".to_owned()),
            ("PAYSTREAM_DISPATCH_BACKOFF_MAX_MS", Self::DISPATCH_BACKOFF_MAX_MS.to_string()),
            ("PAYSTREAM_PAYMENT_TIMEOUT_MS", Self::PAYMENT_TIMEOUT_MS.to_string()),
        ];
        if let Some(dir) = &self.state_dir {
            vars.push(("PAYSTREAM_STATE_DIR", dir.display().to_string()));
        }
        vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}
