//! `POST /api/v1/payment` against the real wallet database, registry and Debezium. Refused
//! payments (bad input, tokens, someone else's wallet) are in `hostile.rs`.

mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use paystream_schemas::events::PaymentInitiated;
use paystream_schemas::{Event, EventCodec};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_payment_reserves_the_amount_and_emits_one_payment_initiated() {
    let api = TestApi::start().await;
    let (user, wallet) = api.user_with_wallet("1000.00").await;
    let consumer = tail(&api.settings.kafka_bootstrap, PaymentInitiated::TOPIC);
    let payment_id = Uuid::new_v4();

    let response = api
        .http
        .post(format!("{}/api/v1/payment", api.base_url))
        .bearer_auth(token(user, 600))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&payment(payment_id, wallet, "123.45"))
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paymentId"], json!(payment_id.to_string()));
    assert!(paystream_api::timestamp::parse(body["timestamp"].as_str().unwrap()).is_some(), "{body}");
    assert_eq!(api.wallet_state(wallet).await, ("876.55".into(), "123.45".into(), 1));

    let key = payment_id.to_string();
    let records =
        tokio::task::spawn_blocking(move || records_with_key(&consumer, &key, Duration::from_secs(3)))
            .await
            .unwrap();
    assert_eq!(records.len(), 1, "exactly one PaymentInitiated per accepted payment");
    let (payload, headers) = &records[0];
    let codec = EventCodec::new(&api.settings.schema_registry_url).unwrap();
    let event: PaymentInitiated = codec.decode(payload).await.expect("the registered Avro contract");
    assert_eq!(event.payment_id, payment_id);
    assert_eq!(event.wallet_id, wallet);
    assert_eq!(event.amount.to_string(), "123.45");
    assert_eq!(
        (event.currency.as_str(), event.kind.as_str(), event.description.as_str()),
        ("RUB", "mobile", "Оплата связи")
    );
    assert_eq!(paystream_api::timestamp::format(event.requested_at), "20261128-04:11:13:123456");
    let header = |name: &str| {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    };
    assert_eq!(header("id"), Some(event.event_id.to_string()), "event id header, for consumers' dedup");
    assert_eq!(header("eventType").as_deref(), Some("PaymentInitiated"));
    assert_eq!(
        header("traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wallet_outbox").fetch_one(&api.db).await.unwrap();
    assert_eq!(left, 0, "the outbox row is deleted in its own transaction");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_request_again_gets_the_same_answer_and_another_body_a_409() {
    let api = TestApi::start().await;
    let (user, wallet) = api.user_with_wallet("100.00").await;
    let payment_id = Uuid::new_v4();
    let body = payment(payment_id, wallet, "10.00");

    let (first_status, first) =
        api.call(Method::POST, "/api/v1/payment", Some(user), Some(body.clone())).await;
    assert_eq!(first_status, StatusCode::OK, "{first}");
    let (again_status, again) =
        api.call(Method::POST, "/api/v1/payment", Some(user), Some(body.clone())).await;
    assert_eq!((again_status, &again), (StatusCode::OK, &first), "a replay is answered as the original");
    assert_eq!(api.wallet_state(wallet).await, ("90.00".into(), "10.00".into(), 1), "reserved once");

    let mut other = body.clone();
    other["amount"] = json!(11.00);
    let (status, problem) = api.call(Method::POST, "/api/v1/payment", Some(user), Some(other)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["type"], json!("/problems/payment-id-conflict"));
    assert_eq!(api.wallet_state(wallet).await, ("90.00".into(), "10.00".into(), 1));

    // Concurrent replays of one new payment: one acceptance, every answer identical.
    let payment_id = Uuid::new_v4();
    let body = payment(payment_id, wallet, "5.00");
    let answers =
        join_all((0..10).map(|_| api.call(Method::POST, "/api/v1/payment", Some(user), Some(body.clone()))))
            .await;
    assert!(answers.iter().all(|a| a == &answers[0] && a.0 == StatusCode::OK), "{answers:?}");
    assert_eq!(api.wallet_state(wallet).await, ("85.00".into(), "15.00".into(), 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_payments_never_overdraw_a_wallet() {
    const PAYMENTS: usize = 100;
    let api = TestApi::start().await;
    let (user, wallet) = api.user_with_wallet("50.00").await;
    let answers = join_all((0..PAYMENTS).map(|_| {
        api.call(Method::POST, "/api/v1/payment", Some(user), Some(payment(Uuid::new_v4(), wallet, "1.00")))
    }))
    .await;
    let accepted = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert_eq!(accepted, 50, "balance for exactly 50");
    assert!(
        refused.iter().all(|(s, b)| *s == StatusCode::UNPROCESSABLE_ENTITY
            && b["type"] == json!("/problems/insufficient-funds")),
        "{refused:?}"
    );
    assert_eq!(api.wallet_state(wallet).await, ("0.00".into(), "50.00".into(), 50));
}
