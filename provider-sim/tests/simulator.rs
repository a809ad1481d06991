//! The provider simulator over real HTTP: it is started in-process on port 0, and its
//! callbacks go to a small axum receiver in the test that checks every signature with the
//! API's own verifier (`paystream_api::signature::Verifier`), as `POST /api/v1/callback`
//! does. No Kafka, no database: this is the simulator's own contract.
//!
//! Waits are bounded and poll a condition (the simulator's counters, the receiver's list).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use paystream_api::signature::{self, Verifier};
use paystream_api::timestamp;
use paystream_provider_sim::decide::{Fate, Operation, Verdict};
use paystream_provider_sim::{SimConfig, SimMetrics};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const SECRET: &[u8] = b"simulator-test-secret";
/// Budget for an expected state to be reached.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// A callback as the receiver got it, after its signature was verified.
#[derive(Clone, Debug)]
struct Callback {
    event_id: String,
    body: Value,
}

/// The paystream API's callback endpoint, reduced to verifying and recording.
struct Receiver {
    url: String,
    callbacks: Arc<Mutex<Vec<Callback>>>,
    /// Callbacks whose signature did not verify (answered 401).
    forged: Arc<Mutex<u32>>,
    _task: JoinHandle<()>,
}

#[derive(Clone)]
struct ReceiverState {
    callbacks: Arc<Mutex<Vec<Callback>>>,
    forged: Arc<Mutex<u32>>,
    verifier: Arc<Verifier>,
    /// The receiver answers 503 to this many callbacks first (a flaky API).
    fail_first: Arc<Mutex<u32>>,
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    {
        let mut fail_first = state.fail_first.lock().unwrap();
        if *fail_first > 0 {
            *fail_first -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    if state.verifier.verify(header, &body, Utc::now().timestamp()).is_err() {
        *state.forged.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let event_id = headers.get("x-provider-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body: Value = serde_json::from_slice(&body).expect("a callback is JSON");
    state.callbacks.lock().unwrap().push(Callback { event_id, body });
    StatusCode::OK
}

impl Receiver {
    async fn start(fail_first: u32) -> Self {
        let state = ReceiverState {
            callbacks: Arc::default(),
            forged: Arc::default(),
            verifier: Arc::new(Verifier::new(vec![SECRET.to_vec()])),
            fail_first: Arc::new(Mutex::new(fail_first)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/callback", listener.local_addr().unwrap());
        let router = Router::new().route("/api/v1/callback", post(receive)).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, callbacks: state.callbacks, forged: state.forged, _task: task }
    }

    fn callbacks(&self) -> Vec<Callback> {
        self.callbacks.lock().unwrap().clone()
    }

    fn forged(&self) -> u32 {
        *self.forged.lock().unwrap()
    }
}

/// The simulator, running in this process.
struct Simulator {
    base_url: String,
    metrics: SimMetrics,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), paystream_provider_sim::ServeError>>,
}

impl Simulator {
    async fn start(config: SimConfig) -> Self {
        let metrics = SimMetrics::register(&prometheus::Registry::new()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task =
            tokio::spawn(paystream_provider_sim::serve(listener, config, metrics.clone(), async move {
                let _ = stopped.await;
            }));
        Self { base_url, metrics, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the simulator stops within its drain budget")
            .expect("no panic")
            .expect("a clean stop");
    }

    /// Waits until no charge has callbacks pending.
    async fn wait_idle(&self) {
        wait_until("no callback pending", || self.metrics.pending_total() == 0).await;
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "gave up waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

fn charge_body(payment_id: Uuid, amount: &str) -> Value {
    json!({ "paymentId": payment_id, "amount": amount, "currency": "RUB", "description": "coffee" })
}

async fn charge(sim: &Simulator, key: &str, body: &Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/charges", sim.base_url))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("the simulator answers");
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.json().await.expect("a JSON answer"))
}

async fn show(sim: &Simulator, key: &str) -> Value {
    reqwest::get(format!("{}/v1/charges/{key}", sim.base_url)).await.unwrap().json().await.unwrap()
}

/// The same key with the same body is the same charge: the same 202 answer, and one
/// callback in all; the same key with another body is a 409 and changes nothing. The one
/// callback carries the charge's payment, a valid signature, and the seeds' timestamp.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_is_one_charge_and_one_signed_callback() {
    let receiver = Receiver::start(0).await;
    let sim = Simulator::start(SimConfig::reliable(&receiver.url, SECRET, 1)).await;
    let payment_id = Uuid::new_v4();
    let key = payment_id.to_string();

    let (status, first) = charge(&sim, &key, &charge_body(payment_id, "12.30")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["paymentId"], json!(key));
    let (status, again) = charge(&sim, &key, &charge_body(payment_id, "12.30")).await;
    assert_eq!((status, &again), (StatusCode::ACCEPTED, &first), "a replay gets the first answer");
    let (status, conflict) = charge(&sim, &key, &charge_body(payment_id, "99.00")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["type"], "/problems/idempotency-key-reused");

    wait_until("one callback", || receiver.callbacks().len() == 1).await;
    sim.wait_idle().await;
    let callbacks = receiver.callbacks();
    assert_eq!(callbacks.len(), 1, "one charge, one callback: {callbacks:?}");
    assert_eq!(receiver.forged(), 0, "every callback verifies with the API's verifier");
    let body = &callbacks[0].body;
    assert_eq!(body["paymentId"], json!(key));
    assert_eq!(body["status"], "SUCCEEDED");
    assert!(timestamp::parse(body["timestamp"].as_str().unwrap()).is_some(), "{body}");
    assert_eq!(callbacks[0].event_id, format!("evt_{}_2", payment_id.simple()));
    assert_eq!(sim.metrics.charges_total("accepted"), 1);
    assert_eq!(sim.metrics.charges_total("replayed"), 1);
    assert_eq!(sim.metrics.charges_total("conflict"), 1);
    assert_eq!(sim.metrics.deliveries_total("delivered"), 1);
    let view = show(&sim, &key).await;
    assert_eq!(view["state"], "ACCEPTED");
    assert_eq!(view["attempts"], 3);
    assert_eq!(view["amount"], "12.30", "the first body is the charge");
    assert_eq!(view["callbacksDelivered"], 1);
    sim.stop().await;
}

/// Faults, one at a time, each certain: a duplicate is the same event delivered twice; a
/// reordered pair is the verdict and then a contradicting event timestamped earlier; a
/// lost callback is never sent; a declined charge reports FAILED.
#[tokio::test(flavor = "multi_thread")]
async fn duplicate_reordered_lost_and_failed_callbacks_happen_as_configured() {
    let receiver = Receiver::start(0).await;
    let base = SimConfig::reliable(&receiver.url, SECRET, 2);
    let with = |tweak: &dyn Fn(&mut SimConfig)| {
        let mut config = base.clone();
        tweak(&mut config);
        config
    };

    let duplicate = Simulator::start(with(&|c: &mut SimConfig| c.rates.duplicate_rate = 1.0)).await;
    let id = Uuid::new_v4();
    assert_eq!(charge(&duplicate, &id.to_string(), &charge_body(id, "1.00")).await.0, StatusCode::ACCEPTED);
    duplicate.wait_idle().await;
    let mine = |id: Uuid| -> Vec<Callback> {
        receiver.callbacks().into_iter().filter(|c| c.body["paymentId"] == json!(id.to_string())).collect()
    };
    let twice = mine(id);
    assert_eq!(twice.len(), 2, "{twice:?}");
    assert_eq!(twice[0].event_id, twice[1].event_id, "a redelivery is the same event");
    assert_eq!(twice[0].body, twice[1].body);
    assert_eq!(duplicate.metrics.callbacks_total(Verdict::Succeeded, Fate::Duplicate), 1);
    duplicate.stop().await;

    let reordered = Simulator::start(with(&|c: &mut SimConfig| {
        c.rates.reorder_rate = 1.0;
        // A delay, so the stale event's timestamp (half of it) is clearly earlier.
        c.rates.delay_min = Duration::from_millis(40);
        c.rates.delay_max = Duration::from_millis(40);
    }))
    .await;
    let id = Uuid::new_v4();
    assert_eq!(charge(&reordered, &id.to_string(), &charge_body(id, "1.00")).await.0, StatusCode::ACCEPTED);
    reordered.wait_idle().await;
    let pair = mine(id);
    assert_eq!(pair.len(), 2, "{pair:?}");
    assert_eq!(pair[0].body["status"], "SUCCEEDED", "the verdict arrives first");
    assert_eq!(pair[1].body["status"], "FAILED", "then the stale, contradicting event");
    assert_ne!(pair[0].event_id, pair[1].event_id, "two distinct events");
    let at = |c: &Callback| timestamp::parse(c.body["timestamp"].as_str().unwrap()).unwrap();
    assert!(at(&pair[1]) < at(&pair[0]), "the later arrival was decided earlier: swapped order");
    reordered.stop().await;

    let lost = Simulator::start(with(&|c: &mut SimConfig| c.rates.lost_rate = 1.0)).await;
    let id = Uuid::new_v4();
    assert_eq!(charge(&lost, &id.to_string(), &charge_body(id, "1.00")).await.0, StatusCode::ACCEPTED);
    lost.wait_idle().await;
    assert!(mine(id).is_empty(), "a lost callback is never sent");
    assert_eq!(lost.metrics.callbacks_total(Verdict::Succeeded, Fate::Lost), 1);
    assert_eq!(show(&lost, &id.to_string()).await["fate"], "lost");
    lost.stop().await;

    let declining = Simulator::start(with(&|c: &mut SimConfig| c.rates.success_ratio = 0.0)).await;
    let id = Uuid::new_v4();
    assert_eq!(charge(&declining, &id.to_string(), &charge_body(id, "1.00")).await.0, StatusCode::ACCEPTED);
    declining.wait_idle().await;
    assert_eq!(mine(id)[0].body["status"], "FAILED");
    declining.stop().await;
    assert_eq!(receiver.forged(), 0);
}

/// A 503 takes nothing, so the same key may succeed later; a callback the API answers
/// with 503 is retried until it is delivered; invalid charges are 4xx and not remembered.
#[tokio::test(flavor = "multi_thread")]
async fn outages_on_either_side_are_retried_and_invalid_charges_refused() {
    let receiver = Receiver::start(2).await;
    let mut config = SimConfig::reliable(&receiver.url, SECRET, 3);
    config.rates.charge_5xx_first = 2;
    let sim = Simulator::start(config).await;
    let id = Uuid::new_v4();
    let key = id.to_string();
    for _ in 0..2 {
        let (status, problem) = charge(&sim, &key, &charge_body(id, "5.00")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    }
    assert_eq!(show(&sim, &key).await["state"], "REFUSED");
    assert_eq!(charge(&sim, &key, &charge_body(id, "5.00")).await.0, StatusCode::ACCEPTED);
    sim.wait_idle().await;
    assert_eq!(receiver.callbacks().len(), 1, "delivered once, after the API's two 503s");
    assert_eq!(sim.metrics.deliveries_total("delivered"), 1);
    assert_eq!(sim.metrics.charges_total("unavailable"), 2);

    let other = Uuid::new_v4();
    let (status, problem) = charge(&sim, &other.to_string(), &charge_body(other, "5.5")).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/problems/invalid-amount"))
    );
    let (status, _) = charge(&sim, &Uuid::new_v4().to_string(), &charge_body(other, "5.50")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the key must be the paymentId");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/charges", sim.base_url))
        .json(&charge_body(other, "5.50"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400, "no Idempotency-Key");
    assert_eq!(sim.metrics.charges_total("invalid"), 3);
    assert_eq!(
        reqwest::get(format!("{}/v1/charges/{other}", sim.base_url)).await.unwrap().status().as_u16(),
        404,
        "refused requests are not remembered"
    );
    sim.stop().await;
}

/// On shutdown a callback that is due within the drain budget is still delivered before
/// `serve` returns.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_pending_callbacks() {
    let receiver = Receiver::start(0).await;
    let mut config = SimConfig::reliable(&receiver.url, SECRET, 4);
    config.rates.delay_min = Duration::from_millis(300);
    config.rates.delay_max = Duration::from_millis(300);
    let sim = Simulator::start(config).await;
    let id = Uuid::new_v4();
    assert_eq!(charge(&sim, &id.to_string(), &charge_body(id, "7.00")).await.0, StatusCode::ACCEPTED);
    assert_eq!(sim.metrics.pending_total(), 1);
    let metrics = sim.metrics.clone();
    sim.stop().await;
    assert_eq!(receiver.callbacks().len(), 1, "the pending callback went out before serve returned");
    assert_eq!(metrics.deliveries_total("delivered"), 1);
    assert_eq!(metrics.pending_total(), 0);
}

async fn act(sim: &Simulator, key: &str, action: &str, body: Option<&Value>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().post(format!("{}/v1/charges/{key}/{action}", sim.base_url));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the simulator answers");
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.json().await.expect("a JSON answer"))
}

async fn status(sim: &Simulator, key: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{}/v1/charges/{key}", sim.base_url)).await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.json().await.unwrap())
}

/// Waits until `key`'s charge has left PENDING, and returns its state.
async fn decided(sim: &Simulator, key: &str) -> Value {
    let started = Instant::now();
    loop {
        let (_, view) = status(sim, key).await;
        if view["charge"] != "PENDING" {
            return view;
        }
        assert!(started.elapsed() < WAIT, "{key} still pending after {WAIT:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// The status says charged / not charged / pending; a void makes an uncharged key unchargeable
/// for good (a later charge gets a definite 410) and is refused on a charged key; a refund gives
/// a charged key back; each is idempotent.
#[tokio::test(flavor = "multi_thread")]
async fn status_void_and_refund_are_definite_and_idempotent() {
    let receiver = Receiver::start(0).await;
    let mut config = SimConfig::reliable(&receiver.url, SECRET, 5);
    config.rates.delay_min = Duration::from_millis(300);
    config.rates.delay_max = Duration::from_millis(300);
    let sim = Simulator::start(config).await;

    // Never charged: 404 NONE; voided (twice, the same answer); a charge is then refused for good.
    let voided = Uuid::new_v4();
    let key = voided.to_string();
    let (code, view) = status(&sim, &key).await;
    assert_eq!(
        (code, &view["charge"], &view["charged"]),
        (StatusCode::NOT_FOUND, &json!("NONE"), &json!(false))
    );
    let first = act(&sim, &key, "void", None).await;
    assert_eq!((first.0, &first.1["charge"]), (StatusCode::OK, &json!("VOIDED")), "{:?}", first.1);
    assert_eq!(act(&sim, &key, "void", None).await, first, "a void again: the same answer");
    for _ in 0..2 {
        let (code, refused) = charge(&sim, &key, &charge_body(voided, "3.00")).await;
        assert_eq!((code, refused["type"].as_str()), (StatusCode::GONE, Some("/problems/charge-voided")));
    }
    assert_eq!(status(&sim, &key).await.1["charge"], "VOIDED");
    let (code, nothing) = act(&sim, &key, "refund", None).await;
    assert_eq!((code, nothing["type"].as_str()), (StatusCode::CONFLICT, Some("/problems/not-charged")));
    assert_eq!(sim.metrics.charges_total("voided"), 2);
    assert_eq!(sim.metrics.charges_total("accepted"), 0, "nothing was ever taken for the voided key");

    // Charged: pending first (a void is refused as pending), then charged (refused as already
    // charged); refunded (twice, the same answer).
    let charged = Uuid::new_v4();
    let key = charged.to_string();
    assert_eq!(charge(&sim, &key, &charge_body(charged, "4.20")).await.0, StatusCode::ACCEPTED);
    assert_eq!(status(&sim, &key).await.1["charge"], "PENDING");
    let (code, pending) = act(&sim, &key, "void", None).await;
    assert_eq!((code, pending["type"].as_str()), (StatusCode::CONFLICT, Some("/problems/charge-pending")));
    let view = decided(&sim, &key).await;
    assert_eq!((&view["charge"], &view["charged"]), (&json!("SUCCEEDED"), &json!(true)), "{view}");
    let (code, refused) = act(&sim, &key, "void", None).await;
    assert_eq!((code, refused["type"].as_str()), (StatusCode::CONFLICT, Some("/problems/already-charged")));
    assert_eq!(refused["charged"], true);
    let mismatch = act(&sim, &key, "refund", Some(&json!({"amount": "1.00", "currency": "RUB"}))).await;
    assert_eq!(mismatch.0, StatusCode::UNPROCESSABLE_ENTITY, "a refund is of the whole charge");
    let whole = json!({"amount": "4.20", "currency": "RUB"});
    let refunded = act(&sim, &key, "refund", Some(&whole)).await;
    assert_eq!((refunded.0, &refunded.1["charge"]), (StatusCode::OK, &json!("REFUNDED")));
    assert_eq!(act(&sim, &key, "refund", Some(&whole)).await, refunded, "a refund again: the same answer");
    let view = status(&sim, &key).await.1;
    assert_eq!(
        (&view["charge"], &view["charged"], &view["refunded"]),
        (&json!("REFUNDED"), &json!(false), &json!(true))
    );

    // Declined: nothing charged; a void answers so, and the key stays unchargeable (a replay).
    let declining = {
        let mut config = SimConfig::reliable(&receiver.url, SECRET, 6);
        config.rates.success_ratio = 0.0;
        Simulator::start(config).await
    };
    let declined = Uuid::new_v4();
    let key = declined.to_string();
    assert_eq!(charge(&declining, &key, &charge_body(declined, "1.00")).await.0, StatusCode::ACCEPTED);
    assert_eq!(decided(&declining, &key).await["charge"], "DECLINED");
    let (code, view) = act(&declining, &key, "void", None).await;
    assert_eq!((code, &view["charge"]), (StatusCode::OK, &json!("DECLINED")));
    sim.wait_idle().await;
    declining.wait_idle().await;
    let voids = |found| sim.metrics.requests_total(Operation::Void, found);
    assert_eq!((voids("NONE"), voids("VOIDED"), voids("PENDING"), voids("SUCCEEDED")), (1, 1, 1, 1));
    sim.stop().await;
    declining.stop().await;
}

/// Status queries, voids and refunds fail at their seeded 5xx rate without changing anything.
#[tokio::test(flavor = "multi_thread")]
async fn request_faults_answer_503_and_change_nothing() {
    let receiver = Receiver::start(0).await;
    let mut config = SimConfig::reliable(&receiver.url, SECRET, 7);
    config.rates.request_5xx_rate = 1.0;
    let sim = Simulator::start(config).await;
    let id = Uuid::new_v4();
    let key = id.to_string();
    for action in ["void", "refund"] {
        let (code, problem) = act(&sim, &key, action, None).await;
        assert_eq!(
            (code, problem["type"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("/problems/unavailable"))
        );
    }
    assert_eq!(status(&sim, &key).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        charge(&sim, &key, &charge_body(id, "2.00")).await.0,
        StatusCode::ACCEPTED,
        "the void took nothing"
    );
    sim.wait_idle().await;
    assert_eq!(receiver.callbacks().len(), 1);
    sim.stop().await;
}
