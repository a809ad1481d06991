//! The API's handlers on 127.0.0.1:0 against the real wallet database and registry, for the
//! tests of a person's clients (`paystream pay`, Swagger UI in a browser). Their payments'
//! `PaymentInitiated` go to a topic of the test's own (the API's outbox topics are settings), so
//! no saga takes them up.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use paystream_api::auth::{self, Authenticator, Claims};
use paystream_api::metrics::ApiMetrics;
use paystream_api::{server, AppState, OutboxTopics};
use paystream_schemas::EventCodec;
use paystream_stack::kafka::TopicSpec;
use paystream_stack::testkit;
use paystream_stack::StackSettings;
use tokio::sync::oneshot;
use uuid::Uuid;

/// Lifetime of the tests' tokens.
const TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

/// The HS256 secret the test API verifies tokens with (the binary mints with it in dev mode).
pub const SECRET: &str = "pay-cli-test-secret-of-at-least-thirty-two-bytes";

/// A running test API; stops when dropped. Its topic is left in place on purpose: Debezium
/// routes the outbox rows to it some time after the API committed them, and an outbox connector
/// whose topic was deleted under it waits for that topic for good (auto-creation is off),
/// holding up every payment behind it — a deleted topic once stalled the wallet outbox.
pub struct Api {
    pub url: String,
    pub settings: StackSettings,
    pub topic: String,
    _stop: oneshot::Sender<()>,
}

/// Starts the API on 127.0.0.1:0, its `PaymentInitiated` routed to a new topic of its own.
pub async fn api() -> Api {
    let settings = StackSettings::from_env();
    let topic = testkit::unique("it.client.initiated");
    // The outbox connector routes to this topic: it must exist before a row names it.
    paystream_stack::kafka::ensure_topics(&settings.kafka_bootstrap, &[TopicSpec::new(topic.clone(), 1)])
        .await
        .expect("the test's topic");
    let connect = |url: String| async move {
        paystream_stack::postgres::connect(&url, testkit::STACK_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let state = AppState {
        db: testkit::wallet_db(&settings).await,
        ledger: connect(settings.ledger_db_url.clone()).await,
        query: connect(settings.query_db_url.clone()).await,
        callbacks: Arc::new(paystream_api::signature::Verifier::new(vec![b"unused".to_vec()])),
        codec: Arc::new(EventCodec::new(&settings.schema_registry_url).unwrap()),
        auth: Arc::new(Authenticator::hs256(SECRET.as_bytes())),
        metrics: Arc::new(ApiMetrics::new()),
        topics: OutboxTopics { initiated: topic.clone(), ..OutboxTopics::default() },
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Api { url, settings, topic, _stop: stop }
}

/// A user's token (an operator's with `operator`), under the test API's secret.
pub fn token(user: Uuid, operator: bool) -> String {
    let claims =
        if operator { Claims::operator(user, TOKEN_LIFETIME) } else { Claims::user(user, TOKEN_LIFETIME) };
    auth::mint_hs256(SECRET.as_bytes(), &claims).expect("a token")
}
