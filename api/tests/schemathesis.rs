//! schemathesis (PyPI, pinned in dev/requirements-test.txt) fuzzes the running API against the
//! OpenAPI document it serves: every operation, positive and negative data, boundary values,
//! stateful sequences through the links it infers (a created wallet's id into deposits and
//! payments). It must find no 5xx and no answer outside the document: an undocumented status,
//! a body that breaks its schema, a wrong content type, data the schema forbids but the API
//! accepts, a request without credentials that is not refused, an undocumented method that is
//! not a 405.
//!
//! The run is bounded (examples per operation, a fixed seed, a hard timeout) and talks only to
//! the API on 127.0.0.1. The callback's signature is made by `schemathesis/hooks.py`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Test cases generated per operation and phase.
const MAX_EXAMPLES_PER_OPERATION: u32 = 30;
/// The seed: the same run every time (change it to explore, then pin what it found in hostile.rs).
const SEED: u64 = 20_261_201;
/// The whole run; about 10 s on the development machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// One request.
const REQUEST_TIMEOUT_S: u32 = 10;
/// Every check schemathesis 4.32 has but `positive_data_acceptance`, which would hold a
/// schema-valid payment from a wallet it cannot know (404), or over its balance (422), to a 2xx.
/// Named one by one rather than `all` minus one: a newer schemathesis adds checks only when
/// they are added here.
const CHECKS: &[&str] = &[
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
    "object_level_authorization",
];

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let api = TestApi::start().await;
    let workdir = tempfile::tempdir().expect("a scratch directory for schemathesis");
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/hooks.py");
    let mut command = tokio::process::Command::new(test_python());
    command
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}{}", api.base_url, paystream_api::openapi::DOCUMENT_PATH))
        .args(["--checks", &CHECKS.join(",")])
        .args(["--max-examples", &MAX_EXAMPLES_PER_OPERATION.to_string()])
        .args(["--seed", &SEED.to_string()])
        .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
        // One worker: with more, Python 3.11's ast.parse can fail inside hypothesis ("AST constructor
        // recursion depth mismatch"), an error of the tool, not of the API. No example database:
        // each run starts from the seed alone.
        .args(["--workers", "1", "--generation-database", "none", "--no-color"])
        // An operator's token: a user (its own wallets) who may also deposit, so deposits are
        // fuzzed past the scope check.
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", operator_token()))
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .env("PAYSTREAM_SCHEMATHESIS_WEBHOOK_SECRET", String::from_utf8(CALLBACK_SECRET.to_vec()).unwrap())
        // Only the API on 127.0.0.1, never through a proxy the environment may name.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .current_dir(workdir.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {RUN_TIMEOUT:?}"))
        .expect("start schemathesis (the test venv from dev/install)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems ({}); each comes with a curl command to reproduce it:\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("Operations:") && stdout.contains("passed"),
        "schemathesis ran nothing:\n{stdout}"
    );
}
