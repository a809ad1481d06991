//! Every Grafana panel's PromQL (monitoring/grafana/dashboards/*.json) and every alert rule's
//! expression (monitoring/rules/*.rules.yml), evaluated by the local Prometheus (dev/up starts it)
//! through its HTTP API while payments flow: each must parse, each panel must return data, and the
//! running Prometheus must have loaded every alert of the rule files.
//!
//! The flow: when paystream's processes already run (`dev/run`, a chaos run), their traffic is the
//! demo and this test drives nothing; otherwise it runs `paystream load --start-services` for a
//! short while (the processes of dev/services on the production topics and ports, stopped at its
//! end). The lag exporter is started for the test when none answers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The local Prometheus.
const PROMETHEUS: &str = "http://127.0.0.1:9090";
/// The API's health: paystream's processes run when it answers.
const API_HEALTH: &str = "http://127.0.0.1:8080/health";
/// `paystream lag-exporter` at its default address.
const LAG_EXPORTER: &str = "http://127.0.0.1:9108/metrics";
/// How long every panel may take to show data (scrapes every 5 s; a rate over 1m needs two).
const DATA_TIMEOUT: Duration = Duration::from_secs(180);
/// Pause between two rounds of queries.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The demo load, when this test drives one: long enough for DATA_TIMEOUT's first rounds.
const DEMO_ARGS: &[&str] = &[
    "load",
    "--start-services",
    "--duration",
    "90s",
    "--rate",
    "4",
    "--users",
    "5",
    "--settle-timeout-s",
    "120",
];
/// The demo load's own bound: its duration, its settle timeout, start and stop of the processes.
const DEMO_TIMEOUT: Duration = Duration::from_secs(360);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// (dashboard — panel title, its targets' expressions) of every panel, rows' panels included.
fn panels() -> Vec<(String, Vec<String>)> {
    fn walk(dashboard: &str, panels: &[Value], out: &mut Vec<(String, Vec<String>)>) {
        for panel in panels {
            if let Some(inner) = panel["panels"].as_array() {
                walk(dashboard, inner, out);
            }
            let exprs: Vec<String> = panel["targets"]
                .as_array()
                .map(|targets| targets.iter().filter_map(|t| t["expr"].as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            if !exprs.is_empty() {
                out.push((format!("{dashboard} — {}", panel["title"].as_str().unwrap_or("?")), exprs));
            }
        }
    }
    let dir = repo().join("monitoring/grafana/dashboards");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    for file in files {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        walk(&name, dashboard["panels"].as_array().map_or(&[][..], Vec::as_slice), &mut out);
    }
    assert!(!out.is_empty(), "no panel with a query under {}", dir.display());
    out
}

/// The alert names of the rule files (`- alert: Name` lines).
fn alerts_in_files() -> Vec<String> {
    let dir = repo().join("monitoring/rules");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".rules.yml") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let Some(name) = line.trim().strip_prefix("- alert:") {
                    names.push(name.trim().to_owned());
                }
            }
        }
    }
    names.sort();
    names
}

/// Series an instant query returns, or Prometheus' error (a parse error is a 400 `bad_data`).
async fn query(http: &reqwest::Client, expr: &str) -> Result<usize, String> {
    let mut url = reqwest::Url::parse(&format!("{PROMETHEUS}/api/v1/query")).expect("a URL");
    url.query_pairs_mut().append_pair("query", expr);
    let response = http.get(url).send().await.map_err(|e| format!("Prometheus unreachable: {e}"))?;
    let body: Value = response.json().await.map_err(|e| format!("not JSON: {e}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
}

async fn answers(http: &reqwest::Client, url: &str) -> bool {
    http.get(url).send().await.is_ok_and(|r| r.status().is_success())
}

fn chaos_running() -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", "paystream chaos"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_panel_and_alert_query_parses_and_every_panel_shows_data() {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    assert!(
        answers(&http, &format!("{PROMETHEUS}/-/ready")).await,
        "Prometheus does not answer at {PROMETHEUS}: dev/up starts it (dev/status shows it)"
    );

    // The running Prometheus has every alert of the files, and each expression evaluates.
    let rules: Value =
        http.get(format!("{PROMETHEUS}/api/v1/rules")).send().await.unwrap().json().await.unwrap();
    let mut loaded: Vec<(String, String)> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["type"] == "alerting")
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["query"].as_str().unwrap().to_owned()))
        .collect();
    loaded.sort();
    let names: Vec<String> = loaded.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(
        names,
        alerts_in_files(),
        "Prometheus runs other rules than monitoring/rules (dev/up reloads them)"
    );
    for (name, expr) in &loaded {
        if let Err(error) = query(&http, expr).await {
            panic!("alert {name}: {expr} does not evaluate: {error}");
        }
    }

    // The flow: the running processes', or a short demo load of ours.
    let mut exporter = None;
    if !answers(&http, LAG_EXPORTER).await {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"))
            .arg("lag-exporter")
            .kill_on_drop(true)
            .spawn()
            .expect("start paystream lag-exporter");
        exporter = Some(child);
    }
    let mut demo = None;
    if !answers(&http, API_HEALTH).await {
        assert!(!chaos_running(), "a chaos run owns the production ports; run this test after it");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"))
            .args(DEMO_ARGS)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start paystream load");
        demo = Some(child);
    }

    // Every round evaluates every target; a panel is done once one of its targets has data.
    let panels = panels();
    let started = Instant::now();
    let mut unparsed = Vec::new();
    let mut without_data: Vec<&(String, Vec<String>)> = panels.iter().collect();
    loop {
        let mut still = Vec::new();
        for panel in without_data {
            let mut has_data = false;
            for expr in &panel.1 {
                match query(&http, expr).await {
                    Ok(series) => has_data |= series > 0,
                    Err(error) => unparsed.push(format!("{}: {expr}: {error}", panel.0)),
                }
            }
            if !has_data {
                still.push(panel);
            }
        }
        without_data = still;
        if without_data.is_empty() || !unparsed.is_empty() || started.elapsed() >= DATA_TIMEOUT {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // A demo load stops the processes it started at its end: wait for it before any verdict.
    if let Some(mut child) = demo {
        let status = tokio::time::timeout(DEMO_TIMEOUT, child.wait()).await;
        assert!(matches!(status, Ok(Ok(_))), "paystream load did not end within {DEMO_TIMEOUT:?}");
    }
    drop(exporter);
    assert!(unparsed.is_empty(), "queries Prometheus refuses:\n{}", unparsed.join("\n"));
    assert!(
        without_data.is_empty(),
        "panels without data after {DATA_TIMEOUT:?}:\n{}",
        without_data
            .iter()
            .map(|(title, exprs)| format!("{title}: {exprs:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
