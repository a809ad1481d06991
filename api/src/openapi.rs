//! The API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and served at [`DOCUMENT_PATH`].
//!
//! A copy is checked in as `api/openapi.json` (clients and reviewers read it without running
//! anything); `api/tests/openapi.rs` fails when the served document and that file differ.
//! Regenerate the file with `cargo run -p paystream -- api --print-openapi > api/openapi.json`.
//! schemathesis (`api/tests/schemathesis.rs`) fuzzes the running API against this document.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use crate::error::Problem;
use crate::server;

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/api/v1/openapi.json";
/// Where Swagger UI is served: a person pastes a token under "Authorize" and tries every
/// endpoint of the document at [`DOCUMENT_PATH`].
pub const DOCS_PATH: &str = "/api/v1/docs";
/// The security scheme of client endpoints: `Authorization: Bearer <JWT>`.
pub const BEARER_SCHEME: &str = "bearer";
/// The security scheme of the provider's callback: its HMAC signature header.
pub const SIGNATURE_SCHEME: &str = "providerSignature";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "paystream API",
        version = "1",
        description = "paystream's wallet service: accounts, deposits, payments (seed 000) and the \
            provider's signed callbacks. Every error is `application/problem+json` (RFC 9457) with a \
            stable `type`, and a refused request changes nothing. Amounts are JSON numbers with at \
            most two decimal places, read exactly (never through a float).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(responses(Problem)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "accounts", description = "A user's wallets, balances and deposits"),
        (name = "payments", description = "Payment ingest"),
        (name = "payment views", description = "Payments as the read database shows them: status, history, search, timeline"),
        (name = "provider", description = "The payment provider's callbacks"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct Base;

/// The document's fixed part: info, the problem response, the security schemes. The paths
/// come from the routes ([`server::api_routes`]).
pub fn base() -> Document {
    Base::openapi()
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".into());
        bearer.description = Some(
            "A JWT, HS256 or RS256 (whichever the API is configured with, only that one), with \
             `sub` (the user id, a UUID), `iss`, `aud`, `exp` and `iat` (lifetime at most 24 h); \
             `scope` containing `operator` may deposit."
                .into(),
        );
        components.add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(bearer));
        components.add_security_scheme(
            SIGNATURE_SCHEME,
            // `signature::HEADER` is the lower-case form axum looks up; this is how the provider writes it.
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Paystream-Signature",
                "`t=<unix seconds>,v1=<hex>`: HMAC-SHA256 under the shared webhook secret over \
                 `<t>.<raw body>`, within ±300 s of the API's clock (Stripe's scheme). Several `v1` \
                 values are allowed during a secret rotation.",
            ))),
        );
    }
}

/// Swagger UI at [`DOCS_PATH`] over the document the API serves at [`DOCUMENT_PATH`] (the UI
/// fetches it from there, so the two are one document). Its files are embedded in the binary
/// (`utoipa-swagger-ui`'s `vendored` feature). "Try it out" is on, and an authorization pasted
/// once is kept across reloads of the page.
pub fn swagger_ui() -> utoipa_swagger_ui::SwaggerUi {
    let config =
        utoipa_swagger_ui::Config::new([DOCUMENT_PATH]).try_it_out_enabled(true).persist_authorization(true);
    utoipa_swagger_ui::SwaggerUi::new(DOCS_PATH).config(config)
}

/// The whole document.
pub fn document() -> Document {
    server::api_routes().into_openapi()
}

/// The document as the API serves it and as `api/openapi.json` holds it: pretty JSON with a
/// final newline (so the checked-in file diffs line by line).
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut json = document().to_pretty_json().expect("the OpenAPI document serializes");
        json.push('\n');
        json
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object, content_type = "application/json"))
)]
pub async fn serve() -> Response {
    let mut response = document_json().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
