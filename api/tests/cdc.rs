//! Change data capture of `users` and `wallets` (connect/wallet-cdc.json): every balance
//! change reaches `wallet.public.wallets` as an Avro record in the registry, keyed by the
//! wallet, with exact decimals, for the payment view to join.

mod common;

use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use common::*;
use paystream_schemas::registry::RegistryClient;
use paystream_schemas::{wire, EventCodec};
use rdkafka::message::Message;
use reqwest::Method;
use uuid::Uuid;

const TOPIC: &str = "wallet.public.wallets";

fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    let Value::Record(fields) = value else { panic!("not a record: {value:?}") };
    &fields.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no {name} in {value:?}")).1
}

/// A decimal of scale 2 as text, exactly (zero included, which `Amount` refuses).
fn amount(value: &Value) -> String {
    let Value::Decimal(decimal) = value else { panic!("not a decimal: {value:?}") };
    let bytes = Vec::<u8>::try_from(decimal).unwrap();
    assert!(bytes.len() <= 16, "decimal of {} bytes", bytes.len());
    let mut wide = [if bytes.first().is_some_and(|b| b & 0x80 != 0) { 0xFF } else { 0x00 }; 16];
    wide[16 - bytes.len()..].copy_from_slice(&bytes);
    rust_decimal::Decimal::from_i128_with_scale(i128::from_be_bytes(wide), 2).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn balance_changes_stream_to_the_wallets_cdc_topic_in_avro() {
    let api = TestApi::start().await;
    let consumer = tail(&api.settings.kafka_bootstrap, TOPIC);
    let (user, wallet) = api.user_with_wallet("300.00").await;
    let (status, body) = api
        .call(Method::POST, "/api/v1/payment", Some(user), Some(payment(Uuid::new_v4(), wallet, "120.50")))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");

    // The wallet's row went through three states: created, deposited, reserved.
    let key_part = wallet.to_string();
    let records = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut mine = Vec::new();
        while mine.len() < 3 {
            assert!(
                Instant::now() < deadline,
                "saw {} of 3 CDC records for the wallet (is wallet-cdc running? dev/status)",
                mine.len()
            );
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.unwrap();
                let value = message.payload().map(<[u8]>::to_vec);
                // Keys are Avro records holding wallet_id; the id's text is inside the bytes.
                let key = message.key().unwrap_or_default();
                if key.windows(key_part.len()).any(|w| w == key_part.as_bytes()) {
                    mine.push(value.expect("not a tombstone"));
                }
            }
        }
        mine
    })
    .await
    .unwrap();

    let registry = RegistryClient::new(&api.settings.schema_registry_url).unwrap();
    let codec = EventCodec::new(&api.settings.schema_registry_url).unwrap();
    let mut states = Vec::new();
    for payload in &records {
        let id = wire::parse(payload).expect("Confluent wire format").schema_id;
        let writer = Schema::parse_str(&registry.schema_by_id(id).await.unwrap()).unwrap();
        let value = codec.decode_value(payload, &writer).await.expect("decodes with its registered schema");
        assert_eq!(field(&value, "wallet_id"), &Value::String(wallet.to_string()));
        assert_eq!(field(&value, "user_id"), &Value::String(user.to_string()));
        states.push((amount(field(&value, "available")), amount(field(&value, "reserved"))));
    }
    assert_eq!(
        states,
        [
            ("0.00".to_owned(), "0.00".to_owned()),
            ("300.00".into(), "0.00".into()),
            ("179.50".into(), "120.50".into())
        ]
    );
}
