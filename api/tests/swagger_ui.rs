//! Swagger UI (issue 16): served by the API at `/api/v1/docs`, from the embedded (vendored)
//! files, pointed at the document the API serves, whose bearer scheme lets a person authorize.
//! The browser drives it in `cli/tests/browser.rs`; this checks what the server hands it.

mod common;

use common::TestApi;
use paystream_api::openapi::{BEARER_SCHEME, DOCS_PATH, DOCUMENT_PATH};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread")]
async fn swagger_ui_is_served_at_its_path_over_the_apis_own_document() {
    let api = TestApi::start().await;
    let get = |path: String| {
        let http = api.http.clone();
        async move { http.get(path).send().await.expect("request") }
    };

    let page = get(format!("{}{DOCS_PATH}/", api.base_url)).await;
    assert_eq!(page.status(), StatusCode::OK);
    let content_type = page.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "the Swagger UI page: {html}");

    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{DOCS_PATH}", api.base_url))
        .send()
        .await
        .unwrap();
    assert!(redirect.status().is_redirection(), "{}", redirect.status());

    // The page's own scripts come from the binary (no CDN), and its configuration names the
    // document the API serves.
    for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"] {
        let response = get(format!("{}{DOCS_PATH}/{asset}", api.base_url)).await;
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 1_000, "{asset} is the real file");
    }
    let initializer =
        get(format!("{}{DOCS_PATH}/swagger-initializer.js", api.base_url)).await.text().await.unwrap();
    assert!(initializer.contains(DOCUMENT_PATH), "{initializer}");
    assert!(initializer.contains("persistAuthorization"), "{initializer}");
    assert!(!html.contains("unpkg.com") && !html.contains("cdn."), "nothing is fetched from elsewhere");

    let document: serde_json::Value =
        get(format!("{}{DOCUMENT_PATH}", api.base_url)).await.json().await.unwrap();
    assert_eq!(document["components"]["securitySchemes"][BEARER_SCHEME]["scheme"], "bearer");
    assert!(
        document["paths"]["/api/v1/payments/{paymentId}/cancel"]["post"].is_object(),
        "the cancel is documented"
    );
    // Swagger UI keys each operation's state by its operationId: two alike would share it.
    let mut ids: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|operation| operation["operationId"].as_str().unwrap())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "operationIds are unique: {ids:?}");
}
