//! `paystream status`: what an operator looks at first, in one screen — each component's health
//! and version, consumer lag per group, payments by state lately, dead letters and stuck payments.
//!
//! Every probe is bounded ([`PROBE_TIMEOUT`]) and independent: a component that is away is a row
//! saying so, never a hang or an early exit.

use std::fmt::Write as _;
use std::time::Duration;

use paystream_stack::connect::ConnectClient;
use paystream_stack::supervisor::{default_readiness, Readiness};
use paystream_stack::StackSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::postgres::PgPoolOptions;

use crate::dlq::DlqCounter;
use crate::lag::{self, GroupLag};
use crate::payments;

/// How long one probe (an HTTP call, a query, a Kafka request) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Stuck payments listed by id (the count covers all of them).
pub const STUCK_LISTED_MAX: i64 = 5;
/// Lagging partitions named per group in the lag table.
const PARTITIONS_NAMED_MAX: usize = 3;
/// The paystream processes probed, by their `dev/services` names; each answers at its default
/// address ([`default_readiness`]).
pub const PROCESSES: &[&str] = &["api", "provider-sim", "settle", "dispatch", "saga", "timers", "orders"];
/// Processes [`default_readiness`] does not know yet, at their default metrics address.
const MORE_PROCESSES: &[(&str, &str)] = &[("view", "http://127.0.0.1:9105/metrics")];
/// Where `paystream lag-exporter` serves its metrics by default.
pub const DEFAULT_LAG_EXPORTER_URL: &str = "http://127.0.0.1:9108/metrics";

/// Where the parts that are not in [`StackSettings`] answer.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    pub prometheus_url: String,
    pub jaeger_url: String,
    pub lag_exporter_url: String,
    pub dlq_topic: String,
}

/// A component's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Up, but something in it is not right (a connector task FAILED, a wrong setting).
    Degraded,
    Down,
    /// An optional part (Jaeger, a paystream process) that is not running.
    NotRunning,
}

impl Health {
    fn label(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Degraded => "DEGRADED",
            Health::Down => "DOWN",
            Health::NotRunning => "not running",
        }
    }
}

/// One row of the component table.
#[derive(Clone, Debug)]
pub struct Component {
    pub name: String,
    pub version: String,
    pub health: Health,
    /// Whether the stack is unhealthy without it (the infrastructure) or not (optional parts).
    pub required: bool,
    pub address: String,
    pub detail: String,
}

/// Everything `paystream status` shows.
/// Stuck payments: how many, the oldest one's age, the ids of the oldest few.
pub type Stuck = (u64, Option<Duration>, Vec<String>);

/// Payments by (state, reason class).
pub type PaymentCounts = Vec<((String, String), u64)>;

#[derive(Debug)]
pub struct Report {
    pub components: Vec<Component>,
    pub groups: Result<Vec<GroupLag>, String>,
    pub payments: Result<PaymentCounts, String>,
    pub stuck: Result<Stuck, String>,
    pub dlq: Result<Vec<(crate::dlq::DlqKey, u64)>, String>,
}

impl Report {
    /// The stack is healthy: every required component is up (a connector or task that is not
    /// RUNNING makes Kafka Connect degraded).
    pub fn healthy(&self) -> bool {
        self.components.iter().all(|c| !c.required || c.health == Health::Up)
    }
}

fn component(name: &str, required: bool, address: &str) -> Component {
    Component {
        name: name.to_owned(),
        version: "-".to_owned(),
        health: Health::Down,
        required,
        address: address.to_owned(),
        detail: String::new(),
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value, reqwest::Error> {
    http.get(url).send().await?.error_for_status()?.json().await
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, reqwest::Error> {
    http.get(url).send().await?.error_for_status()?.text().await
}

/// The `version` label of `paystream_build_info` in a metrics exposition, if present.
fn build_version(metrics: &str) -> Option<String> {
    let line = metrics.lines().find(|l| l.starts_with("paystream_build_info{"))?;
    let start = line.find("version=\"")? + "version=\"".len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

async fn postgres(settings: &StackSettings) -> (Component, Option<sqlx::PgPool>) {
    let mut row = component("postgresql", true, &paystream_stack::postgres::redact(&settings.wallet_db_url));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(PROBE_TIMEOUT)
        .connect_lazy(&settings.wallet_db_url);
    let Ok(pool) = pool else {
        row.detail = "unparsable PAYSTREAM_WALLET_DB_URL".into();
        return (row, None);
    };
    let probe = sqlx::query_as::<_, (String, String)>(
        "SELECT current_setting('server_version'), current_setting('wal_level')",
    )
    .fetch_one(&pool);
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok((version, wal_level))) => {
            row.version = version.split_whitespace().next().unwrap_or("?").to_owned();
            row.health = if wal_level == "logical" { Health::Up } else { Health::Degraded };
            row.detail = format!("wal_level={wal_level}");
            (row, Some(pool))
        }
        Ok(Err(error)) => {
            row.detail = error.to_string();
            (row, None)
        }
        Err(_) => {
            row.detail = format!("no answer within {} s", PROBE_TIMEOUT.as_secs());
            (row, None)
        }
    }
}

async fn kafka(settings: &StackSettings) -> Component {
    let mut row = component("kafka", true, &settings.kafka_bootstrap);
    let bootstrap = settings.kafka_bootstrap.clone();
    let probe = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = paystream_stack::kafka::base_config(&bootstrap).create()?;
        let metadata = consumer.fetch_metadata(None, PROBE_TIMEOUT)?;
        Ok::<_, rdkafka::error::KafkaError>((metadata.brokers().len(), metadata.topics().len()))
    })
    .await;
    match probe {
        Ok(Ok((brokers, topics))) => {
            row.health = Health::Up;
            // Brokers do not report their version to clients; Connect's worker reports its own.
            row.version = "(see connect)".into();
            row.detail = format!("{brokers} broker(s), {topics} topics");
        }
        Ok(Err(error)) => row.detail = error.to_string(),
        Err(error) => row.detail = error.to_string(),
    }
    row
}

async fn connect(settings: &StackSettings) -> Vec<Component> {
    let mut row = component("kafka-connect", true, &settings.connect_url);
    let Ok(client) = ConnectClient::new(&settings.connect_url) else {
        row.detail = "no HTTP client".into();
        return vec![row];
    };
    let info = match tokio::time::timeout(PROBE_TIMEOUT, client.server_info()).await {
        Ok(Ok(info)) => info,
        Ok(Err(error)) => {
            row.detail = error.to_string();
            return vec![row];
        }
        Err(_) => {
            row.detail = format!("no answer within {} s", PROBE_TIMEOUT.as_secs());
            return vec![row];
        }
    };
    row.version = info.version;
    row.health = Health::Up;
    row.detail = format!("kafka cluster {}", info.kafka_cluster_id);
    let mut rows = Vec::new();
    let names = tokio::time::timeout(PROBE_TIMEOUT, client.list()).await;
    let names = match names {
        Ok(Ok(names)) => names,
        _ => {
            row.health = Health::Degraded;
            row.detail.push_str("; connectors not listed");
            return vec![row];
        }
    };
    for name in names {
        let mut connector = component(&format!("  connector {name}"), true, "");
        match tokio::time::timeout(PROBE_TIMEOUT, client.status(&name)).await {
            Ok(Ok(status)) => {
                connector.health =
                    if status.connector.state == "RUNNING" { Health::Up } else { Health::Degraded };
                connector.detail = status.connector.state.clone();
                connector.address = status.connector.worker_id.clone();
                rows.push(connector);
                if status.tasks.is_empty() {
                    let mut task = component(&format!("    task {name}/-"), true, "");
                    task.health = Health::Degraded;
                    task.detail = "no task".into();
                    rows.push(task);
                }
                for t in &status.tasks {
                    let mut task = component(&format!("    task {name}/{}", t.id), true, &t.worker_id);
                    task.health = if t.state == "RUNNING" { Health::Up } else { Health::Degraded };
                    task.detail = t.state.clone();
                    if let Some(trace) = &t.trace {
                        let first = trace.lines().next().unwrap_or("");
                        let _ = write!(task.detail, ": {first}");
                    }
                    rows.push(task);
                }
            }
            _ => {
                connector.detail = "status not read".into();
                rows.push(connector);
            }
        }
    }
    if rows.iter().any(|r| r.health != Health::Up) {
        row.health = Health::Degraded;
    }
    std::iter::once(row).chain(rows).collect()
}

async fn registry(http: &reqwest::Client, settings: &StackSettings) -> Component {
    let url = settings.schema_registry_url.trim_end_matches('/');
    let mut row = component("schema-registry", true, url);
    match get_json(http, &format!("{url}/subjects")).await {
        Ok(subjects) => {
            row.health = Health::Up;
            row.detail = format!("{} subjects", subjects.as_array().map_or(0, Vec::len));
        }
        Err(error) => {
            row.detail = error.to_string();
            return row;
        }
    }
    // Apicurio's own API sits beside its Confluent-compatible one.
    if let Some((base, _)) = url.split_once("/apis/") {
        if let Ok(info) = get_json(http, &format!("{base}/apis/registry/v3/system/info")).await {
            row.version = info["version"].as_str().unwrap_or("?").to_owned();
            row.detail = format!("{} {}", info["name"].as_str().unwrap_or("registry"), row.detail);
        }
    }
    row
}

async fn prometheus(http: &reqwest::Client, url: &str) -> Component {
    let url = url.trim_end_matches('/');
    let mut row = component("prometheus", false, url);
    match get_json(http, &format!("{url}/api/v1/status/buildinfo")).await {
        Ok(info) => {
            row.health = Health::Up;
            row.version = info["data"]["version"].as_str().unwrap_or("?").to_owned();
            if let Ok(targets) = get_json(http, &format!("{url}/api/v1/targets?state=active")).await {
                let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
                let up = active.iter().filter(|t| t["health"] == "up").count();
                let rules = get_json(http, &format!("{url}/api/v1/alerts")).await.ok();
                let firing = rules
                    .and_then(|r| r["data"]["alerts"].as_array().cloned())
                    .map_or(0, |a| a.iter().filter(|a| a["state"] == "firing").count());
                row.detail = format!("targets {up}/{} up, {firing} alert(s) firing", active.len());
            }
        }
        Err(error) => {
            row.health = Health::NotRunning;
            row.detail = error.to_string();
        }
    }
    row
}

async fn jaeger(http: &reqwest::Client, url: &str) -> Component {
    let url = url.trim_end_matches('/');
    let mut row = component("jaeger", false, url);
    match get_json(http, &format!("{url}/api/services")).await {
        Ok(services) => {
            row.health = Health::Up;
            let names: Vec<&str> = services["data"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            row.detail =
                format!("services: {}", if names.is_empty() { "none yet".into() } else { names.join(",") });
        }
        Err(error) => {
            row.health = Health::NotRunning;
            row.detail = error.to_string();
        }
    }
    row
}

/// A paystream process at `url` (its /health or /metrics); the version from its metrics.
async fn process(http: &reqwest::Client, name: &str, url: &str) -> Component {
    let mut row = component(&format!("paystream {name}"), false, url);
    match get_text(http, url).await {
        Ok(body) => {
            row.health = Health::Up;
            let metrics = if url.ends_with("/metrics") {
                Some(body)
            } else {
                get_text(http, &url.replace("/health", "/metrics")).await.ok()
            };
            if let Some(version) = metrics.as_deref().and_then(build_version) {
                row.version = version;
            }
        }
        Err(error) => {
            row.health = Health::NotRunning;
            row.detail = if error.is_connect() { "nothing listens".to_owned() } else { error.to_string() };
        }
    }
    row
}

/// Probes everything; never fails (what could not be read is a row or a section saying so).
pub async fn gather(settings: &StackSettings, config: &StatusConfig) -> Report {
    let started = std::time::Instant::now();
    let http = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .build()
        .unwrap_or_default();
    let ((pg, db), kafka_row, connect_rows, registry_row, prometheus_row, jaeger_row) = tokio::join!(
        postgres(settings),
        kafka(settings),
        connect(settings),
        registry(&http, settings),
        prometheus(&http, &config.prometheus_url),
        jaeger(&http, &config.jaeger_url),
    );
    let mut components = vec![pg, kafka_row];
    components.extend(connect_rows);
    components.push(registry_row);
    components.push(prometheus_row);
    components.push(jaeger_row);
    let mut processes: Vec<(String, String)> = PROCESSES
        .iter()
        .filter_map(|name| match default_readiness(name) {
            Readiness::Http(url) => Some(((*name).to_owned(), url)),
            Readiness::Started => None,
        })
        .collect();
    for (name, url) in MORE_PROCESSES {
        if !processes.iter().any(|(known, _)| known == name) {
            processes.push(((*name).to_owned(), (*url).to_owned()));
        }
    }
    processes.push(("lag-exporter".to_owned(), config.lag_exporter_url.clone()));
    let probes = processes.iter().map(|(name, url)| process(&http, name, url));
    components.extend(futures::future::join_all(probes).await);

    tracing::debug!(elapsed = ?started.elapsed(), "components probed");
    let kafka_up = components.iter().any(|c| c.name == "kafka" && c.health == Health::Up);
    let (groups, dlq) = if kafka_up {
        let bootstrap = settings.kafka_bootstrap.clone();
        let topic = config.dlq_topic.clone();
        tokio::task::spawn_blocking(move || {
            let groups = lag::collect(&bootstrap).map_err(|e| e.to_string());
            let dlq = DlqCounter::new(&bootstrap, &topic)
                .and_then(|mut counter| counter.catch_up().map(|()| counter))
                .map(|counter| counter.counts().iter().map(|(k, v)| (k.clone(), *v)).collect())
                .map_err(|e| e.to_string());
            (groups, dlq)
        })
        .await
        .unwrap_or_else(|e| (Err(e.to_string()), Err(e.to_string())))
    } else {
        (Err("Kafka is down".to_owned()), Err("Kafka is down".to_owned()))
    };
    tracing::debug!(elapsed = ?started.elapsed(), "lag and DLQ read");
    let (payments, stuck) = match &db {
        Some(db) => {
            let recent = payments::recent(db, payments::RECENT_WINDOW)
                .await
                .map(|counts| counts.into_iter().collect())
                .map_err(|e| e.to_string());
            let stuck = async {
                let summary = payments::stuck(db).await?;
                let examples = payments::stuck_examples(db, STUCK_LISTED_MAX).await?;
                Ok::<_, sqlx::Error>((
                    summary.count,
                    summary.oldest_age,
                    examples.iter().map(|r| r.payment_id.to_string()).collect(),
                ))
            }
            .await
            .map_err(|e| e.to_string());
            (recent, stuck)
        }
        None => (Err("PostgreSQL is down".to_owned()), Err("PostgreSQL is down".to_owned())),
    };
    Report { components, groups, payments, stuck, dlq }
}

/// A table with a header row, columns as wide as their widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            let _ = write!(text, "{cell:<width$}  ");
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map_or_else(|| "?".to_owned(), |s| format!("{s:.1}"))
}

/// The report as the terminal shows it.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "COMPONENTS");
    let rows: Vec<Vec<String>> = report
        .components
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.version.clone(),
                c.health.label().to_owned(),
                c.address.clone(),
                c.detail.clone(),
            ]
        })
        .collect();
    table(&mut out, &["COMPONENT", "VERSION", "HEALTH", "ADDRESS", "DETAIL"], &rows);

    let _ = writeln!(
        out,
        "\nCONSUMER LAG (records to the last stable offset; seconds: age of the first unconsumed record)"
    );
    match &report.groups {
        Ok(groups) => {
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| {
                    let mut behind: Vec<&lag::PartitionLag> =
                        g.partitions.iter().filter(|p| p.records > 0).collect();
                    behind.sort_by_key(|p| std::cmp::Reverse(p.records));
                    let named: Vec<String> = behind
                        .iter()
                        .take(PARTITIONS_NAMED_MAX)
                        .map(|p| format!("{}/{}:{}", p.topic, p.partition, p.records))
                        .collect();
                    let more = behind.len().saturating_sub(PARTITIONS_NAMED_MAX);
                    let mut detail = named.join(" ");
                    if more > 0 {
                        let _ = write!(detail, " +{more} more");
                    }
                    vec![
                        g.group.clone(),
                        // A group that only ever committed offsets (no member joined) has no type.
                        if g.protocol_type.is_empty() { "-".to_owned() } else { g.protocol_type.clone() },
                        g.state.clone(),
                        g.members.to_string(),
                        g.partitions.len().to_string(),
                        g.total_records().to_string(),
                        seconds(g.max_seconds()),
                        detail,
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "GROUP",
                    "TYPE",
                    "STATE",
                    "MEMBERS",
                    "PARTITIONS",
                    "LAG",
                    "LAG_S",
                    "BEHIND (topic/partition:records)",
                ],
                &rows,
            );
        }
        Err(error) => {
            let _ = writeln!(out, "not read: {error}");
        }
    }

    let _ = writeln!(
        out,
        "\nPAYMENTS accepted in the last {} min, by state",
        payments::RECENT_WINDOW.as_secs() / 60
    );
    match &report.payments {
        Ok(counts) if counts.is_empty() => {
            let _ = writeln!(out, "none");
        }
        Ok(counts) => {
            let rows: Vec<Vec<String>> = counts
                .iter()
                .map(|((state, reason), n)| vec![state.clone(), reason.clone(), n.to_string()])
                .collect();
            table(&mut out, &["STATE", "REASON", "PAYMENTS"], &rows);
        }
        Err(error) => {
            let _ = writeln!(out, "not read: {error}");
        }
    }

    let _ = writeln!(out, "\nDEAD LETTERS (the DLQ topic, all retained)");
    match &report.dlq {
        Ok(counts) if counts.is_empty() => {
            let _ = writeln!(out, "none");
        }
        Ok(counts) => {
            let rows: Vec<Vec<String>> = counts
                .iter()
                .map(|(k, n)| {
                    vec![k.source_topic.clone(), k.reason.clone(), k.processor.clone(), n.to_string()]
                })
                .collect();
            table(&mut out, &["SOURCE TOPIC", "REASON", "PROCESSOR", "RECORDS"], &rows);
        }
        Err(error) => {
            let _ = writeln!(out, "not read: {error}");
        }
    }

    let _ = writeln!(
        out,
        "\nSTUCK PAYMENTS (PENDING more than {} s after acceptance)",
        payments::STUCK_AFTER.as_secs()
    );
    match &report.stuck {
        Ok((0, _, _)) => {
            let _ = writeln!(out, "none");
        }
        Ok((count, oldest, ids)) => {
            let _ = writeln!(
                out,
                "{count} stuck, oldest {} s; e.g. {} (paystream reservations stranded lists them, nudge resolves them)",
                oldest.map_or(0, |d| d.as_secs()),
                ids.join(" ")
            );
        }
        Err(error) => {
            let _ = writeln!(out, "not read: {error}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_version_is_read_from_an_exposition() {
        let text = "# HELP x\npaystream_build_info{process=\"settle\",version=\"0.1.0\"} 1\n";
        assert_eq!(build_version(text).as_deref(), Some("0.1.0"));
        assert_eq!(build_version("up 1\n"), None);
    }

    #[test]
    fn only_required_components_decide_health() {
        let mut optional = component("jaeger", false, "");
        optional.health = Health::NotRunning;
        let mut required = component("kafka", true, "");
        required.health = Health::Up;
        let report = Report {
            components: vec![optional, required.clone()],
            groups: Ok(vec![]),
            payments: Ok(vec![]),
            stuck: Ok((0, None, vec![])),
            dlq: Ok(vec![]),
        };
        assert!(report.healthy());
        let text = render(&report);
        assert!(text.contains("jaeger") && text.contains("not running"), "{text}");
        required.health = Health::Degraded;
        let report = Report { components: vec![required], ..report };
        assert!(!report.healthy());
    }
}
