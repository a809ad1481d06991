//! The processes a load runs against: by default the ones `dev/run` started (checked, not
//! touched); with `--start-services`, the same list (`dev/services`) started here through
//! the lead's supervisor, with the provider simulator in the run's mode.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use paystream_stack::supervisor::{services_file, Fleet};
use serde::Serialize;

/// How long a health check may take.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// The seeds' delays (seed 003): the simulator's defaults, so `dev/run`'s simulator is in
/// seeds mode unless it was started otherwise.
pub const SEEDS_DELAY_MIN_MS: u64 = paystream_provider_sim::config::DEFAULT_DELAY_MIN_MS;
pub const SEEDS_DELAY_MAX_MS: u64 = paystream_provider_sim::config::DEFAULT_DELAY_MAX_MS;

/// How the provider simulator answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderMode {
    /// Calls back at once, reliably (no duplicates, reordering, losses or 5xx): the
    /// pipeline's own latency.
    Instant,
    /// The seeds' 0.5–5 s delays with the simulator's default faults (`dev/run`'s provider).
    Seeds,
}

impl ProviderMode {
    /// As on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ProviderMode::Instant => "instant",
            ProviderMode::Seeds => "seeds",
        }
    }

    /// The simulator's settings for this mode, as `PAYSTREAM_PROVIDER_SIM_*` variables.
    pub fn simulator_env(self) -> Vec<(String, String)> {
        let vars: &[(&str, &str)] = match self {
            ProviderMode::Instant => &[
                ("PAYSTREAM_PROVIDER_SIM_DELAY_MIN_MS", "0"),
                ("PAYSTREAM_PROVIDER_SIM_DELAY_MAX_MS", "0"),
                ("PAYSTREAM_PROVIDER_SIM_DUPLICATE_RATE", "0"),
                ("PAYSTREAM_PROVIDER_SIM_REORDER_RATE", "0"),
                ("PAYSTREAM_PROVIDER_SIM_LOST_RATE", "0"),
                ("PAYSTREAM_PROVIDER_SIM_CHARGE_5XX_RATE", "0"),
            ],
            ProviderMode::Seeds => {
                return vec![
                    ("PAYSTREAM_PROVIDER_SIM_DELAY_MIN_MS".into(), SEEDS_DELAY_MIN_MS.to_string()),
                    ("PAYSTREAM_PROVIDER_SIM_DELAY_MAX_MS".into(), SEEDS_DELAY_MAX_MS.to_string()),
                ]
            }
        };
        vars.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    /// How to restart `dev/run` in this mode.
    pub fn restart_hint(self) -> String {
        let vars: Vec<String> = self.simulator_env().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("stop dev/run (Ctrl-C) and start it again as `{} dev/run`", vars.join(" "))
    }

    /// A warning when the callbacks' timing contradicts the mode: the running simulator was
    /// started in the other one. `min_ms` and `p50_ms` are of ChargeCommand → callback received.
    pub fn contradiction(self, min_ms: f64, p50_ms: f64) -> Option<String> {
        let delay_min = SEEDS_DELAY_MIN_MS as f64;
        match self {
            // In seeds mode no callback can come sooner than the smallest delay.
            ProviderMode::Seeds if min_ms < delay_min => Some(format!(
                "provider mode is `seeds`, but a callback came {min_ms:.0} ms after its command (seeds: ≥ {delay_min:.0} ms): \
                 the simulator runs with other delays; {}",
                self.restart_hint()
            )),
            // Instantly, half the callbacks come well within the smallest seeds delay.
            ProviderMode::Instant if p50_ms >= delay_min => Some(format!(
                "provider mode is `instant`, but half the callbacks took ≥ {p50_ms:.0} ms after their command: \
                 the simulator seems to run with the seeds' delays; {}",
                self.restart_hint()
            )),
            _ => None,
        }
    }
}

/// Checks that the API and the simulator answer `/health`, with what to do if not.
pub async fn check_running(api_url: &str, provider_url: &str) -> anyhow::Result<()> {
    for (what, url) in [("the paystream API", api_url), ("the provider simulator", provider_url)] {
        if let Err(error) = health(url).await {
            bail!(
                "{what} does not answer {url}/health ({error}). Start the processes with `dev/run` in another \
                 terminal (it needs the stack: `dev/status`), or pass --start-services to start them for this run"
            );
        }
    }
    Ok(())
}

/// `GET <url>/health` answers 2xx.
pub async fn health(url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(HEALTH_TIMEOUT).no_proxy().build()?;
    http.get(format!("{url}/health")).send().await?.error_for_status()?;
    Ok(())
}

/// Starts every process of `services` (dev/services) as `program SUBCOMMAND ARGS`, the
/// simulator in `mode`, with logs in `log_dir`; refuses if the API or the simulator already
/// answer (they would hold the ports, and their mode is not ours to change).
pub async fn start(
    services: &Path,
    program: &Path,
    mode: ProviderMode,
    log_dir: &Path,
    api_url: &str,
    provider_url: &str,
) -> anyhow::Result<Fleet> {
    for url in [api_url, provider_url] {
        if health(url).await.is_ok() {
            bail!(
                "{url} already answers: paystream processes are running (dev/run?). Drop --start-services to \
                 load them as they are (the simulator keeps the mode it was started in; {})",
                mode.restart_hint()
            );
        }
    }
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let specs = services_file(services, program, &mode.simulator_env())
        .with_context(|| format!("reading {}", services.display()))?;
    if specs.is_empty() {
        bail!("{} lists no process", services.display());
    }
    Fleet::start(specs, log_dir).await.context("starting the paystream processes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_sets_the_simulators_delays() {
        let env = ProviderMode::Instant.simulator_env();
        assert!(env.contains(&("PAYSTREAM_PROVIDER_SIM_DELAY_MAX_MS".into(), "0".into())));
        assert!(env.contains(&("PAYSTREAM_PROVIDER_SIM_LOST_RATE".into(), "0".into())));
        let seeds = ProviderMode::Seeds.simulator_env();
        assert!(
            seeds.contains(&("PAYSTREAM_PROVIDER_SIM_DELAY_MIN_MS".into(), SEEDS_DELAY_MIN_MS.to_string()))
        );
        assert!(
            seeds.contains(&("PAYSTREAM_PROVIDER_SIM_DELAY_MAX_MS".into(), SEEDS_DELAY_MAX_MS.to_string()))
        );
        assert_eq!((SEEDS_DELAY_MIN_MS, SEEDS_DELAY_MAX_MS), (500, 5_000), "seed 003's 0.5–5 s");
        assert!(ProviderMode::Instant.restart_hint().contains("PAYSTREAM_PROVIDER_SIM_DELAY_MIN_MS=0 "));
    }

    #[test]
    fn callbacks_that_contradict_the_mode_are_named() {
        assert!(ProviderMode::Seeds.contradiction(520.0, 2_700.0).is_none());
        let warning = ProviderMode::Seeds.contradiction(12.0, 40.0).unwrap();
        assert!(warning.contains("12 ms") && warning.contains("dev/run"), "{warning}");
        assert!(ProviderMode::Instant.contradiction(5.0, 60.0).is_none());
        assert!(ProviderMode::Instant.contradiction(510.0, 2_600.0).unwrap().contains("seeds' delays"));
    }
}
