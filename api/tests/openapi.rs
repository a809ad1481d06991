//! The OpenAPI document: served at /api/v1/openapi.json, and identical to the checked-in
//! api/openapi.json, so a change to a handler's contract shows in review as a diff of that file.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const CHECKED_IN: &str = include_str!("../openapi.json");
const REGENERATE: &str =
    "regenerate it with `cargo run -p paystream -- api --print-openapi > api/openapi.json` \
                          and review the diff";

#[tokio::test(flavor = "multi_thread")]
async fn the_served_document_is_the_checked_in_one() {
    let api = TestApi::start().await;
    let response = api
        .http
        .get(format!("{}{}", api.base_url, paystream_api::openapi::DOCUMENT_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await.unwrap();
    assert!(served == CHECKED_IN, "the served OpenAPI document differs from api/openapi.json: {REGENERATE}");
    let document: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
}

/// What the document promises about every operation: each error response is a problem, each
/// operation but the public ones needs the bearer scheme, and the bounds are the enforced ones.
#[test]
fn every_error_is_a_problem_and_every_client_operation_needs_a_token() {
    let document: Value = serde_json::from_str(paystream_api::openapi::document_json()).unwrap();
    let problem = &document["components"]["responses"]["Problem"];
    assert!(problem["content"]["application/problem+json"]["schema"]["required"].is_array(), "{problem}");
    let public = ["/health", "/metrics", "/api/v1/openapi.json", "/api/v1/callback"];
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["$ref"], "#/components/responses/Problem",
                        "{method} {path} {status} is not a problem"
                    );
                }
            }
            let security = operation["security"].to_string();
            if path == "/api/v1/callback" {
                assert_eq!(security, r#"[{"providerSignature":[]}]"#);
            } else if !public.contains(&path.as_str()) {
                assert_eq!(security, r#"[{"bearer":[]}]"#, "{method} {path}");
            }
        }
    }
    assert_eq!(operations, 14, "every route is documented");
    let schemas = &document["components"]["schemas"];
    assert_eq!(schemas["PaymentRequest"]["properties"]["description"]["maxLength"], 500);
    assert_eq!(
        schemas["PaymentRequest"]["properties"]["description"]["maxLength"],
        paystream_api::payments::DESCRIPTION_CHARS_MAX
    );
    assert_eq!(
        schemas["Callback"]["properties"]["description"]["maxLength"],
        paystream_api::callbacks::DESCRIPTION_CHARS_MAX
    );
    assert_eq!(
        schemas["Callback"]["properties"]["eventId"]["maxLength"],
        paystream_api::callbacks::EVENT_ID_BYTES_MAX
    );
    assert_eq!(
        schemas["CreateAccount"]["properties"]["name"]["maxLength"],
        paystream_api::accounts::NAME_CHARS_MAX
    );
    assert_eq!(
        schemas["CreateAccount"]["properties"]["phone"]["maxLength"],
        paystream_api::accounts::PHONE_CHARS_MAX
    );
    assert_eq!(schemas["Timestamp"]["pattern"], paystream_api::timestamp::PATTERN);
    assert_eq!(schemas["Amount"]["maximum"].to_string(), "999999999.99");
    assert_eq!(schemas["Amount"]["multipleOf"].to_string(), "0.01");
    let kinds: Vec<&str> = schemas["PaymentRequest"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(kinds, paystream_api::payments::PAYMENT_KINDS);
    let deposit = &document["paths"]["/api/v1/accounts/{walletId}/deposits"]["post"]["parameters"][1];
    assert_eq!(
        (deposit["name"].as_str(), deposit["schema"]["maxLength"].as_u64()),
        (Some("Idempotency-Key"), Some(paystream_api::accounts::IDEMPOTENCY_KEY_BYTES_MAX as u64))
    );
}
