//! `paystream load`: the load benchmark of issue 10 — users, wallets and deposits made
//! through the API, then payments at a target rate and concurrency through the running
//! pipeline, each followed until its wallet is settled; a table of latencies, throughput,
//! where the time goes hop by hop, and errors by type, written under `bench/results/`.
//!
//! The work is `paystream_bench::flow` (it shares the load generator, the latency tally and
//! the machine description with the other benchmarks; its module doc says why it lives
//! there). This module is the command line and the progress display: an indicatif bar on a
//! terminal, a plain line every few seconds otherwise (a CI log, a pipe).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use paystream_bench::flow::{self, services::ProviderMode, Observer, Phase, Plan, Size};
use paystream_stack::StackSettings;

/// How often a plain (non-terminal) progress line is printed.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);
/// How often the terminal's bar redraws by itself (the elapsed time moves on).
const BAR_TICK: Duration = Duration::from_millis(200);

#[derive(clap::Args)]
pub struct Args {
    /// Payments per second, open loop (request i is due at i / rate); 0 for a closed loop,
    /// as fast as --concurrency allows.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// The most POSTs in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// How many payments to send (default 1000, unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    payments: Option<u64>,
    /// How long to send payments: seconds, or e.g. 30s, 2m.
    #[arg(long, value_parser = flow::parse_duration)]
    duration: Option<Duration>,
    /// Users to create through the API, each with a funded RUB wallet; each payment picks one.
    #[arg(long, default_value_t = 100)]
    users: u32,
    /// How the provider simulator answers. Without --start-services this labels the run and is
    /// checked against the callbacks' timing; a running simulator keeps the mode it was started
    /// in (restart dev/run with the variables the run names). The default is dev/run's.
    #[arg(long, value_enum, default_value_t = ProviderMode::Seeds)]
    provider_mode: ProviderMode,
    /// Start the processes of dev/services for this run (the simulator in --provider-mode), and
    /// stop them at the end. Refused when they already run; they take the production ports.
    #[arg(long)]
    start_services: bool,
    /// How long accepted payments may take to settle after the last POST.
    #[arg(long, default_value_t = flow::SETTLE_TIMEOUT_DEFAULT.as_secs())]
    settle_timeout_s: u64,
    /// The running API.
    #[arg(long, env = "PAYSTREAM_LOAD_API_URL", default_value = "http://127.0.0.1:8080")]
    api_url: String,
    /// The running provider simulator.
    #[arg(long, env = "PAYSTREAM_LOAD_PROVIDER_URL", default_value = "http://127.0.0.1:8090")]
    provider_url: String,
    /// The API's HS256 secret, to mint the run's user and operator tokens.
    #[arg(long, env = "PAYSTREAM_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    /// Where the result files go.
    #[arg(long, default_value = flow::RESULTS_DIR)]
    results_dir: PathBuf,
    /// Where the logs of processes started by --start-services go (default: a new temporary folder).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let size = match (args.payments, args.duration) {
        (Some(n), _) => Size::Payments(n),
        (None, Some(duration)) => Size::Duration(duration),
        (None, None) => Size::Payments(1_000),
    };
    let log_dir = args.log_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("paystream-load-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")))
    });
    let plan = Plan {
        api_url: args.api_url.trim_end_matches('/').to_owned(),
        provider_url: args.provider_url.trim_end_matches('/').to_owned(),
        rate_per_s: (args.rate != 0.0).then_some(args.rate),
        concurrency: args.concurrency,
        size,
        users: args.users,
        provider_mode: args.provider_mode,
        start_services: args.start_services,
        program: std::env::current_exe()?,
        log_dir,
        settle_timeout: Duration::from_secs(args.settle_timeout_s),
        jwt_secret: args.jwt_hs256_secret.unwrap_or_default().into_bytes(),
        results_dir: args.results_dir,
    };
    let display = Display::new(std::io::stderr().is_terminal());
    let finished = flow::run(plan, settings, &display).await;
    display.finish();
    let finished = finished?;
    println!("{}", finished.markdown);
    println!("wrote {} and {}", finished.md_path.display(), finished.json_path.display());
    Ok(())
}

/// The progress display: a bar on a terminal, plain lines otherwise.
enum Display {
    Bar(ProgressBar),
    Plain(Mutex<PlainState>),
}

struct PlainState {
    phase: &'static str,
    total: Option<u64>,
    last_line: Instant,
}

impl Display {
    fn new(terminal: bool) -> Self {
        if terminal {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(BAR_TICK);
            Display::Bar(bar)
        } else {
            Display::Plain(Mutex::new(PlainState {
                phase: "starting",
                total: None,
                last_line: Instant::now(),
            }))
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Display {
    fn phase(&self, phase: Phase, total: Option<u64>) {
        match self {
            Display::Bar(bar) => {
                let template = match total {
                    Some(_) => "{prefix:>9} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
                    None => "{prefix:>9} {spinner} {pos} {elapsed_precise} {msg}",
                };
                // The templates are constants that parse.
                let style =
                    ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(phase.label());
                bar.set_position(0);
                bar.set_message("");
                bar.reset_elapsed();
                match total {
                    Some(total) => bar.set_length(total),
                    None => bar.unset_length(),
                }
            }
            Display::Plain(state) => {
                let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                (state.phase, state.total) = (phase.label(), total);
                let of = total.map_or_else(String::new, |t| format!(" ({t} to do)"));
                eprintln!("load: {}{of}", phase.label());
                state.last_line = Instant::now();
            }
        }
    }

    fn progress(&self, done: u64, detail: &str) {
        match self {
            Display::Bar(bar) => {
                bar.set_position(done);
                bar.set_message(detail.to_owned());
            }
            Display::Plain(state) => {
                let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if state.last_line.elapsed() >= PLAIN_INTERVAL {
                    let of = state.total.map_or_else(String::new, |t| format!("/{t}"));
                    eprintln!("load: {} {done}{of}: {detail}", state.phase);
                    state.last_line = Instant::now();
                }
            }
        }
    }

    fn note(&self, line: &str) {
        match self {
            Display::Bar(bar) => bar.println(format!("load: {line}")),
            Display::Plain(_) => eprintln!("load: {line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_displays_follow_the_phases() {
        // The bar's templates are parsed when a phase starts: a typo would panic here, not in a run.
        let bar = Display::new(true);
        bar.phase(Phase::Payments, Some(10));
        bar.progress(3, "accepted 3");
        let Display::Bar(inner) = &bar else { panic!("a terminal gets the bar") };
        assert_eq!((inner.position(), inner.length()), (3, Some(10)));
        bar.phase(Phase::Settling, None);
        assert_eq!((inner.position(), inner.length(), inner.prefix()), (0, None, "settling".to_owned()));
        bar.note("a line");
        bar.finish();
        assert!(inner.is_finished());

        let plain = Display::new(false);
        plain.phase(Phase::Reading, Some(5));
        plain.progress(2, "topics read");
        let Display::Plain(state) = &plain else { panic!("a pipe gets plain lines") };
        let state = state.lock().unwrap();
        assert_eq!((state.phase, state.total), ("reading", Some(5)));
    }
}
