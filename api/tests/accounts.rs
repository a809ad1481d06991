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
            .bearer_auth(operator_token())
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

/// Money enters through deposits, so they need an operator's token: the wallet's own user
/// gets a 403 and moves nothing; an operator may deposit into anyone's wallet.
#[tokio::test(flavor = "multi_thread")]
async fn deposits_need_the_operator_scope() {
    let api = TestApi::start().await;
    let (user, wallet) = api.user_with_wallet("0").await;
    let url = format!("{}/api/v1/accounts/{wallet}/deposits", api.base_url);
    let as_user = |bearer: String| {
        let request = api
            .http
            .post(&url)
            .bearer_auth(bearer)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .body(r#"{"amount": 100.00}"#);
        async move { request.send().await.unwrap() }
    };
    let response = as_user(token(user, 600)).await;
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let (status, problem) = read(response).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["type"], json!("/problems/insufficient-scope"), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("operator"), "{problem}");
    assert_eq!(challenge.as_deref(), Some(r#"Bearer error="insufficient_scope", scope="operator""#));
    let (status, _) = read(as_user(token(Uuid::new_v4(), 600)).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "nor a stranger's user token");
    let (status, problem) = read(as_user("not-a-token".into()).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    assert_eq!(api.wallet_state(wallet).await.0, "0.00", "refused deposits moved nothing");

    let (status, balance) = api.deposit(wallet, &Uuid::new_v4().to_string(), "100.00").await;
    assert_eq!(status, StatusCode::OK, "{balance}");
    assert_eq!(balance["available"], json!(100.0));
    assert_eq!(api.wallet_state(wallet).await.0, "100.00");
    let (status, problem) = api.deposit(Uuid::new_v4(), &Uuid::new_v4().to_string(), "1.00").await;
    assert_eq!((status, problem["type"].clone()), (StatusCode::NOT_FOUND, json!("/problems/not-found")));
}
