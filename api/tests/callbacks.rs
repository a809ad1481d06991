//! `POST /api/v1/callback` against the real ledger database, registry and the
//! `ledger-outbox` Debezium connector.

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

async fn post(api: &TestApi, body: &str, signature_header: Option<String>) -> (StatusCode, Value) {
    let mut request = api
        .http
        .post(format!("{}/api/v1/callback", api.base_url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(header) = signature_header {
        request = request.header("Paystream-Signature", header);
    }
    read(request.send().await.unwrap()).await
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

#[tokio::test(flavor = "multi_thread")]
async fn unauthentic_or_malformed_callbacks_are_refused_and_write_nothing() {
    let api = TestApi::start().await;
    let payment_id = Uuid::new_v4();
    let body = callback_body(payment_id, "FAILED");
    let forged = Some(signature::sign(b"not-the-secret", Utc::now().timestamp(), body.as_bytes()));
    let tampered = signed(&callback_body(payment_id, "SUCCEEDED"), 0); // signed for another body

    let cases: Vec<(&str, String, Option<String>, StatusCode, &str)> = vec![
        ("no signature", body.clone(), None, StatusCode::UNAUTHORIZED, "unauthorized"),
        ("wrong secret", body.clone(), forged, StatusCode::UNAUTHORIZED, "unauthorized"),
        ("signature of another body", body.clone(), tampered, StatusCode::UNAUTHORIZED, "unauthorized"),
        ("stale", body.clone(), signed(&body, -301), StatusCode::UNAUTHORIZED, "unauthorized"),
        ("from the future", body.clone(), signed(&body, 301), StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            "malformed header",
            body.clone(),
            Some("t=now,v1=zz".into()),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ];
    let malformed = "{\"paymentId\": ";
    let unknown_status = callback_body(payment_id, "MAYBE");
    let bad_timestamp = body.replace("20261128-05:00:00:000001", "yesterday");
    let signed_cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("malformed JSON", malformed.to_owned(), StatusCode::BAD_REQUEST, "malformed-callback"),
        ("unknown status", unknown_status, StatusCode::BAD_REQUEST, "unknown-status"),
        ("bad timestamp", bad_timestamp, StatusCode::BAD_REQUEST, "malformed-callback"),
    ];
    let all = cases.into_iter().chain(signed_cases.into_iter().map(|(what, body, status, problem)| {
        let header = signed(&body, 0);
        (what, body, header, status, problem)
    }));
    for (what, body, header, expected, problem) in all {
        let (status, answer) = post(&api, &body, header).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert_eq!(answer["type"], json!(format!("/problems/{problem}")), "{what}: {answer}");
        assert_eq!(rows_for(&api, payment_id).await, 0, "{what} wrote something");
    }
}
