//! Shared by the schema tests that talk to the real Schema Registry.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use paystream_schemas::events::PaymentInitiated;
use paystream_schemas::registry::RegistryClient;
use paystream_schemas::time;
use paystream_schemas::{Amount, EventCodec};
use paystream_stack::{wait, StackSettings};
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
