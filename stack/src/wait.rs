//! Bounded readiness probes.
//!
//! Nothing in paystream waits forever for a dependency: a process or a test that
//! cannot reach Kafka, Connect or Postgres within its budget stops with a message
//! that names the dependency, the last error seen and how to start it.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Pause between two probes of the same dependency.
pub const PROBE_INTERVAL_MS: u64 = 250;

/// What to tell a person when a local dependency is missing.
pub const LOCAL_STACK_HINT: &str = "start the local stack with `dev/up` (state and logs: `dev/status`)";

/// A dependency did not become ready within its budget.
#[derive(Debug, thiserror::Error)]
#[error("{what} is not ready after {waited_ms} ms: {last_error}; {hint}")]
pub struct NotReady {
    /// The dependency, e.g. "Kafka at 127.0.0.1:9092".
    pub what: String,
    /// How long we tried.
    pub waited_ms: u128,
    /// The error of the last probe, which usually says why.
    pub last_error: String,
    /// What a person can do about it.
    pub hint: &'static str,
}

/// Calls `probe` until it succeeds or `timeout` has passed.
pub async fn until_ready<T, E, F, Fut>(
    what: impl Into<String>,
    timeout: Duration,
    mut probe: F,
) -> Result<T, NotReady>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        let last_error = match probe().await {
            Ok(value) => return Ok(value),
            Err(error) => error.to_string(),
        };
        if started.elapsed() >= timeout {
            return Err(NotReady {
                what: what.into(),
                waited_ms: started.elapsed().as_millis(),
                last_error,
                hint: LOCAL_STACK_HINT,
            });
        }
        tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_timeout_with_the_last_error() {
        let mut calls = 0u32;
        let result: Result<(), NotReady> = until_ready("thing", Duration::from_secs(2), || {
            calls += 1;
            let n = calls;
            async move { Err::<(), _>(format!("refused #{n}")) }
        })
        .await;
        let error = result.unwrap_err();
        assert_eq!(error.what, "thing");
        assert!(error.waited_ms >= 2000, "waited {} ms", error.waited_ms);
        assert!(error.to_string().contains("refused #"), "{error}");
        assert!(error.to_string().contains("dev/up"), "{error}");
        assert!(calls >= 8, "probed only {calls} times");
    }

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_success() {
        let mut calls = 0u32;
        let value = until_ready("thing", Duration::from_secs(10), || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err("not yet")
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }
}
