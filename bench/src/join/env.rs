//! The peer process contract's environment (`bench/peers/WORKLOAD.md`): the harness sets it for
//! every peer child, the Rust peers read it back with [`PeerEnv::from_env`].

/// Commit interval when `BENCH_COMMIT_INTERVAL_MS` is unset: Kafka Streams' under EOS.
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 100;

/// What the harness tells a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEnv {
    pub bootstrap: String,
    pub app_id: String,
    pub left: String,
    pub right: String,
    pub out: String,
    pub state_dir: String,
    pub commit_interval_ms: u64,
}

/// A variable the contract requires is missing or malformed.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable {0} is required (see bench/peers/WORKLOAD.md)")]
    Missing(&'static str),
    #[error("environment variable {name}={value:?} is not a number of milliseconds")]
    NotMillis { name: &'static str, value: String },
}

impl PeerEnv {
    /// From this process's environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any lookup (the process environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let required =
            |name: &'static str| lookup(name).filter(|v| !v.is_empty()).ok_or(EnvError::Missing(name));
        let commit_interval_ms = match lookup("BENCH_COMMIT_INTERVAL_MS").filter(|v| !v.is_empty()) {
            None => DEFAULT_COMMIT_INTERVAL_MS,
            Some(value) => value.parse().map_err(|_| EnvError::NotMillis {
                name: "BENCH_COMMIT_INTERVAL_MS",
                value: value.clone(),
            })?,
        };
        Ok(Self {
            bootstrap: required("BENCH_BOOTSTRAP")?,
            app_id: required("BENCH_APP_ID")?,
            left: required("BENCH_LEFT")?,
            right: required("BENCH_RIGHT")?,
            out: required("BENCH_OUT")?,
            state_dir: required("BENCH_STATE_DIR")?,
            commit_interval_ms,
        })
    }

    /// The variables to give a peer child.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BENCH_BOOTSTRAP", self.bootstrap.clone()),
            ("BENCH_APP_ID", self.app_id.clone()),
            ("BENCH_LEFT", self.left.clone()),
            ("BENCH_RIGHT", self.right.clone()),
            ("BENCH_OUT", self.out.clone()),
            ("BENCH_STATE_DIR", self.state_dir.clone()),
            ("BENCH_COMMIT_INTERVAL_MS", self.commit_interval_ms.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trips_through_the_variables() {
        let env = PeerEnv {
            bootstrap: "127.0.0.1:9092".into(),
            app_id: "app".into(),
            left: "l".into(),
            right: "r".into(),
            out: "o".into(),
            state_dir: "/tmp/s".into(),
            commit_interval_ms: 250,
        };
        let vars: BTreeMap<&str, String> = env.vars().into_iter().collect();
        assert_eq!(PeerEnv::from_lookup(|name| vars.get(name).cloned()).unwrap(), env);
    }

    #[test]
    fn names_what_is_missing_or_wrong() {
        let mut vars: BTreeMap<&str, String> = [
            ("BENCH_BOOTSTRAP", "b"),
            ("BENCH_APP_ID", "a"),
            ("BENCH_LEFT", "l"),
            ("BENCH_RIGHT", "r"),
            ("BENCH_OUT", "o"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        let error = PeerEnv::from_lookup(|name| vars.get(name).cloned()).unwrap_err();
        assert!(error.to_string().contains("BENCH_STATE_DIR"), "{error}");
        vars.insert("BENCH_STATE_DIR", "/s".into());
        assert_eq!(PeerEnv::from_lookup(|name| vars.get(name).cloned()).unwrap().commit_interval_ms, 100);
        vars.insert("BENCH_COMMIT_INTERVAL_MS", "soon".into());
        assert!(PeerEnv::from_lookup(|name| vars.get(name).cloned()).is_err());
    }
}
