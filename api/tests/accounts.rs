//! Accounts (seed 004) against the real wallet database.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn one_wallet_per_user_and_currency() {
    let api = TestApi::start().await;
    let (user, wallet) = api.user_with_wallet("0").await;
    let (status, problem) = api
        .call(Method::POST, "/api/v1/accounts", Some(user), Some(json!({"name": "Иван", "currency": "RUB"})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["type"], json!("/problems/wallet-exists"));
    assert_eq!(problem["walletId"], json!(wallet.to_string()));
    let (status, usd) = api
        .call(Method::POST, "/api/v1/accounts", Some(user), Some(json!({"name": "Иван", "currency": "USD"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{usd}");
    let (status, list) = api.call(Method::GET, "/api/v1/accounts", Some(user), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (status, problem) = api
        .call(Method::POST, "/api/v1/accounts", Some(user), Some(json!({"name": "Иван", "currency": "rub"})))
        .await;
    assert_eq!((status, problem["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("currency")));
}

#[tokio::test(flavor = "multi_thread")]
async fn deposits_are_idempotent_on_their_key() {
    let api = TestApi::start().await;
    let (user, wallet) = api.user_with_wallet("0").await;
    let deposit = |key: Option<&str>, amount: &str| {
        let mut request = api
            .http
            .post(format!("{}/api/v1/accounts/{wallet}/deposits", api.base_url))
            .bearer_auth(token(user, 600))
            .header("content-type", "application/json")
            .body(format!(r#"{{"amount": {amount}}}"#));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move { read(request.send().await.unwrap()).await }
    };
    let key = Uuid::new_v4().to_string();
    let (status, first) = deposit(Some(&key), "250.50").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["available"], json!(250.5));
    let (status, again) = deposit(Some(&key), "250.50").await;
    assert_eq!((status, again["available"].clone()), (StatusCode::OK, json!(250.5)), "not deposited twice");
    let (status, problem) = deposit(Some(&key), "1.00").await;
    assert_eq!(
        (status, problem["type"].clone()),
        (StatusCode::CONFLICT, json!("/problems/idempotency-key-reused"))
    );
    let (status, problem) = deposit(None, "1.00").await;
    assert_eq!(
        (status, problem["type"].clone()),
        (StatusCode::BAD_REQUEST, json!("/problems/missing-header"))
    );
    let (status, problem) = deposit(Some(&Uuid::new_v4().to_string()), "0.001").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    let (status, balance) =
        api.call(Method::GET, &format!("/api/v1/accounts/{wallet}"), Some(user), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((balance["available"].clone(), balance["reserved"].clone()), (json!(250.5), json!(0.0)));
    let (status, _) =
        api.call(Method::GET, &format!("/api/v1/accounts/{wallet}"), Some(Uuid::new_v4()), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) =
        api.call(Method::GET, &format!("/api/v1/accounts/{}", Uuid::new_v4()), Some(user), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
