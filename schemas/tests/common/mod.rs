//! Shared by the schema tests that talk to the real Schema Registry.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use paystream_schemas::events::PaymentInitiated;
use paystream_schemas::registry::RegistryClient;
use paystream_schemas::time;
use paystream_schemas::time::to_micros;
use paystream_schemas::{Amount, EventCodec};
use paystream_stack::{wait, StackSettings};
use serde_json::json;
use serde_json::Value;
use uuid::Uuid;

pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry's address, once it answers (panics naming it and `dev/up` otherwise).
pub async fn registry() -> (StackSettings, RegistryClient, EventCodec) {
    let settings = StackSettings::from_env();
    let client = RegistryClient::new(&settings.schema_registry_url).expect("registry client");
    let what = format!("Schema Registry at {}", settings.schema_registry_url);
    if let Err(not_ready) = wait::until_ready(what, REGISTRY_TIMEOUT, || client.global_compatibility()).await
    {
        panic!("{not_ready}");
    }
    let codec = EventCodec::new(&settings.schema_registry_url).expect("codec");
    (settings, client, codec)
}

/// A name no other run has used.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// A PaymentInitiated with recognisable values.
pub fn payment_initiated() -> PaymentInitiated {
    PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id: Uuid::new_v4(),
        wallet_id: Uuid::new_v4(),
        amount: "123456789.05".parse::<Amount>().unwrap(),
        currency: "RUB".into(),
        kind: "mobile".into(),
        description: "Оплата связи — «Ромашка»".into(),
        requested_at: time::from_micros(1_764_300_000_123_456).unwrap(),
        initiated_at: time::from_micros(1_764_300_000_654_321).unwrap(),
    }
}

const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);

pub fn python() -> PathBuf {
    if let Ok(path) = std::env::var("PAYSTREAM_PYTHON") {
        return PathBuf::from(path);
    }
    let cache = std::env::var("PAYSTREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/paystream"));
    let python = cache.join("venv/bin/python");
    assert!(python.exists(), "{} is missing: run dev/install (it creates the test venv)", python.display());
    python
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/confluent_client.py")
}

/// Runs the Python client and returns its stdout lines as JSON.
pub async fn run_python(settings: &StackSettings, args: &[&str]) -> Vec<Value> {
    let mut command = tokio::process::Command::new(python());
    command
        .arg(script())
        .args(args)
        .args(["--bootstrap", &settings.kafka_bootstrap, "--registry", &settings.schema_registry_url])
        .kill_on_drop(true);
    let output = tokio::time::timeout(PYTHON_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("the Python client did not finish within {PYTHON_TIMEOUT:?}"))
        .expect("start the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Python client failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(|line| serde_json::from_str(line).expect("JSON line")).collect()
}

/// A PaymentInitiated in the Python client's normalised JSON form.
pub fn initiated_json(event: &PaymentInitiated) -> Value {
    json!({
        "eventId": event.event_id.to_string(),
        "paymentId": event.payment_id.to_string(),
        "walletId": event.wallet_id.to_string(),
        "amount": event.amount.to_string(),
        "currency": event.currency,
        "kind": event.kind,
        "description": event.description,
        "requestedAt": to_micros(event.requested_at),
        "initiatedAt": to_micros(event.initiated_at),
    })
}
