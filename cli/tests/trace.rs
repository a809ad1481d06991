//! One payment is one trace, seen through Jaeger's query API: every paystream process of
//! `dev/services` started as `dev/run` starts them, exporting to the local Jaeger (dev/up starts
//! it), one payment sent through the public API with a `traceparent` of the test's own, and then
//! the trace with that id must hold the whole chain, each span the child of the one before:
//!
//! ```text
//! test ─▶ api POST /api/v1/payment ─▶ saga payments.initiated ─▶ dispatcher payments.provider-commands
//!   ─▶ dispatch POST /v1/charges (client) ─▶ provider-sim POST /v1/charges ─▶ provider-sim callbacks
//!   ─▶ api POST /api/v1/callback ─▶ saga payments.callbacks ─▶ settlement payments.results
//! ```
//!
//! (and the dispatcher's outcome: dispatcher ─▶ saga payments.dispatch-outcomes). The trace is
//! also found by Jaeger's tag search on `payment_id`, as the README tells an operator to look.
//!
//! The processes use the production topics, consumer groups and ports (Debezium's outbox routes
//! to the production topics), like `whole_flow.rs`: it refuses to start while `dev/run` holds the
//! ports, and must not run during a chaos run.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paystream_stack::supervisor::{self, Fleet, FlowEnvironment};
use paystream_stack::testkit;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// The API, as `dev/services` starts it.
const API: &str = "http://127.0.0.1:8080";
/// Jaeger's query API (dev/up).
const JAEGER: &str = "http://127.0.0.1:16686";
/// Jaeger's OTLP/HTTP receiver, given to the processes.
const OTLP_ENDPOINT: &str = "http://127.0.0.1:4318";
/// Ports the processes listen on; taken ports mean `dev/run` (or a leftover) is running.
const PORTS: [u16; 7] = [8080, 8090, 9101, 9102, 9103, 9104, 9109];
/// The batch span processor's export interval in the processes (the SDK's default is 5 s).
const EXPORT_INTERVAL_MS: u64 = 500;
/// Budget for the payment to be settled: a consumer group that joins slowly (a member of an
/// earlier run still in its session) delays the charge by up to a minute.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// The saga's payment timeout here, ms: long enough that a slow start charges the payment rather
/// than time it out (the chain under test is the charged one).
const PAYMENT_TIMEOUT_MS: u64 = 120_000;
/// Budget for every span of the chain to be in Jaeger once the payment is settled.
const TRACE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls (of the wallet database, of Jaeger).
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// One span of a Jaeger trace, as its query API returns it.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    parent: Option<String>,
    service: String,
    operation: String,
    tags: HashMap<String, String>,
}

/// The spans of `trace` (one element of `/api/traces…`'s `data`).
fn spans(trace: &Value) -> Vec<Span> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .map(|span| Span {
                    id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                    parent: span["references"].as_array().and_then(|refs| {
                        refs.iter()
                            .find(|r| r["refType"] == "CHILD_OF")
                            .and_then(|r| r["spanID"].as_str().map(str::to_owned))
                    }),
                    service: processes[span["processID"].as_str().unwrap_or_default()]["serviceName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    operation: span["operationName"].as_str().unwrap_or_default().to_owned(),
                    tags: span["tags"]
                        .as_array()
                        .map(|tags| {
                            tags.iter()
                                .map(|t| {
                                    let value = match &t["value"] {
                                        Value::String(s) => s.clone(),
                                        other => other.to_string(),
                                    };
                                    (t["key"].as_str().unwrap_or_default().to_owned(), value)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The hops of the chain, in order: (service, operation).
const CHAIN: [(&str, &str); 9] = [
    ("paystream-api", "POST /api/v1/payment"),
    ("paystream-saga", "saga payments.initiated"),
    ("paystream-dispatch", "dispatcher payments.provider-commands"),
    ("paystream-dispatch", "POST /v1/charges"),
    ("paystream-provider-sim", "POST /v1/charges"),
    ("paystream-provider-sim", "provider-sim callbacks"),
    ("paystream-api", "POST /api/v1/callback"),
    ("paystream-saga", "saga payments.callbacks"),
    ("paystream-settle", "settlement payments.results"),
];

/// The span of each hop of [`CHAIN`], each the child of the one before, the first the child of
/// `root_span` (the test's own); `Err` names the first hop missing or attached elsewhere.
fn chain<'a>(spans: &'a [Span], root_span: &str) -> Result<Vec<&'a Span>, String> {
    let mut parent = root_span.to_owned();
    let mut found = Vec::new();
    for (service, operation) in CHAIN {
        let Some(span) = spans.iter().find(|s| {
            s.service == service && s.operation == operation && s.parent.as_deref() == Some(parent.as_str())
        }) else {
            return Err(format!("no span {service} \"{operation}\" that is the child of span {parent}"));
        };
        parent = span.id.clone();
        found.push(span);
    }
    Ok(found)
}

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn assert_ports_free() {
    for port in PORTS {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            panic!(
                "port {port} is in use: this test starts every paystream process on its production \
                 port; stop `dev/run` (Ctrl-C) or whatever holds the port, then run it again"
            );
        }
    }
}

/// The processes' environment: a provider without faults (one payment, one clean chain) whose
/// callback comes after the dispatcher's outcome, a payment timeout no slow start reaches, and
/// export to the local Jaeger.
fn environment(state_dir: &Path) -> Vec<(String, String)> {
    let env = FlowEnvironment {
        seed: 14,
        delay_ms: (500, 600),
        decline_rate: 0.0,
        duplicate_rate: 0.0,
        reorder_rate: 0.0,
        lost_rate: 0.0,
        provider_5xx_rate: 0.0,
        state_dir: Some(state_dir.to_owned()),
    };
    let mut vars: Vec<(String, String)> =
        env.vars().into_iter().filter(|(name, _)| name != "PAYSTREAM_PAYMENT_TIMEOUT_MS").collect();
    vars.push(("PAYSTREAM_PAYMENT_TIMEOUT_MS".into(), PAYMENT_TIMEOUT_MS.to_string()));
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), OTLP_ENDPOINT.into()));
    vars.push(("OTEL_BSP_SCHEDULE_DELAY".into(), EXPORT_INTERVAL_MS.to_string()));
    vars
}

async fn call(
    http: &reqwest::Client,
    path: &str,
    token: &str,
    body: Value,
    headers: &[(&str, String)],
) -> (StatusCode, Value) {
    let mut request = http.post(format!("{API}{path}")).bearer_auth(token).json(&body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn jaeger_get(http: &reqwest::Client, path: &str) -> Result<Value, String> {
    let response = http.get(format!("{JAEGER}{path}")).send().await.map_err(|e| format!("{path}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("{path}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{path}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_payment_is_one_trace_from_the_api_to_settlement() {
    let settings = testkit::kafka_stack().await;
    let db = testkit::wallet_db(&settings).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("a client");
    jaeger_get(&http, "/api/services")
        .await
        .unwrap_or_else(|e| panic!("Jaeger's query API does not answer ({e}): dev/up starts Jaeger"));
    assert_ports_free();
    let run_dir = std::env::temp_dir().join(testkit::unique("paystream-trace"));
    let log_dir = run_dir.join("logs");
    std::fs::create_dir_all(&log_dir).expect("a log directory");
    let state_dir =
        std::env::var_os("PAYSTREAM_STATE_DIR").map_or_else(|| run_dir.join("state"), PathBuf::from);
    eprintln!("trace: logs in {}", log_dir.display());
    let specs = supervisor::services_file(
        &repo_dir().join("dev/services"),
        Path::new(env!("CARGO_BIN_EXE_paystream")),
        &environment(&state_dir),
    )
    .expect("dev/services");
    let mut fleet = Fleet::start(specs, &log_dir).await.unwrap_or_else(|e| panic!("{e}"));

    // A funded wallet, then one payment under a trace context of the test's own.
    let user = Uuid::new_v4();
    let (status, body) = call(
        &http,
        "/api/v1/accounts",
        &testkit::bearer_token(user, false),
        json!({"name": "Trace User", "phone": "+79000000014", "currency": "RUB"}),
        &[],
    )
    .await;
    assert!(status.is_success(), "creating a wallet: {status} {body}");
    let wallet: Uuid = body["walletId"].as_str().and_then(|s| s.parse().ok()).expect("walletId");
    let (status, body) = call(
        &http,
        &format!("/api/v1/accounts/{wallet}/deposits"),
        &testkit::bearer_token(Uuid::new_v4(), true),
        json!({"amount": 100.0}),
        &[("Idempotency-Key", Uuid::new_v4().to_string())],
    )
    .await;
    assert!(status.is_success(), "depositing: {status} {body}");

    let trace_id = Uuid::new_v4().simple().to_string();
    let root_span = Uuid::new_v4().simple().to_string()[..16].to_owned();
    let payment_id = Uuid::new_v4();
    let (status, body) = call(
        &http,
        "/api/v1/payment",
        &testkit::bearer_token(user, false),
        json!({
            "paymentId": payment_id,
            "wallet": wallet,
            "amount": 12.5,
            "kind": "mobile",
            "description": "one payment, one trace",
            "timestamp": "20261201-09:00:00:000000",
        }),
        &[("traceparent", format!("00-{trace_id}-{root_span}-01"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the payment: {body}");

    // Settled: the wallet's transaction is no longer pending.
    let started = Instant::now();
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM wallet_transactions WHERE payment_id = $1")
                .bind(payment_id)
                .fetch_optional(&db)
                .await
                .expect("reading the payment's transaction");
        if status.as_deref().is_some_and(|s| s != "PENDING") {
            assert_eq!(status.as_deref(), Some("COMPLETED"), "a provider without faults charges it");
            break;
        }
        let dead = fleet.dead();
        assert!(dead.is_empty(), "{dead:?} died; logs in {}", log_dir.display());
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "payment {payment_id} not settled after {SETTLE_TIMEOUT:?} (status {status:?}); logs in {}",
            log_dir.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // The whole chain in the one trace (spans arrive in batches, process by process).
    let started = Instant::now();
    let (trace, hops) = loop {
        let answer = jaeger_get(&http, &format!("/api/traces/{trace_id}")).await;
        let last = match &answer {
            Ok(found) => {
                let spans = spans(&found["data"][0]);
                match chain(&spans, &root_span) {
                    Ok(hops) => break (spans.clone(), hops.into_iter().cloned().collect::<Vec<_>>()),
                    Err(missing) => format!("{missing}; the trace has {spans:#?}"),
                }
            }
            Err(error) => error.clone(),
        };
        assert!(
            started.elapsed() < TRACE_TIMEOUT,
            "trace {trace_id} incomplete after {TRACE_TIMEOUT:?}: {last}\nlogs in {}",
            log_dir.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    eprintln!("trace {trace_id}: {} spans, chain of {}", trace.len(), hops.len());
    for hop in &hops {
        let tagged = hop.tags.get("payment_id").map(String::as_str);
        assert_eq!(tagged, Some(payment_id.to_string().as_str()), "{hop:#?} is tagged with its payment");
    }
    // The dispatcher's outcome is in the trace too, under the dispatcher's span.
    assert!(
        trace.iter().any(|s| s.service == "paystream-saga"
            && s.operation == "saga payments.dispatch-outcomes"
            && s.parent.as_deref() == Some(hops[2].id.as_str())),
        "no saga span of the dispatch outcome under {:#?}",
        hops[2]
    );

    // An operator finds it by the payment's id (Jaeger's tag search), as the README says.
    let tags = json!({ "payment_id": payment_id.to_string() }).to_string();
    let search = format!("/api/traces?service=paystream-api&lookback=1h&limit=20&tags={}", url_encode(&tags));
    let found = jaeger_get(&http, &search).await.unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> =
        found["data"].as_array().into_iter().flatten().filter_map(|t| t["traceID"].as_str()).collect();
    assert_eq!(ids, [trace_id.as_str()], "the tag search finds the payment's one trace: {found}");

    fleet.stop().await;
}

/// Percent-encodes a query parameter's value (RFC 3986 unreserved characters stay).
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
