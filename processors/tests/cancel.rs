//! The owner's cancel of a payment (issue 16) through the real flow: the API's handlers on
//! 127.0.0.1:0 against the wallet database, the real `wallet-outbox` connector (Debezium), Kafka
//! and the registry, the saga on the real runtime, and settlement. The provider's side is played
//! by the test: it answers the saga's void as the dispatcher would report the provider's answer
//! (VOIDED, or CHARGED when the void is refused as already charged); the dispatcher's and the
//! simulator's void path is tested in `saga_verify.rs` and `dispatcher.rs`.
//!
//! The production saga and settlement may be running (dev/run, the chaos run), so the API here
//! routes its outbox rows (`aggregatetype`) to this test's own topics: every hop is the real one,
//! and nothing reaches the production flow.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{callback, Stack};
use paystream_api::auth::{self, Authenticator, Claims};
use paystream_api::metrics::ApiMetrics;
use paystream_api::{server, AppState, OutboxTopics};
use paystream_processors::settlement::{self, SettlementConfig, SettlementError, SettlementMetrics};
use paystream_schemas::events::{
    DispatchOutcome, DispatchResult, PaymentCancelRequested, PaymentResult, PaymentResultStatus,
    ProviderAction, ProviderRequest, ProviderStatus,
};
use paystream_stack::testkit;
use paystream_topology::ShutdownHandle;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const SECRET: &[u8] = b"cancel-test-secret-of-at-least-thirty-two-bytes";
/// The saga's payment timeout: longer than the test, so no timer decides.
const SAGA_PAYMENT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the test waits for an outcome to show in the API's answers.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(90);
/// The pause between two looks at a condition being awaited.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a component may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

struct Flow {
    stack: Stack,
    base_url: String,
    http: reqwest::Client,
    _api: oneshot::Sender<()>,
    settlement: (ShutdownHandle, JoinHandle<Result<(), SettlementError>>),
}

impl Flow {
    async fn start() -> Self {
        let stack = Stack::new().await;
        let settings = stack.settings.clone();
        let db = testkit::wallet_db(&settings).await;
        let connect = |url: String| async move {
            paystream_stack::postgres::connect(&url, testkit::STACK_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let ledger = connect(settings.ledger_db_url.clone()).await;
        let query = connect(settings.query_db_url.clone()).await;
        let state = AppState {
            db,
            ledger,
            query,
            callbacks: Arc::new(paystream_api::signature::Verifier::new(vec![b"unused".to_vec()])),
            codec: Arc::new(paystream_schemas::EventCodec::new(&settings.schema_registry_url).unwrap()),
            auth: Arc::new(Authenticator::hs256(SECRET)),
            metrics: Arc::new(ApiMetrics::new()),
            topics: OutboxTopics {
                initiated: stack.topics.initiated.clone(),
                cancel_requests: stack.topics.cancel_requests.clone(),
            },
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (api, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, state, async {
            let _ = stopped.await;
        }));

        let metrics = SettlementMetrics::register(&prometheus::Registry::new()).unwrap();
        let config = SettlementConfig {
            results_topic: stack.topics.results.clone(),
            dlq_topic: stack.dlq(),
            group_id: testkit::unique("it-cancel-settlement"),
            ..SettlementConfig::new(&stack.settings, metrics)
        };
        let stop = ShutdownHandle::new();
        let task = tokio::spawn(settlement::run(config, stop.clone()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { stack, base_url, http, _api: api, settlement: (stop, task) }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Uuid,
        body: Option<Value>,
    ) -> (StatusCode, Value, Option<String>) {
        let token = auth::mint_hs256(SECRET, &Claims::user(user, Duration::from_secs(600))).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.base_url)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let location = response.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, location)
    }

    /// A new user with a RUB wallet holding 100.00.
    async fn user_with_wallet(&self) -> (Uuid, Uuid) {
        let user = Uuid::new_v4();
        let (status, body, _) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/accounts",
                user,
                Some(json!({"name": "cancel test", "currency": "RUB"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let wallet: Uuid = body["walletId"].as_str().unwrap().parse().unwrap();
        let operator =
            auth::mint_hs256(SECRET, &Claims::operator(Uuid::new_v4(), Duration::from_secs(600))).unwrap();
        let response = self
            .http
            .post(format!("{}/api/v1/accounts/{wallet}/deposits", self.base_url))
            .bearer_auth(operator)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .body(r#"{"amount": 100.00}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        (user, wallet)
    }

    /// Pays 12.50 from `wallet`; the paymentId.
    async fn pay(&self, user: Uuid, wallet: Uuid) -> Uuid {
        let payment_id = Uuid::new_v4();
        let body = json!({"paymentId": payment_id, "wallet": wallet, "amount": 12.50, "kind": "mobile",
                          "description": "cancel test", "timestamp": "20261201-10:00:00:000000"});
        let (status, answer, _) = self.call(reqwest::Method::POST, "/api/v1/payment", user, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        payment_id
    }

    async fn cancel(&self, user: Uuid, payment_id: Uuid) -> (StatusCode, Value, Option<String>) {
        self.call(reqwest::Method::POST, &format!("/api/v1/payments/{payment_id}/cancel"), user, None).await
    }

    /// The wallet's (available, reserved), as the database prints them.
    async fn balance(&self, wallet: Uuid) -> (String, String) {
        let db = testkit::wallet_db(&self.stack.settings).await;
        sqlx::query_as("SELECT available::text, reserved::text FROM wallets WHERE wallet_id = $1")
            .bind(wallet)
            .fetch_one(&db)
            .await
            .unwrap()
    }

    /// The saga's `n`-th provider request for `payment_id`.
    async fn request(&self, payment_id: Uuid, n: usize) -> ProviderRequest {
        let issued = self.stack.records_for(&self.stack.topics.requests, payment_id, n);
        assert!(issued.len() >= n, "request {n} of {payment_id} was not issued: {} seen", issued.len());
        self.stack.codec.decode::<ProviderRequest>(issued[n - 1].value.as_deref().unwrap()).await.unwrap()
    }

    /// The dispatcher's report of the provider's answer to `request` (or of the charge).
    async fn report(&self, payment_id: Uuid, command_id: Uuid, outcome: DispatchResult) {
        let outcome = DispatchOutcome {
            command_id,
            payment_id,
            outcome,
            attempts: 1,
            detail: format!("provider: {}", outcome.symbol()),
            decided_at: Utc::now(),
        };
        self.stack.send(&self.stack.topics.outcomes, payment_id, &outcome).await;
    }

    /// Waits (bounded) until `GET …/cancel` answers something other than PENDING.
    async fn settled_cancel(&self, user: Uuid, payment_id: Uuid) -> Value {
        let started = Instant::now();
        loop {
            let (status, body, _) = self
                .call(reqwest::Method::GET, &format!("/api/v1/payments/{payment_id}/cancel"), user, None)
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["status"] != "PENDING" {
                return body;
            }
            assert!(
                started.elapsed() < OUTCOME_TIMEOUT,
                "the cancel of {payment_id} is still pending after {OUTCOME_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits (bounded) until the payment's row is settled; its result status.
    async fn settled_row(&self, payment_id: Uuid) -> String {
        let db = testkit::wallet_db(&self.stack.settings).await;
        let started = Instant::now();
        loop {
            let status: Option<String> =
                sqlx::query_scalar("SELECT result_status FROM wallet_transactions WHERE payment_id = $1")
                    .bind(payment_id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            if let Some(status) = status {
                return status;
            }
            assert!(
                started.elapsed() < OUTCOME_TIMEOUT,
                "payment {payment_id} not settled after {OUTCOME_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn results(&self, payment_id: Uuid) -> Vec<PaymentResult> {
        self.stack.results_for(payment_id, 1).await
    }

    async fn stop(self) {
        let (stop, task) = self.settlement;
        stop.request();
        tokio::time::timeout(STOP_TIMEOUT, task)
            .await
            .expect("settlement stops")
            .expect("no panic")
            .expect("a clean stop");
        self.stack.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_cancel_through_the_outbox_the_saga_and_settlement() {
    let flow = Flow::start().await;
    let _saga = flow.stack.start_saga_with(SAGA_PAYMENT_TIMEOUT).await;
    let (user, wallet) = flow.user_with_wallet().await;

    // 1. Cancelled while NEW: the charge never reached the provider; the void makes the key
    //    unchargeable, the payment ends CANCELED and its reservation returns.
    let new = flow.pay(user, wallet).await;
    let (status, body, _) = flow.cancel(Uuid::new_v4(), new).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("/problems/not-found")),
        "someone else's: {body}"
    );
    let (status, first, location) = flow.cancel(user, new).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(location.as_deref(), Some(format!("/api/v1/payments/{new}/cancel").as_str()));
    assert_eq!(first["status"], "PENDING");
    let (status, again, _) = flow.cancel(user, new).await;
    assert_eq!((status, &again), (StatusCode::ACCEPTED, &first), "the same cancel twice answers the same");
    let void = flow.request(new, 1).await;
    assert!(matches!(void.action, ProviderAction::Void { .. }), "{void:?}");
    flow.report(new, void.request_id, DispatchResult::Voided).await;
    // The charge that reaches the provider after the void is refused for good (410: REJECTED).
    flow.report(new, paystream_processors::saga::processor::charge_command_id(new), DispatchResult::Rejected)
        .await;
    let done = flow.settled_cancel(user, new).await;
    assert_eq!(
        (done["status"].as_str(), done["paymentStatus"].as_str()),
        (Some("CANCELED"), Some("CANCELED")),
        "{done}"
    );
    let (status, body, _) = flow.cancel(user, new).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("CANCELED")), "{body}");
    assert_eq!(flow.balance(wallet).await, ("100.00".into(), "0.00".into()), "the reservation is released");
    let results = flow.results(new).await;
    assert_eq!(
        results.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![PaymentResultStatus::Canceled],
        "one result"
    );
    let cancels = flow.stack.records_for(&flow.stack.topics.cancel_requests, new, 1);
    assert_eq!(cancels.len(), 1, "one PaymentCancelRequested through the outbox, however often asked");
    let event = flow
        .stack
        .codec
        .decode::<PaymentCancelRequested>(cancels[0].value.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!((event.payment_id, event.user_id), (new, user));

    // 2. Cancelled after the charge, which the provider had already made: the void is refused
    //    (CHARGED), the payment completes, the cancel is refused with 409.
    let charged = flow.pay(user, wallet).await;
    flow.report(
        charged,
        paystream_processors::saga::processor::charge_command_id(charged),
        DispatchResult::Accepted,
    )
    .await;
    assert_eq!(flow.cancel(user, charged).await.0, StatusCode::ACCEPTED);
    let void = flow.request(charged, 1).await;
    flow.report(charged, void.request_id, DispatchResult::Charged).await;
    let done = flow.settled_cancel(user, charged).await;
    assert_eq!(
        (done["status"].as_str(), done["paymentStatus"].as_str()),
        (Some("REFUSED"), Some("COMPLETED")),
        "{done}"
    );
    let (status, body, _) = flow.cancel(user, charged).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/cancel-refused")),
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains("already charged"), "{body}");
    assert_eq!(flow.balance(wallet).await, ("87.50".into(), "0.00".into()), "the charged payment is paid");

    // 3. Cancelled after the charge was sent, the provider holding none (declined, or the void
    //    won): VOIDED, CANCELED.
    let out = flow.pay(user, wallet).await;
    flow.report(out, paystream_processors::saga::processor::charge_command_id(out), DispatchResult::Accepted)
        .await;
    assert_eq!(flow.cancel(user, out).await.0, StatusCode::ACCEPTED);
    let void = flow.request(out, 1).await;
    flow.report(out, void.request_id, DispatchResult::Voided).await;
    assert_eq!(flow.settled_cancel(user, out).await["status"], "CANCELED");
    assert_eq!(flow.balance(wallet).await, ("87.50".into(), "0.00".into()));

    // 4. A terminal payment (completed by the provider's callback): 409, and nothing recorded.
    let completed = flow.pay(user, wallet).await;
    flow.stack
        .send(&flow.stack.topics.callbacks, completed, &callback(completed, ProviderStatus::Succeeded))
        .await;
    assert_eq!(flow.settled_row(completed).await, "COMPLETED");
    let (status, body, _) = flow.cancel(user, completed).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/cancel-refused")),
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains("already COMPLETED"), "{body}");
    let (status, _, _) =
        flow.call(reqwest::Method::GET, &format!("/api/v1/payments/{completed}/cancel"), user, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no cancel was recorded for a terminal payment");
    assert_eq!(flow.balance(wallet).await, ("75.00".into(), "0.00".into()));

    flow.stop().await;
}
