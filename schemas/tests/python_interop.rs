//! paystream's Rust serde and Confluent's Python client (`confluent-kafka`'s
//! SchemaRegistryClient, AvroSerializer and AvroDeserializer) read each other's records
//! through the real broker and registry.
//!
//! The Python side runs from the venv `dev/install` creates ($PAYSTREAM_CACHE/venv, or
//! $PAYSTREAM_PYTHON): `schemas/tests/interop/confluent_client.py`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{initiated_json, payment_initiated, registry, run_python};
use paystream_schemas::events::{PaymentInitiated, PaymentResult, PaymentResultStatus};
use paystream_schemas::time::{from_micros, to_micros};
use paystream_schemas::wire;
use paystream_schemas::Event;
use paystream_stack::testkit::{consume_until, consumer, create_topic, delete_topics, kafka_stack, unique};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};
use uuid::Uuid;

fn result_json(result: &PaymentResult) -> Value {
    json!({
        "paymentResultId": result.payment_result_id.to_string(),
        "paymentId": result.payment_id.to_string(),
        "walletId": result.wallet_id.to_string(),
        "amount": result.amount.to_string(),
        "status": result.status.symbol(),
        "reason": result.reason,
        "decidedAt": to_micros(result.decided_at),
    })
}

fn a_result() -> PaymentResult {
    let payment_id = Uuid::new_v4();
    PaymentResult {
        payment_result_id: PaymentResult::id_for(payment_id, PaymentResultStatus::Failed),
        payment_id,
        wallet_id: Uuid::new_v4(),
        amount: "0.99".parse().unwrap(),
        status: PaymentResultStatus::Failed,
        reason: "card declined / карта отклонена".into(),
        decided_at: from_micros(1_764_300_001_000_001).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_and_confluent_python_read_each_others_records() {
    let settings = kafka_stack().await;
    let (_, registry, codec) = registry().await;
    let topic = unique("it.interop");
    create_topic(&settings, &topic, 1).await;

    // 1. Rust writes a PaymentInitiated and a PaymentResult.
    let rust_initiated = payment_initiated();
    let rust_result = a_result();
    let bytes_initiated = codec.encode(&rust_initiated).await.unwrap();
    let bytes_result = codec.encode(&rust_result).await.unwrap();
    let producer: BaseProducer =
        paystream_stack::kafka::idempotent_producer(&settings.kafka_bootstrap).create().unwrap();
    for (key, bytes) in
        [(rust_initiated.payment_id, &bytes_initiated), (rust_result.payment_id, &bytes_result)]
    {
        let key = key.to_string();
        producer.send(BaseRecord::to(&topic).key(&key).payload(bytes)).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    // 2. Python decodes both with the writer schemas it fetches from the registry.
    let read = run_python(&settings, &["read", "--topic", &topic, "--count", "2"]).await;
    assert_eq!(read.len(), 2);
    assert_eq!(read[0]["value"], initiated_json(&rust_initiated));
    assert_eq!(read[1]["value"], result_json(&rust_result));
    let initiated_id = registry.latest(&PaymentInitiated::subject()).await.unwrap().unwrap().id;
    assert_eq!(read[0]["schema_id"], json!(initiated_id));

    // 3. Python writes one of each under paystream's subjects; Rust decodes them.
    let python_initiated =
        PaymentInitiated { event_id: Uuid::new_v4(), payment_id: Uuid::new_v4(), ..payment_initiated() };
    let python_result = a_result();
    let contracts = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    for (json, file, subject, key) in [
        (
            initiated_json(&python_initiated),
            "PaymentInitiated.avsc",
            PaymentInitiated::subject(),
            python_initiated.payment_id,
        ),
        (
            result_json(&python_result),
            "PaymentResult.avsc",
            PaymentResult::subject(),
            python_result.payment_id,
        ),
    ] {
        let written = run_python(
            &settings,
            &[
                "write",
                "--topic",
                &topic,
                "--schema-file",
                contracts.join(file).to_str().unwrap(),
                "--subject",
                &subject,
                "--key",
                &key.to_string(),
                "--record",
                &json.to_string(),
            ],
        )
        .await;
        let expected_id = registry.latest(&subject).await.unwrap().unwrap().id;
        assert_eq!(written[0]["schema_id"], json!(expected_id), "Python found the same registered contract");
    }

    let reader = consumer(&settings, &topic, "read_committed");
    let records = tokio::task::spawn_blocking(move || {
        consume_until(&reader, Duration::from_secs(30), Duration::from_secs(1), |r| r.len() >= 4)
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 4);
    let from_python_initiated = records[2].value.as_deref().unwrap();
    let from_python_result = records[3].value.as_deref().unwrap();
    assert_eq!(wire::parse(from_python_initiated).unwrap().schema_id, initiated_id);
    assert_eq!(codec.decode::<PaymentInitiated>(from_python_initiated).await.unwrap(), python_initiated);
    assert_eq!(codec.decode::<PaymentResult>(from_python_result).await.unwrap(), python_result);

    delete_topics(&settings, &[&topic]).await;
}
