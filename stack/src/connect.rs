//! A client for the Kafka Connect REST API.
//!
//! Connector configurations live in `connect/*.json` in the shape Connect's own
//! `POST /connectors` takes (`{"name": …, "config": {…}}`). Applying them uses
//! `PUT /connectors/{name}/config`, which creates or updates, so applying twice is safe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::wait::{self, NotReady};

/// How long one REST call may take. Connect answers in milliseconds unless it is
/// rebalancing, in which case it answers 409 at once and we retry.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Attempts for a call that Connect rejects because its group is rebalancing.
pub const REBALANCE_RETRIES_MAX: u32 = 40;
/// Pause between those attempts.
pub const REBALANCE_BACKOFF_MS: u64 = 500;

/// Errors of the Connect client.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Kafka Connect is unreachable: {0}")]
    Http(#[from] reqwest::Error),
    #[error("Kafka Connect answered {status} to {method} {path}: {message}")]
    Api { method: &'static str, path: String, status: u16, message: String },
    #[error("connector {0} does not exist")]
    NotFound(String),
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a connector definition ({{\"name\", \"config\"}}): {source}")]
    BadDefinition { path: PathBuf, source: serde_json::Error },
}

/// A connector as stored in `connect/`: its name and its configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ConnectorDefinition {
    /// Connector name, unique in the Connect cluster.
    pub name: String,
    /// The connector's configuration, string values as Connect expects them.
    pub config: Map<String, Value>,
}

impl ConnectorDefinition {
    /// Reads one definition from a JSON file.
    pub fn load(path: &Path) -> Result<Self, ConnectError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConnectError::Io { path: path.to_owned(), source })?;
        serde_json::from_str(&text)
            .map_err(|source| ConnectError::BadDefinition { path: path.to_owned(), source })
    }

    /// Reads every `*.json` in `dir`, in file-name order.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>, ConnectError> {
        let io = |source| ConnectError::Io { path: dir.to_owned(), source };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        paths.retain(|p| p.extension().is_some_and(|ext| ext == "json"));
        paths.sort();
        paths.iter().map(|p| Self::load(p)).collect()
    }

    /// Sets (or replaces) one configuration key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.config.insert(key.to_owned(), Value::String(value.into()));
        self
    }

    /// A configuration value as a string, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(Value::as_str)
    }
}

/// What Connect reports about a connector and its tasks.
#[derive(Clone, Debug, Deserialize)]
pub struct ConnectorStatus {
    pub name: String,
    pub connector: WorkerState,
    pub tasks: Vec<TaskState>,
}

/// The state of a connector on its worker.
#[derive(Clone, Debug, Deserialize)]
pub struct WorkerState {
    pub state: String,
    pub worker_id: String,
    #[serde(default)]
    pub trace: Option<String>,
}

/// The state of one task.
#[derive(Clone, Debug, Deserialize)]
pub struct TaskState {
    pub id: u32,
    pub state: String,
    pub worker_id: String,
    #[serde(default)]
    pub trace: Option<String>,
}

impl ConnectorStatus {
    /// The connector and all of its (at least one) tasks are RUNNING.
    pub fn is_running(&self) -> bool {
        self.connector.state == "RUNNING"
            && !self.tasks.is_empty()
            && self.tasks.iter().all(|t| t.state == "RUNNING")
    }

    /// The first stack trace of a FAILED connector or task, if any.
    pub fn failure(&self) -> Option<&str> {
        std::iter::once((&self.connector.state, &self.connector.trace))
            .chain(self.tasks.iter().map(|t| (&t.state, &t.trace)))
            .find(|(state, _)| state.as_str() == "FAILED")
            .map(|(_, trace)| trace.as_deref().unwrap_or("FAILED without a trace"))
    }
}

/// The worker's answer to `GET /`.
#[derive(Clone, Debug, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    pub commit: String,
    pub kafka_cluster_id: String,
}

/// A Kafka Connect REST client.
#[derive(Clone, Debug)]
pub struct ConnectClient {
    /// Shared HTTP client (connection pool).
    http: reqwest::Client,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8083`.
    base_url: String,
}

impl ConnectClient {
    pub fn new(base_url: &str) -> Result<Self, ConnectError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned() })
    }

    /// Waits until the worker has joined its group and read its config topic
    /// (`GET /health` answers 200 only then).
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<ServerInfo, NotReady> {
        let what = format!("Kafka Connect at {}", self.base_url);
        wait::until_ready(what, timeout, || async {
            let health =
                self.http.get(format!("{}/health", self.base_url)).send().await.map_err(|e| e.to_string())?;
            if !health.status().is_success() {
                return Err(format!("GET /health answered {}", health.status()));
            }
            self.server_info().await.map_err(|e| e.to_string())
        })
        .await
        .map_err(|mut e| {
            e.hint = "start Kafka Connect with `dev/up` (log: dev/status shows where)";
            e
        })
    }

    /// `GET /`: version and cluster of the worker.
    pub async fn server_info(&self) -> Result<ServerInfo, ConnectError> {
        self.call("GET", "/", None).await?.map_or_else(
            || Err(ConnectError::NotFound("/".into())),
            |v| serde_json::from_value(v).map_err(|e| api_error("GET", "/", 200, e.to_string())),
        )
    }

    /// Creates or updates a connector (`PUT /connectors/{name}/config`).
    pub async fn apply(&self, connector: &ConnectorDefinition) -> Result<(), ConnectError> {
        let path = format!("/connectors/{}/config", connector.name);
        self.call("PUT", &path, Some(Value::Object(connector.config.clone()))).await?;
        Ok(())
    }

    /// Restarts the connector's FAILED instance and tasks
    /// (`POST /connectors/{name}/restart?includeTasks=true&onlyFailed=true`); running ones are
    /// left alone. Re-applying an unchanged config does not restart a task that failed on a
    /// dependency that was away (the registry, at a restart of the stack), so `apply` callers
    /// do this once before they wait.
    ///
    /// Connect answers 202 and acts on it a moment later: until then the status still shows the
    /// old FAILED state, which `wait_until_running` would take for a new failure. So this waits,
    /// at most `timeout`, until no part reports FAILED; a part that fails again (its dependency
    /// still away) is left for `wait_until_running` to report with its trace.
    pub async fn restart_failed(&self, name: &str, timeout: Duration) -> Result<(), ConnectError> {
        let path = format!("/connectors/{name}/restart?includeTasks=true&onlyFailed=true");
        self.call("POST", &path, None).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status(name).await?;
            if status.failure().is_none() || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(REBALANCE_BACKOFF_MS)).await;
        }
    }

    /// Names of all connectors.
    pub async fn list(&self) -> Result<Vec<String>, ConnectError> {
        let value = self.call("GET", "/connectors", None).await?.unwrap_or(Value::Array(vec![]));
        serde_json::from_value(value).map_err(|e| api_error("GET", "/connectors", 200, e.to_string()))
    }

    /// The status of one connector.
    pub async fn status(&self, name: &str) -> Result<ConnectorStatus, ConnectError> {
        let path = format!("/connectors/{name}/status");
        match self.call("GET", &path, None).await? {
            Some(value) => {
                serde_json::from_value(value).map_err(|e| api_error("GET", &path, 200, e.to_string()))
            }
            None => Err(ConnectError::NotFound(name.to_owned())),
        }
    }

    /// Deletes a connector; an unknown one is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), ConnectError> {
        self.call("DELETE", &format!("/connectors/{name}"), None).await?;
        Ok(())
    }

    /// Waits until the connector and its tasks run; a FAILED state ends the wait at once
    /// with the worker's stack trace.
    pub async fn wait_until_running(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<ConnectorStatus, ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.status(name).await {
                Ok(status) if status.is_running() => return Ok(status),
                Ok(status) => {
                    if let Some(trace) = status.failure() {
                        return Err(api_error(
                            "GET",
                            &format!("/connectors/{name}/status"),
                            200,
                            format!("FAILED: {}{trace}", failure_hint(trace)),
                        ));
                    }
                    format!(
                        "connector {} tasks {:?}",
                        status.connector.state,
                        status.tasks.iter().map(|t| &t.state).collect::<Vec<_>>()
                    )
                }
                Err(ConnectError::NotFound(_)) => "not created yet".to_owned(),
                Err(other) => return Err(other),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(api_error(
                    "GET",
                    &format!("/connectors/{name}/status"),
                    200,
                    format!("not RUNNING after {timeout:?}: {last}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(REBALANCE_BACKOFF_MS)).await;
        }
    }

    /// One REST call. 404 becomes `Ok(None)`; 409 (the worker group is rebalancing) is
    /// retried a bounded number of times; any other non-2xx is an error with Connect's message.
    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, ConnectError> {
        let url = format!("{}{}", self.base_url, path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = match method {
                "GET" => self.http.get(&url),
                "PUT" => self.http.put(&url),
                "POST" => self.http.post(&url),
                "DELETE" => self.http.delete(&url),
                _ => unreachable!("ConnectClient only issues GET, PUT, POST and DELETE"),
            };
            let request = match &body {
                Some(json) => request.json(json),
                None => request,
            };
            let response = request.send().await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            match status {
                200..=299 if text.trim().is_empty() => return Ok(Some(Value::Null)),
                200..=299 => {
                    return serde_json::from_str(&text)
                        .map(Some)
                        .map_err(|e| api_error(method, path, status, e.to_string()))
                }
                404 => return Ok(None),
                409 if attempt < REBALANCE_RETRIES_MAX => {
                    tokio::time::sleep(Duration::from_millis(REBALANCE_BACKOFF_MS)).await;
                }
                _ => return Err(api_error(method, path, status, connect_message(&text))),
            }
        }
    }
}

/// A sentence for failures whose cause is known, put before Connect's stack trace.
fn failure_hint(trace: &str) -> &'static str {
    if trace.contains("no longer available on the server") {
        // Debezium's stored offset is behind its replication slot: another Connect cluster
        // consumed the slot, or Connect's offsets were restored from an older state.
        // Resuming would skip changes, so it refuses; for an outbox that would lose events.
        "the connector's stored position is behind its replication slot (another Connect used \
         the same slot, or Connect's offsets are older than the database): on the local stack run \
         `dev/reset`; in production, find out who consumed the slot before touching anything. "
    } else {
        ""
    }
}

fn api_error(method: &'static str, path: &str, status: u16, message: String) -> ConnectError {
    ConnectError::Api { method, path: path.to_owned(), status, message }
}

/// Connect's error bodies are `{"error_code": …, "message": …}`; fall back to the raw text.
fn connect_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_in_connect_dir_parses_and_names_a_class() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../connect");
        let definitions = ConnectorDefinition::load_dir(&dir).unwrap();
        assert!(!definitions.is_empty(), "no connector in {}", dir.display());
        for d in &definitions {
            assert!(d.get("connector.class").is_some(), "{} has no connector.class", d.name);
            assert!(d.config.values().all(Value::is_string), "{}: Connect takes string values only", d.name);
        }
    }

    #[test]
    fn status_reports_failure_trace() {
        let json = r#"{"name":"c","connector":{"state":"RUNNING","worker_id":"w"},
                       "tasks":[{"id":0,"state":"FAILED","worker_id":"w","trace":"boom"}]}"#;
        let status: ConnectorStatus = serde_json::from_str(json).unwrap();
        assert!(!status.is_running());
        assert_eq!(status.failure(), Some("boom"));
    }

    #[test]
    fn a_slot_ahead_of_the_stored_offset_gets_a_hint() {
        assert!(failure_hint("DebeziumException: … but this is no longer available on the server.")
            .contains("dev/reset"));
        assert_eq!(failure_hint("NullPointerException"), "");
    }

    #[test]
    fn error_message_is_taken_from_connect_body() {
        assert_eq!(connect_message(r#"{"error_code":400,"message":"bad"}"#), "bad");
        assert_eq!(connect_message("plain"), "plain");
    }
}
