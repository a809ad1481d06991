//! The simulator's settings: the command line (clap, every flag with an env fallback) and
//! the validated [`SimConfig`] the server runs with.
//!
//! The defaults are the demo's: a slightly unreliable provider (seed 003's 0.5–5 s delay,
//! one charge in ten declined, a few duplicate, reordered and lost callbacks, a few 5xx
//! answers), so `dev/run` exercises every path of the saga. Tests build a [`SimConfig`]
//! with [`SimConfig::reliable`] and dial in exactly the fault they test.

use std::net::SocketAddr;
use std::time::Duration;

use crate::decide::Rates;

/// Default address (DESIGN.md: the provider simulator listens on :8090).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// Default callback URL: the paystream API of the local stack.
pub const DEFAULT_CALLBACK_URL: &str = "http://127.0.0.1:8080/api/v1/callback";
/// Seed 003: operations take a random 0.5 to 5 seconds.
pub const DEFAULT_DELAY_MIN_MS: u64 = 500;
pub const DEFAULT_DELAY_MAX_MS: u64 = 5_000;
/// Share of accepted charges whose verdict is SUCCEEDED.
pub const DEFAULT_SUCCESS_RATIO: f64 = 0.9;
/// Shares of accepted charges whose verdict is delivered twice / with a contradicting
/// stale event after it / never.
pub const DEFAULT_DUPLICATE_RATE: f64 = 0.05;
pub const DEFAULT_REORDER_RATE: f64 = 0.02;
pub const DEFAULT_LOST_RATE: f64 = 0.01;
/// Share of charge attempts answered 503 (the charge is then not taken).
pub const DEFAULT_CHARGE_5XX_RATE: f64 = 0.02;
/// Share of status queries, voids and refunds answered 503 (nothing changes).
pub const DEFAULT_REQUEST_5XX_RATE: f64 = 0.02;
/// How long after the first callback the second one of a duplicate or reordered pair goes.
pub const DEFAULT_SECOND_CALLBACK_DELAY_MS: u64 = 1_000;
/// Idempotency entries kept; the oldest is forgotten first.
pub const DEFAULT_CHARGES_MAX: usize = 100_000;
/// Charges whose callbacks are still to be delivered; beyond it charges are answered 503.
pub const DEFAULT_CALLBACKS_IN_FLIGHT_MAX: usize = 10_000;
/// Callback POSTs on the wire at once.
pub const DEFAULT_CALLBACK_CONCURRENCY_MAX: usize = 64;
/// Attempts per callback POST (the first included) before it is given up.
pub const DEFAULT_CALLBACK_ATTEMPTS_MAX: u32 = 8;
/// One callback POST's budget (connect + answer).
pub const DEFAULT_CALLBACK_TIMEOUT_MS: u64 = 5_000;
/// Pauses between callback attempts: full jitter under a cap doubling from the first.
pub const DEFAULT_CALLBACK_BACKOFF_INITIAL_MS: u64 = 200;
pub const DEFAULT_CALLBACK_BACKOFF_MAX_MS: u64 = 10_000;
/// On shutdown, how long pending callbacks may still be delivered before they are dropped.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;

/// The longest delay accepted: a simulator that answers after an hour is a typo.
pub const DELAY_MAX_MS_LIMIT: u64 = 3_600_000;
/// Upper bounds of the bounds, so a typo cannot ask for unbounded memory.
pub const CHARGES_MAX_LIMIT: usize = 10_000_000;
pub const CALLBACKS_IN_FLIGHT_MAX_LIMIT: usize = 1_000_000;
pub const CALLBACK_ATTEMPTS_MAX_LIMIT: u32 = 100;

/// `paystream provider-sim`'s command line.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Address to listen on (`POST /v1/charges`, `GET /v1/charges/{key}`, `/metrics`, `/health`).
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Where verdicts are posted: the paystream API's callback endpoint.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_CALLBACK_URL", default_value = DEFAULT_CALLBACK_URL)]
    pub callback_url: String,
    /// The callback signing secret(s), comma-separated; the first one signs.
    #[arg(long, env = "PAYSTREAM_PROVIDER_WEBHOOK_SECRETS", hide_env_values = true, value_delimiter = ',')]
    pub webhook_secrets: Vec<String>,
    /// Shortest delay between accepting a charge and its callback.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_DELAY_MIN_MS", default_value_t = DEFAULT_DELAY_MIN_MS)]
    pub delay_min_ms: u64,
    /// Longest delay (uniform between the two).
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_DELAY_MAX_MS", default_value_t = DEFAULT_DELAY_MAX_MS)]
    pub delay_max_ms: u64,
    /// Share of accepted charges that succeed (0..=1); the others fail.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_SUCCESS_RATIO", default_value_t = DEFAULT_SUCCESS_RATIO)]
    pub success_ratio: f64,
    /// Share of charges whose callback is delivered twice (the same event again).
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_DUPLICATE_RATE", default_value_t = DEFAULT_DUPLICATE_RATE)]
    pub duplicate_rate: f64,
    /// Share of charges with two events delivered in swapped order: the verdict, then a
    /// contradicting event that the provider timestamped earlier.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_REORDER_RATE", default_value_t = DEFAULT_REORDER_RATE)]
    pub reorder_rate: f64,
    /// Share of charges whose callback is never sent (the saga's timeout decides).
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_LOST_RATE", default_value_t = DEFAULT_LOST_RATE)]
    pub lost_rate: f64,
    /// Share of charge attempts answered 503 without taking the charge.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_CHARGE_5XX_RATE", default_value_t = DEFAULT_CHARGE_5XX_RATE)]
    pub charge_5xx_rate: f64,
    /// The first N attempts of every idempotency key are answered 503 (scripted flakiness).
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_CHARGE_5XX_FIRST", default_value_t = 0)]
    pub charge_5xx_first: u32,
    /// Share of status queries, voids and refunds answered 503 without changing anything.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_REQUEST_5XX_RATE", default_value_t = DEFAULT_REQUEST_5XX_RATE)]
    pub request_5xx_rate: f64,
    /// Delay between the two callbacks of a duplicate or reordered pair.
    #[arg(
        long,
        env = "PAYSTREAM_PROVIDER_SIM_SECOND_CALLBACK_DELAY_MS",
        default_value_t = DEFAULT_SECOND_CALLBACK_DELAY_MS
    )]
    pub second_callback_delay_ms: u64,
    /// Seed of every decision; a random one (logged) when omitted.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_SEED")]
    pub seed: Option<u64>,
    /// Idempotency entries kept in memory (oldest forgotten first).
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_CHARGES_MAX", default_value_t = DEFAULT_CHARGES_MAX)]
    pub charges_max: usize,
    /// Charges with callbacks still pending; beyond it new charges get 503.
    #[arg(
        long,
        env = "PAYSTREAM_PROVIDER_SIM_CALLBACKS_IN_FLIGHT_MAX",
        default_value_t = DEFAULT_CALLBACKS_IN_FLIGHT_MAX
    )]
    pub callbacks_in_flight_max: usize,
    /// Attempts per callback POST before giving it up.
    #[arg(
        long,
        env = "PAYSTREAM_PROVIDER_SIM_CALLBACK_ATTEMPTS_MAX",
        default_value_t = DEFAULT_CALLBACK_ATTEMPTS_MAX
    )]
    pub callback_attempts_max: u32,
    /// Budget of one callback POST.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_CALLBACK_TIMEOUT_MS", default_value_t = DEFAULT_CALLBACK_TIMEOUT_MS)]
    pub callback_timeout_ms: u64,
    /// On SIGTERM, how long pending callbacks may still go out.
    #[arg(long, env = "PAYSTREAM_PROVIDER_SIM_DRAIN_TIMEOUT_MS", default_value_t = DEFAULT_DRAIN_TIMEOUT_MS)]
    pub drain_timeout_ms: u64,
}

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("set PAYSTREAM_PROVIDER_WEBHOOK_SECRETS (or --webhook-secrets): callbacks must be signed")]
    NoSecret,
    #[error("{name} must be between 0 and 1, got {value}")]
    RateOutOfRange { name: &'static str, value: f64 },
    #[error("duplicate + reorder + lost rates add up to {0}, more than 1")]
    FatesOverOne(f64),
    #[error("delay min {min_ms} ms is above max {max_ms} ms")]
    DelayInverted { min_ms: u64, max_ms: u64 },
    #[error("{name} is {value}, above the limit {limit}")]
    AboveLimit { name: &'static str, value: u64, limit: u64 },
    #[error("{name} must be at least 1")]
    Zero { name: &'static str },
    #[error("callback URL {url:?} is not an http(s) URL")]
    BadUrl { url: String },
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Where verdicts are posted.
    pub callback_url: String,
    /// The secret that signs callbacks (the first configured one).
    pub signing_secret: Vec<u8>,
    /// Verdict, fate and 5xx probabilities, the delay distribution and the seed.
    pub rates: Rates,
    /// Delay between the two callbacks of a duplicate or reordered pair.
    pub second_callback_delay: Duration,
    /// Bound of the idempotency store.
    pub charges_max: usize,
    /// Bound of charges with callbacks pending (each holds a task and a timer).
    pub callbacks_in_flight_max: usize,
    /// Bound of callback POSTs on the wire at once.
    pub callback_concurrency_max: usize,
    /// Attempts per callback POST.
    pub callback_attempts_max: u32,
    /// Budget of one callback POST.
    pub callback_timeout: Duration,
    /// First and largest pause between callback attempts.
    pub callback_backoff_initial: Duration,
    pub callback_backoff_max: Duration,
    /// How long pending callbacks may still go out after shutdown was requested.
    pub drain_timeout: Duration,
}

impl SimConfig {
    /// A provider that takes every charge, approves it, and calls back once, promptly:
    /// the base tests start from, adding the one fault they test.
    pub fn reliable(callback_url: &str, signing_secret: &[u8], seed: u64) -> Self {
        Self {
            callback_url: callback_url.to_owned(),
            signing_secret: signing_secret.to_vec(),
            rates: Rates {
                seed,
                delay_min: Duration::ZERO,
                delay_max: Duration::from_millis(50),
                success_ratio: 1.0,
                duplicate_rate: 0.0,
                reorder_rate: 0.0,
                lost_rate: 0.0,
                charge_5xx_rate: 0.0,
                charge_5xx_first: 0,
                request_5xx_rate: 0.0,
            },
            second_callback_delay: Duration::from_millis(50),
            charges_max: DEFAULT_CHARGES_MAX,
            callbacks_in_flight_max: DEFAULT_CALLBACKS_IN_FLIGHT_MAX,
            callback_concurrency_max: DEFAULT_CALLBACK_CONCURRENCY_MAX,
            callback_attempts_max: DEFAULT_CALLBACK_ATTEMPTS_MAX,
            callback_timeout: Duration::from_millis(DEFAULT_CALLBACK_TIMEOUT_MS),
            callback_backoff_initial: Duration::from_millis(50),
            callback_backoff_max: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(2),
        }
    }

    /// Checks what the type cannot: ranges, sums, bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.rates;
        for (name, value) in [
            ("success ratio", r.success_ratio),
            ("duplicate rate", r.duplicate_rate),
            ("reorder rate", r.reorder_rate),
            ("lost rate", r.lost_rate),
            ("charge 5xx rate", r.charge_5xx_rate),
            ("request 5xx rate", r.request_5xx_rate),
        ] {
            // `contains` is false for NaN, so a NaN is refused too.
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::RateOutOfRange { name, value });
            }
        }
        let fates = r.duplicate_rate + r.reorder_rate + r.lost_rate;
        if fates > 1.0 + f64::EPSILON {
            return Err(ConfigError::FatesOverOne(fates));
        }
        let (min_ms, max_ms) = (millis(r.delay_min), millis(r.delay_max));
        if min_ms > max_ms {
            return Err(ConfigError::DelayInverted { min_ms, max_ms });
        }
        above("delay max ms", max_ms, DELAY_MAX_MS_LIMIT)?;
        above("second callback delay ms", millis(self.second_callback_delay), DELAY_MAX_MS_LIMIT)?;
        above("drain timeout ms", millis(self.drain_timeout), DELAY_MAX_MS_LIMIT)?;
        above("charges max", self.charges_max as u64, CHARGES_MAX_LIMIT as u64)?;
        above(
            "callbacks in flight max",
            self.callbacks_in_flight_max as u64,
            CALLBACKS_IN_FLIGHT_MAX_LIMIT as u64,
        )?;
        above(
            "callback concurrency max",
            self.callback_concurrency_max as u64,
            CALLBACKS_IN_FLIGHT_MAX_LIMIT as u64,
        )?;
        above(
            "callback attempts max",
            u64::from(self.callback_attempts_max),
            u64::from(CALLBACK_ATTEMPTS_MAX_LIMIT),
        )?;
        for (name, value) in [
            ("charges max", self.charges_max as u64),
            ("callbacks in flight max", self.callbacks_in_flight_max as u64),
            ("callback concurrency max", self.callback_concurrency_max as u64),
            ("callback attempts max", u64::from(self.callback_attempts_max)),
            ("callback timeout ms", millis(self.callback_timeout)),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        if self.signing_secret.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        match reqwest::Url::parse(&self.callback_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
            _ => Err(ConfigError::BadUrl { url: self.callback_url.clone() }),
        }
    }
}

impl Args {
    /// The validated configuration; with no `--seed`, one is drawn from the OS.
    pub fn into_config(self) -> Result<SimConfig, ConfigError> {
        let signing_secret = self
            .webhook_secrets
            .iter()
            .map(|s| s.trim())
            .find(|s| !s.is_empty())
            .ok_or(ConfigError::NoSecret)?;
        let config = SimConfig {
            callback_url: self.callback_url,
            signing_secret: signing_secret.as_bytes().to_vec(),
            rates: Rates {
                seed: self.seed.unwrap_or_else(rand::random),
                delay_min: Duration::from_millis(self.delay_min_ms),
                delay_max: Duration::from_millis(self.delay_max_ms),
                success_ratio: self.success_ratio,
                duplicate_rate: self.duplicate_rate,
                reorder_rate: self.reorder_rate,
                lost_rate: self.lost_rate,
                charge_5xx_rate: self.charge_5xx_rate,
                charge_5xx_first: self.charge_5xx_first,
                request_5xx_rate: self.request_5xx_rate,
            },
            second_callback_delay: Duration::from_millis(self.second_callback_delay_ms),
            charges_max: self.charges_max,
            callbacks_in_flight_max: self.callbacks_in_flight_max,
            callback_concurrency_max: DEFAULT_CALLBACK_CONCURRENCY_MAX,
            callback_attempts_max: self.callback_attempts_max,
            callback_timeout: Duration::from_millis(self.callback_timeout_ms),
            callback_backoff_initial: Duration::from_millis(DEFAULT_CALLBACK_BACKOFF_INITIAL_MS),
            callback_backoff_max: Duration::from_millis(DEFAULT_CALLBACK_BACKOFF_MAX_MS),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        };
        config.validate()?;
        Ok(config)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn above(name: &'static str, value: u64, limit: u64) -> Result<(), ConfigError> {
    if value > limit {
        return Err(ConfigError::AboveLimit { name, value, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Result<SimConfig, ConfigError> {
        let mut argv = vec!["provider-sim", "--webhook-secrets", "s1,s2"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("the command line parses").args.into_config()
    }

    #[test]
    fn defaults_are_seed_003s_delays_and_a_slightly_unreliable_provider() {
        let config = parse(&["--seed", "7"]).unwrap();
        assert_eq!(config.rates.delay_min, Duration::from_millis(500));
        assert_eq!(config.rates.delay_max, Duration::from_secs(5));
        assert_eq!(config.rates.seed, 7);
        assert_eq!(config.signing_secret, b"s1", "the first secret signs");
        assert_eq!(config.callback_url, DEFAULT_CALLBACK_URL);
        assert!(config.rates.duplicate_rate > 0.0 && config.rates.lost_rate > 0.0);
        assert_eq!(config.rates.charge_5xx_first, 0);
    }

    #[test]
    fn flags_override_the_defaults() {
        let config = parse(&[
            "--delay-min-ms",
            "0",
            "--delay-max-ms",
            "10",
            "--success-ratio",
            "0.25",
            "--lost-rate",
            "0.5",
            "--duplicate-rate",
            "0.5",
            "--reorder-rate",
            "0",
            "--charge-5xx-first",
            "3",
            "--callback-url",
            "https://example.test/cb",
        ])
        .unwrap();
        assert_eq!(config.rates.delay_max, Duration::from_millis(10));
        assert_eq!(config.rates.success_ratio, 0.25);
        assert_eq!(config.rates.charge_5xx_first, 3);
        assert_eq!(config.callback_url, "https://example.test/cb");
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert_eq!(
            parse(&["--success-ratio", "1.5"]).unwrap_err(),
            ConfigError::RateOutOfRange { name: "success ratio", value: 1.5 }
        );
        assert!(matches!(parse(&["--lost-rate", "NaN"]).unwrap_err(), ConfigError::RateOutOfRange { .. }));
        assert!(matches!(
            parse(&["--lost-rate", "0.6", "--duplicate-rate", "0.6"]).unwrap_err(),
            ConfigError::FatesOverOne(_)
        ));
        assert_eq!(
            parse(&["--delay-min-ms", "10", "--delay-max-ms", "5"]).unwrap_err(),
            ConfigError::DelayInverted { min_ms: 10, max_ms: 5 }
        );
        assert!(matches!(parse(&["--charges-max", "0"]).unwrap_err(), ConfigError::Zero { .. }));
        assert!(matches!(
            parse(&["--callbacks-in-flight-max", "999999999"]).unwrap_err(),
            ConfigError::AboveLimit { .. }
        ));
        assert!(matches!(parse(&["--callback-url", "ftp://x"]).unwrap_err(), ConfigError::BadUrl { .. }));
        let no_secret = Cli::try_parse_from(["provider-sim", "--webhook-secrets", ""]).unwrap().args;
        assert_eq!(no_secret.into_config().unwrap_err(), ConfigError::NoSecret);
    }

    #[test]
    fn the_test_base_is_valid() {
        SimConfig::reliable("http://127.0.0.1:1/cb", b"secret", 1).validate().unwrap();
    }
}
