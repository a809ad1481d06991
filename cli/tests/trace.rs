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
//! A second payment, sent at the same time, is one whose callback the simulator never sends (its
//! decisions are pure functions of the seed and the payment id, `decide::Rates::plan`, so the test
//! picks the ids): the saga's timeout decides it, and its trace must hold the timer's firing and
//! the verification that follows:
//!
//! ```text
//! test ─▶ api POST /api/v1/payment ─▶ saga payments.initiated ─▶ timers payments.timers
//!   ─▶ timers fire ─▶ saga payments.timers ─▶ dispatcher payments.provider-requests
//!   ─▶ dispatch GET /v1/charges/{key} (client) ─▶ provider-sim GET /v1/charges/{key}
//! dispatcher payments.provider-requests ─▶ saga payments.dispatch-outcomes ─▶ settlement payments.results
//! ```
//!
//! A third payment comes through the Kafka door, a `PayOrder` on `pay.order` with the test's
//! `traceparent` header: `orders pay.order` continues it, and the payment's chain goes on under it
//! (saga, dispatcher, provider, callback, saga, settlement) through the inbox's outbox row.
//!
//! The processes use the production topics, consumer groups and ports (Debezium's outbox routes
//! to the production topics), like `whole_flow.rs`: it refuses to start while `dev/run` holds the
//! ports, and must not run during a chaos run.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paystream_processors::orders::client::OrdersClient;
use paystream_provider_sim::decide::{Fate, Rates, Verdict};
use paystream_schemas::events::{topics, PayOrder};
use paystream_schemas::money::Amount;
use paystream_schemas::{time, EventCodec};
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
/// than time it out (the first chain under test is the charged one); the payment whose callback is
/// lost is decided by it.
const PAYMENT_TIMEOUT_MS: u64 = 120_000;
/// The simulator's seed, and the share of callbacks it loses: half, so that ids of either fate are
/// found within a few draws.
const SIM_SEED: u64 = 14;
const LOST_RATE: f64 = 0.5;
/// The simulator's verdict delay here, ms.
const DELAY_MS: (u64, u64) = (500, 600);
/// Most payment ids drawn while looking for one of a given fate (at a half each, 64 draws all
/// missing is a 2^-64 event: a broken draw, not bad luck).
const ID_DRAWS_MAX: usize = 64;
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

/// One hop of a trace: its service and operation, and the hop it is the child of (an index into
/// the same list; `None`: the test's own root span).
type Hop = (&'static str, &'static str, Option<usize>);

/// The charged payment's hops, each the child of the one before.
const CHAIN: [Hop; 9] = [
    ("paystream-api", "POST /api/v1/payment", None),
    ("paystream-saga", "saga payments.initiated", Some(0)),
    ("paystream-dispatch", "dispatcher payments.provider-commands", Some(1)),
    ("paystream-dispatch", "POST /v1/charges", Some(2)),
    ("paystream-provider-sim", "POST /v1/charges", Some(3)),
    ("paystream-provider-sim", "provider-sim callbacks", Some(4)),
    ("paystream-api", "POST /api/v1/callback", Some(5)),
    ("paystream-saga", "saga payments.callbacks", Some(6)),
    ("paystream-settle", "settlement payments.results", Some(7)),
];

/// The hops of the payment its timeout decides: the scheduling, the firing, the saga's status
/// query at the provider, its answer and the result.
const TIMEOUT_CHAIN: [Hop; 11] = [
    ("paystream-api", "POST /api/v1/payment", None),
    ("paystream-saga", "saga payments.initiated", Some(0)),
    ("paystream-timers", "timers payments.timers", Some(1)),
    ("paystream-timers", "timers fire", Some(2)),
    ("paystream-saga", "saga payments.timers", Some(3)),
    ("paystream-dispatch", "dispatcher payments.provider-requests", Some(4)),
    ("paystream-dispatch", "GET /v1/charges/{key}", Some(5)),
    ("paystream-provider-sim", "GET /v1/charges/{key}", Some(6)),
    ("paystream-saga", "saga payments.dispatch-outcomes", Some(5)),
    ("paystream-settle", "settlement payments.results", Some(8)),
    // Not a hop of the verdict, but of the trace: the dispatcher's outcome of the charge.
    ("paystream-dispatch", "dispatcher payments.provider-commands", Some(1)),
];

/// The span of each of `hops`, each the child of its parent hop's span (the first of the test's
/// `root_span`); `Err` names the first hop missing or attached elsewhere.
fn chain<'a>(spans: &'a [Span], root_span: &str, hops: &[Hop]) -> Result<Vec<&'a Span>, String> {
    let mut found: Vec<&Span> = Vec::new();
    for (service, operation, parent) in hops {
        let parent = parent.map_or(root_span, |hop| found[hop].id.as_str());
        let Some(span) = spans.iter().find(|s| {
            s.service == *service && s.operation == *operation && s.parent.as_deref() == Some(parent)
        }) else {
            return Err(format!("no span {service} \"{operation}\" that is the child of span {parent}"));
        };
        found.push(span);
    }
    Ok(found)
}

/// The hops of a payment ordered on `pay.order`: the inbox consumer's span, then the charged chain.
const ORDER_CHAIN: [Hop; 9] = [
    ("paystream-orders", "orders pay.order", None),
    ("paystream-saga", "saga payments.initiated", Some(0)),
    ("paystream-dispatch", "dispatcher payments.provider-commands", Some(1)),
    ("paystream-dispatch", "POST /v1/charges", Some(2)),
    ("paystream-provider-sim", "POST /v1/charges", Some(3)),
    ("paystream-provider-sim", "provider-sim callbacks", Some(4)),
    ("paystream-api", "POST /api/v1/callback", Some(5)),
    ("paystream-saga", "saga payments.callbacks", Some(6)),
    ("paystream-settle", "settlement payments.results", Some(7)),
];

/// An order id whose payment (`PayOrder::payment_id_for`) the simulator charges and calls back.
fn order_id_charged(rates: &Rates) -> String {
    (0..ID_DRAWS_MAX)
        .map(|_| testkit::unique("trace-order"))
        .find(|order| {
            let plan = rates.plan(&PayOrder::payment_id_for(order).to_string());
            plan.fate == Fate::Normal && plan.verdict == Verdict::Succeeded
        })
        .unwrap_or_else(|| {
            panic!("no order id of a charged payment in {ID_DRAWS_MAX} draws: the draw is broken")
        })
}

/// A payment id whose charge the simulator (`rates`) charges and whose callback's fate is `fate`.
fn payment_id_with(rates: &Rates, fate: Fate) -> Uuid {
    (0..ID_DRAWS_MAX)
        .map(|_| Uuid::new_v4())
        .find(|id| {
            let plan = rates.plan(&id.to_string());
            plan.fate == fate && plan.verdict == Verdict::Succeeded
        })
        .unwrap_or_else(|| {
            panic!("no payment id of fate {fate:?} in {ID_DRAWS_MAX} draws: the draw is broken")
        })
}

/// The simulator's decisions as `environment` configures it (FlowEnvironment's variables).
fn sim_rates() -> Rates {
    Rates {
        seed: SIM_SEED,
        delay_min: Duration::from_millis(DELAY_MS.0),
        delay_max: Duration::from_millis(DELAY_MS.1),
        success_ratio: 1.0,
        duplicate_rate: 0.0,
        reorder_rate: 0.0,
        lost_rate: LOST_RATE,
        charge_5xx_rate: 0.0,
        charge_5xx_first: 0,
        request_5xx_rate: 0.0,
    }
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

/// The processes' environment: a provider without faults but lost callbacks (each payment one
/// clean chain; which ones are lost is [`sim_rates`]' decision), whose callback comes after the
/// dispatcher's outcome, a payment timeout no slow start reaches, and export to the local Jaeger.
fn environment(state_dir: &Path) -> Vec<(String, String)> {
    let env = FlowEnvironment {
        seed: SIM_SEED,
        delay_ms: DELAY_MS,
        decline_rate: 0.0,
        duplicate_rate: 0.0,
        reorder_rate: 0.0,
        lost_rate: LOST_RATE,
        provider_5xx_rate: 0.0,
        state_dir: Some(state_dir.to_owned()),
    };
    let mut vars: Vec<(String, String)> =
        env.vars().into_iter().filter(|(name, _)| name != "PAYSTREAM_PAYMENT_TIMEOUT_MS").collect();
    vars.push(("PAYSTREAM_PAYMENT_TIMEOUT_MS".into(), PAYMENT_TIMEOUT_MS.to_string()));
    // Status queries answered at once (the simulator's default fails a few with 503).
    vars.push(("PAYSTREAM_PROVIDER_SIM_REQUEST_5XX_RATE".into(), "0".into()));
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
async fn one_payment_is_one_trace_from_the_api_to_settlement_and_through_its_timeout() {
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

    // Two payments under trace contexts of the test's own, at once: one charged and called back,
    // one whose callback is lost, decided by its timeout.
    let rates = sim_rates();
    let charged = Traced::new(payment_id_with(&rates, Fate::Normal));
    let timed_out = Traced::new(payment_id_with(&rates, Fate::Lost));
    for payment in [&charged, &timed_out] {
        let (status, body) = call(
            &http,
            "/api/v1/payment",
            &testkit::bearer_token(user, false),
            json!({
                "paymentId": payment.payment_id,
                "wallet": wallet,
                "amount": 12.5,
                "kind": "mobile",
                "description": "one payment, one trace",
                "timestamp": "20261201-09:00:00:000000",
            }),
            &[("traceparent", payment.traceparent())],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "the payment {}: {body}", payment.payment_id);
    }
    let order_id = order_id_charged(&rates);
    let ordered = Traced::new(PayOrder::payment_id_for(&order_id));
    let command = PayOrder {
        command_id: Uuid::new_v4(),
        order_id,
        user_id: user,
        wallet_id: Some(wallet),
        amount: "12.50".parse::<Amount>().expect("an amount").into(),
        currency: "RUB".into(),
        description: "one order, one trace".into(),
        ordered_at: time::now(),
    };
    let orders = OrdersClient::new(
        &settings.kafka_bootstrap,
        EventCodec::new(&settings.schema_registry_url).expect("a registry codec"),
    )
    .expect("a producer");
    orders.send_traced(topics::PAY_ORDER, &command, &ordered.traceparent()).await.expect("the order sent");

    let status = settled(&db, &mut fleet, charged.payment_id, SETTLE_TIMEOUT, &log_dir).await;
    assert_eq!(status, "COMPLETED", "a provider without faults charges it");
    let (trace, hops) = whole_trace(&http, &charged, &CHAIN, &log_dir).await;
    eprintln!("trace {}: {} spans, chain of {}", charged.trace_id, trace.len(), hops.len());
    assert_tagged(&hops, charged.payment_id);
    // The dispatcher's outcome is in the trace too, under the dispatcher's span.
    assert!(
        trace.iter().any(|s| s.service == "paystream-saga"
            && s.operation == "saga payments.dispatch-outcomes"
            && s.parent.as_deref() == Some(hops[2].id.as_str())),
        "no saga span of the dispatch outcome under {:#?}",
        hops[2]
    );

    // An operator finds it by the payment's id (Jaeger's tag search), as the README says.
    let tags = json!({ "payment_id": charged.payment_id.to_string() }).to_string();
    let search = format!("/api/traces?service=paystream-api&lookback=1h&limit=20&tags={}", url_encode(&tags));
    let found = jaeger_get(&http, &search).await.unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> =
        found["data"].as_array().into_iter().flatten().filter_map(|t| t["traceID"].as_str()).collect();
    assert_eq!(ids, [charged.trace_id.as_str()], "the tag search finds the payment's one trace: {found}");

    // The order: the inbox consumer continues the command's trace, and the payment goes on under it.
    let status = settled(&db, &mut fleet, ordered.payment_id, SETTLE_TIMEOUT, &log_dir).await;
    assert_eq!(status, "COMPLETED", "the ordered payment is charged");
    let (trace, hops) = whole_trace(&http, &ordered, &ORDER_CHAIN, &log_dir).await;
    eprintln!("trace {}: {} spans, order chain of {}", ordered.trace_id, trace.len(), hops.len());

    // The lost callback: the timer fires, the saga asks the provider, which holds the charge.
    let budget = Duration::from_millis(PAYMENT_TIMEOUT_MS) + SETTLE_TIMEOUT;
    let status = settled(&db, &mut fleet, timed_out.payment_id, budget, &log_dir).await;
    assert_eq!(status, "COMPLETED", "the status query finds the charge");
    let (trace, hops) = whole_trace(&http, &timed_out, &TIMEOUT_CHAIN, &log_dir).await;
    eprintln!("trace {}: {} spans, timeout chain of {}", timed_out.trace_id, trace.len(), hops.len());
    assert_tagged(&hops, timed_out.payment_id);
    assert!(
        !trace.iter().any(|s| s.operation == "POST /api/v1/callback"),
        "the simulator lost this payment's callback, yet the trace has one: {trace:#?}"
    );

    fleet.stop().await;
}

/// A payment sent under a trace context of the test's own.
struct Traced {
    payment_id: Uuid,
    trace_id: String,
    root_span: String,
}

impl Traced {
    fn new(payment_id: Uuid) -> Self {
        Self {
            payment_id,
            trace_id: Uuid::new_v4().simple().to_string(),
            root_span: Uuid::new_v4().simple().to_string()[..16].to_owned(),
        }
    }

    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.root_span)
    }
}

/// Waits until `payment_id`'s wallet transaction is no longer pending and returns its status.
async fn settled(
    db: &sqlx::PgPool,
    fleet: &mut Fleet,
    payment_id: Uuid,
    budget: Duration,
    log_dir: &Path,
) -> String {
    let started = Instant::now();
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM wallet_transactions WHERE payment_id = $1")
                .bind(payment_id)
                .fetch_optional(db)
                .await
                .expect("reading the payment's transaction");
        if let Some(status) = status.as_deref().filter(|s| *s != "PENDING") {
            return status.to_owned();
        }
        let dead = fleet.dead();
        assert!(dead.is_empty(), "{dead:?} died; logs in {}", log_dir.display());
        assert!(
            started.elapsed() < budget,
            "payment {payment_id} not settled after {budget:?} (status {status:?}); logs in {}",
            log_dir.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The payment's trace once it holds every one of `hops` (spans arrive in batches, process by
/// process): all its spans, and the span of each hop.
async fn whole_trace(
    http: &reqwest::Client,
    payment: &Traced,
    hops: &[Hop],
    log_dir: &Path,
) -> (Vec<Span>, Vec<Span>) {
    let started = Instant::now();
    loop {
        let answer = jaeger_get(http, &format!("/api/traces/{}", payment.trace_id)).await;
        let last = match &answer {
            Ok(found) => {
                let spans = spans(&found["data"][0]);
                match chain(&spans, &payment.root_span, hops) {
                    Ok(found) => {
                        let found = found.into_iter().cloned().collect();
                        return (spans, found);
                    }
                    Err(missing) => format!("{missing}; the trace has {spans:#?}"),
                }
            }
            Err(error) => error.clone(),
        };
        assert!(
            started.elapsed() < TRACE_TIMEOUT,
            "trace {} of payment {} incomplete after {TRACE_TIMEOUT:?}: {last}\nlogs in {}",
            payment.trace_id,
            payment.payment_id,
            log_dir.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Every span of a payment's chain carries its `payment_id` tag (what the tag search finds).
fn assert_tagged(hops: &[Span], payment_id: Uuid) {
    let expected = payment_id.to_string();
    for hop in hops {
        let tagged = hop.tags.get("payment_id").map(String::as_str);
        assert_eq!(tagged, Some(expected.as_str()), "{hop:#?} is tagged with its payment");
    }
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
