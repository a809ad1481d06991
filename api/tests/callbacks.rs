//! `POST /api/v1/callback` against the real ledger database, registry and the
//! `ledger-outbox` Debezium connector. Unauthentic and malformed callbacks are in `hostile.rs`.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use paystream_api::signature;
use paystream_schemas::events::{ProviderCallbackReceived, ProviderStatus};
use paystream_schemas::{Event, EventCodec};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn callback_body(payment_id: Uuid, status: &str) -> String {
    format!(
        r#"{{"paymentId":"{payment_id}","status":"{status}","description":"Одобрено банком","timestamp":"20261128-05:00:00:000001"}}"#
    )
}

/// A callback body as the provider simulator sends it: the event id inside, signed with it.
fn callback_with_id(payment_id: Uuid, status: &str, event_id: &str) -> String {
    format!(
        r#"{{"paymentId":"{payment_id}","status":"{status}","description":"Одобрено банком","timestamp":"20261128-05:00:00:000001","eventId":"{event_id}"}}"#
    )
}

async fn post(api: &TestApi, body: &str, signature_header: Option<String>) -> (StatusCode, Value) {
    post_with_event_header(api, body, signature_header, None).await
}

/// `post` with an `X-Provider-Event-Id` header, which nobody signs.
async fn post_with_event_header(
    api: &TestApi,
    body: &str,
    signature_header: Option<String>,
    event_id_header: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = api
        .http
        .post(format!("{}/api/v1/callback", api.base_url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(header) = signature_header {
        request = request.header("Paystream-Signature", header);
    }
    if let Some(id) = event_id_header {
        request = request.header("X-Provider-Event-Id", id);
    }
    read(request.send().await.unwrap()).await
}

/// The `(provider_event_id, status, disposition)` rows of a payment, oldest first.
async fn dispositions(api: &TestApi, payment_id: Uuid) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT provider_event_id, status, disposition FROM provider_callbacks
         WHERE payment_id = $1 ORDER BY received_at, provider_event_id",
    )
    .bind(payment_id)
    .fetch_all(&api.ledger)
    .await
    .unwrap()
}

/// The `ProviderCallbackReceived` events keyed `payment_id` that reach payments.callbacks
/// (`consumer` from `tail`), collected for 3 s after the first.
async fn forwarded(
    api: &TestApi,
    consumer: rdkafka::consumer::BaseConsumer,
    payment_id: Uuid,
) -> Vec<ProviderCallbackReceived> {
    let key = payment_id.to_string();
    let records =
        tokio::task::spawn_blocking(move || records_with_key(&consumer, &key, Duration::from_secs(3)))
            .await
            .unwrap();
    let codec = EventCodec::new(&api.settings.schema_registry_url).unwrap();
    let mut events = Vec::new();
    for (value, _) in records {
        events.push(codec.decode(&value).await.unwrap());
    }
    events
}

fn signed(body: &str, skew_s: i64) -> Option<String> {
    Some(signature::sign(CALLBACK_SECRET, Utc::now().timestamp() + skew_s, body.as_bytes()))
}

async fn rows_for(api: &TestApi, payment_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM provider_callbacks WHERE payment_id = $1")
        .bind(payment_id)
        .fetch_one(&api.ledger)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_callback_is_recorded_once_and_reaches_payments_callbacks() {
    let api = TestApi::start().await;
    let consumer = tail(&api.settings.kafka_bootstrap, ProviderCallbackReceived::TOPIC);
    let payment_id = Uuid::new_v4();
    let body = callback_body(payment_id, "SUCCEEDED");

    let (status, first) = post(&api, &body, signed(&body, 0)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["paymentId"], json!(payment_id.to_string()));
    // The provider delivers it again, signed anew a little later: the same answer, no new row.
    let (status, again) = post(&api, &body, signed(&body, 2)).await;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    assert_eq!(rows_for(&api, payment_id).await, 1);

    let key = payment_id.to_string();
    let records =
        tokio::task::spawn_blocking(move || records_with_key(&consumer, &key, Duration::from_secs(3)))
            .await
            .unwrap();
    assert_eq!(records.len(), 1, "one ProviderCallbackReceived for one callback, however often delivered");
    let codec = EventCodec::new(&api.settings.schema_registry_url).unwrap();
    let event: ProviderCallbackReceived = codec.decode(&records[0].0).await.unwrap();
    assert_eq!(event.payment_id, payment_id);
    assert_eq!(event.status, ProviderStatus::Succeeded);
    assert_eq!(event.description, "Одобрено банком");
    assert!(event.provider_event_id.starts_with("sha256:"), "{}", event.provider_event_id);
    assert_eq!(paystream_api::timestamp::format(event.provider_timestamp), "20261128-05:00:00:000001");
    let header = records[0].1.iter().find(|(k, _)| k == "id").map(|(_, v)| v.clone());
    assert_eq!(header, Some(event.event_id.to_string().into_bytes()));
}

/// Scenario 4: a callback captured on the wire and replayed within the signature's ±300 s
/// with a new X-Provider-Event-Id is the same callback (its id is the signed one), so it is
/// answered like the original and forwards nothing; an authentic redelivery, signed anew,
/// gets the first answer too.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_with_a_new_unsigned_event_id_is_deduplicated() {
    let api = TestApi::start().await;
    let consumer = tail(&api.settings.kafka_bootstrap, ProviderCallbackReceived::TOPIC);
    let payment_id = Uuid::new_v4();
    let event_id = format!("evt_{}_2", payment_id.simple());
    let body = callback_with_id(payment_id, "SUCCEEDED", &event_id);
    let captured = signed(&body, 0);

    let (status, first) = post_with_event_header(&api, &body, captured.clone(), Some(&event_id)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    for forged_id in ["evt-replayed-1", "evt-replayed-2"] {
        let (status, again) = post_with_event_header(&api, &body, captured.clone(), Some(forged_id)).await;
        assert_eq!((status, &again), (StatusCode::OK, &first), "replay with {forged_id}");
    }
    let (status, again) = post(&api, &body, captured.clone()).await;
    assert_eq!((status, &again), (StatusCode::OK, &first), "replay without the header");
    let (status, again) = post_with_event_header(&api, &body, signed(&body, 2), Some(&event_id)).await;
    assert_eq!((status, &again), (StatusCode::OK, &first), "authentic redelivery, signed anew");
    // The id cannot be changed in the body either: the signature covers it.
    let renamed = callback_with_id(payment_id, "SUCCEEDED", "evt-replayed-3");
    let (status, problem) = post(&api, &renamed, captured).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");

    assert_eq!(
        dispositions(&api, payment_id).await,
        vec![(event_id.clone(), "SUCCEEDED".into(), "forwarded".into())]
    );
    let events = forwarded(&api, consumer, payment_id).await;
    assert_eq!(events.len(), 1, "one ProviderCallbackReceived however often replayed: {events:?}");
    assert_eq!(events[0].provider_event_id, event_id);
}

/// Scenario 4: an attacker replays a captured callback of payment A under the predictable id
/// of payment B's coming callback; B's authentic callback is still a 200 and reaches the
/// saga. Ids are per payment, so even a provider reusing one id for two payments is fine.
#[tokio::test(flavor = "multi_thread")]
async fn a_squatted_event_id_does_not_make_the_authentic_callback_fail() {
    let api = TestApi::start().await;
    let consumer_b = tail(&api.settings.kafka_bootstrap, ProviderCallbackReceived::TOPIC);
    let consumer_c = tail(&api.settings.kafka_bootstrap, ProviderCallbackReceived::TOPIC);
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let a_event = format!("evt_{}_2", a.simple());
    let b_event = format!("evt_{}_2", b.simple());
    let a_body = callback_with_id(a, "SUCCEEDED", &a_event);
    let a_signature = signed(&a_body, 0);
    let (status, answer) = post_with_event_header(&api, &a_body, a_signature.clone(), Some(&a_event)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = post_with_event_header(&api, &a_body, a_signature, Some(&b_event)).await;
    assert_eq!(status, StatusCode::OK, "the squatting replay is just a redelivery of A: {answer}");

    let b_body = callback_with_id(b, "FAILED", &b_event);
    let (status, answer) = post_with_event_header(&api, &b_body, signed(&b_body, 0), Some(&b_event)).await;
    assert_eq!(status, StatusCode::OK, "B's authentic callback: {answer}");
    assert_eq!(answer["paymentId"], json!(b.to_string()));
    let c_body = callback_with_id(c, "SUCCEEDED", &a_event);
    let (status, answer) = post(&api, &c_body, signed(&c_body, 0)).await;
    assert_eq!(status, StatusCode::OK, "C reuses A's event id: {answer}");

    assert_eq!(dispositions(&api, b).await, vec![(b_event.clone(), "FAILED".into(), "forwarded".into())]);
    let b_events = forwarded(&api, consumer_b, b).await;
    assert_eq!(b_events.len(), 1, "{b_events:?}");
    assert_eq!(
        (b_events[0].status, b_events[0].provider_event_id.as_str()),
        (ProviderStatus::Failed, b_event.as_str())
    );
    let c_events = forwarded(&api, consumer_c, c).await;
    assert_eq!(c_events.len(), 1, "{c_events:?}");
    assert_eq!(c_events[0].provider_event_id, a_event);
}

/// The first verdict wins: later events of the same payment (here before the payment even
/// exists, as the saga's early-callback path sees them) are answered 200 and recorded as
/// duplicate or conflict, but only the first reaches payments.callbacks.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_payments_first_verdict_reaches_payments_callbacks() {
    let api = TestApi::start().await;
    let consumer = tail(&api.settings.kafka_bootstrap, ProviderCallbackReceived::TOPIC);
    let payment_id = Uuid::new_v4();
    let event = |n: u32| format!("evt_{}_{n}", payment_id.simple());
    let bodies = [
        callback_with_id(payment_id, "SUCCEEDED", &event(2)),
        callback_with_id(payment_id, "FAILED", &event(1)),
        callback_with_id(payment_id, "SUCCEEDED", &event(3)),
    ];
    let mut answers = Vec::new();
    for body in &bodies {
        let (status, answer) = post(&api, body, signed(body, 0)).await;
        assert_eq!(status, StatusCode::OK, "{body}: {answer}");
        answers.push(answer);
    }
    let (status, again) = post(&api, &bodies[1], signed(&bodies[1], 1)).await;
    assert_eq!((status, &again), (StatusCode::OK, &answers[1]), "a conflicting event's redelivery");

    assert_eq!(
        dispositions(&api, payment_id).await,
        vec![
            (event(2), "SUCCEEDED".into(), "forwarded".into()),
            (event(1), "FAILED".into(), "conflict".into()),
            (event(3), "SUCCEEDED".into(), "duplicate".into()),
        ]
    );
    let events = forwarded(&api, consumer, payment_id).await;
    assert_eq!(events.len(), 1, "one verdict per payment: {events:?}");
    assert_eq!(
        (events[0].status, events[0].provider_event_id.clone()),
        (ProviderStatus::Succeeded, event(2))
    );
}

/// Distinct callbacks of one payment delivered at the same time: every one is a 200 and
/// exactly one is forwarded (the partial unique index decides).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_callbacks_of_one_payment_forward_one_verdict() {
    const DELIVERIES: u32 = 8;
    let api = TestApi::start().await;
    let consumer = tail(&api.settings.kafka_bootstrap, ProviderCallbackReceived::TOPIC);
    let payment_id = Uuid::new_v4();
    let deliveries = (0..DELIVERIES).map(|n| {
        let status = if n % 2 == 0 { "SUCCEEDED" } else { "FAILED" };
        let body = callback_with_id(payment_id, status, &format!("evt-concurrent-{n}"));
        let api = &api;
        async move { post(api, &body, signed(&body, 0)).await }
    });
    for (status, answer) in futures::future::join_all(deliveries).await {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let rows = dispositions(&api, payment_id).await;
    assert_eq!(rows.len(), DELIVERIES as usize);
    let verdicts: Vec<_> = rows.iter().filter(|(_, _, d)| d == "forwarded").collect();
    assert_eq!(verdicts.len(), 1, "{rows:?}");
    let events = forwarded(&api, consumer, payment_id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].provider_event_id, verdicts[0].0);
}
