//! The third client: Kafka Connect's own Avro converter (Confluent's AvroConverter, on the
//! worker's plugin.path) inside a Debezium connector, registering the schemas of a CDC
//! topic in the same registry. paystream's Rust codec and Confluent's Python client both
//! decode what Connect wrote, and everyone agrees on the schema ids.
//!
//! The other way round, Kafka's own FileStreamSinkConnector with the AvroConverter reads
//! records that Rust and Python wrote and writes what it decoded to a file.
//!
//! This is the path the payment view will take for the `users` and `wallets` tables.

mod common;

use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::Schema;
use common::{initiated_json, payment_initiated, registry, run_python};
use paystream_schemas::events::PaymentInitiated;
use paystream_schemas::wire;
use paystream_schemas::Amount;
use paystream_schemas::Event;
use paystream_stack::connect::ConnectorDefinition;
use paystream_stack::testkit::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;
use uuid::Uuid;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

fn cdc_connector(suffix: &str, table: &str, registry_url: &str) -> ConnectorDefinition {
    let mut connector = ConnectorDefinition { name: format!("it-avro-{suffix}"), config: Default::default() };
    for (key, value) in [
        ("connector.class", "io.debezium.connector.postgresql.PostgresConnector"),
        ("tasks.max", "1"),
        ("plugin.name", "pgoutput"),
        ("database.hostname", "${env:PAYSTREAM_PG_HOST}"),
        ("database.port", "5432"),
        ("database.user", "wallet"),
        ("database.password", "${env:PAYSTREAM_WALLET_DB_PASSWORD}"),
        ("database.dbname", "wallet"),
        ("slot.name", table),
        ("publication.name", table),
        ("publication.autocreate.mode", "disabled"),
        ("table.include.list", &format!("public.{table}")),
        ("topic.prefix", table),
        ("snapshot.mode", "initial"),
        ("decimal.handling.mode", "precise"),
        ("transforms", "unwrap"),
        ("transforms.unwrap.type", "io.debezium.transforms.ExtractNewRecordState"),
        ("key.converter", "io.confluent.connect.avro.AvroConverter"),
        ("key.converter.schema.registry.url", registry_url),
        ("value.converter", "io.confluent.connect.avro.AvroConverter"),
        ("value.converter.schema.registry.url", registry_url),
    ] {
        connector.set(key, value);
    }
    connector
}

fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    let Value::Record(fields) = value else { panic!("not a record: {value:?}") };
    &fields.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no field {name} in {value:?}")).1
}

#[tokio::test(flavor = "multi_thread")]
async fn records_written_by_connects_avro_converter_decode_in_rust_and_python() {
    let settings = kafka_stack().await;
    let connect = connect_stack(&settings).await;
    let db = wallet_db(&settings).await;
    let (_, registry, codec) = registry().await;

    let suffix = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let table = format!("it_avro_{suffix}");
    let topic = format!("{table}.public.{table}");
    create_topic(&settings, &topic, 1).await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id uuid PRIMARY KEY, name text NOT NULL, amount numeric(14,2) NOT NULL)"
    ))
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(&format!("CREATE PUBLICATION {table} FOR TABLE {table}")).execute(&db).await.unwrap();

    let connector = cdc_connector(&suffix, &table, &settings.schema_registry_url);
    connect.apply(&connector).await.expect("PUT connector config");
    connect.wait_until_running(&connector.name, CONNECTOR_TIMEOUT).await.expect("connector RUNNING");
    wait_for_active_slot(&db, &table).await;

    let rows = [(Uuid::new_v4(), "Анна", "12.34"), (Uuid::new_v4(), "Bob", "999999999.99")];
    for (id, name, amount) in &rows {
        sqlx::query(&format!("INSERT INTO {table} (id, name, amount) VALUES ($1, $2, $3::numeric)"))
            .bind(id)
            .bind(name)
            .bind(amount)
            .execute(&db)
            .await
            .unwrap();
    }

    let reader = consumer(&settings, &topic, "read_committed");
    let records = tokio::task::spawn_blocking(move || {
        consume_until(&reader, DELIVERY_TIMEOUT, Duration::from_secs(1), |r| r.len() >= 2)
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 2);

    // Connect registered the value schema under TopicNameStrategy; the frame names it.
    let value_subject = format!("{topic}-value");
    let registered =
        registry.latest(&value_subject).await.unwrap().expect("Connect registered the value subject");
    let writer = Schema::parse_str(&registered.schema).expect("the registered schema parses in Rust");
    for (record, (id, name, amount)) in records.iter().zip(&rows) {
        let payload = record.value.as_deref().unwrap();
        assert_eq!(wire::parse(payload).unwrap().schema_id, registered.id);
        let value = codec.decode_value(payload, &writer).await.expect("Rust decodes Connect's record");
        assert_eq!(field(&value, "id"), &Value::String(id.to_string()));
        assert_eq!(field(&value, "name"), &Value::String((*name).to_owned()));
        let Value::Decimal(decimal) = field(&value, "amount") else { panic!("amount is not a decimal") };
        let decoded = Amount::from_avro_bytes(&Vec::<u8>::try_from(decimal).unwrap()).unwrap();
        assert_eq!(decoded, amount.parse::<Amount>().unwrap());
        // The key is Avro too, under its own subject.
        assert_eq!(
            wire::parse(record.key.as_deref().unwrap()).unwrap().schema_id,
            registry.latest(&format!("{topic}-key")).await.unwrap().expect("key subject").id
        );
    }

    // Confluent's Python client reads the same records.
    let read = run_python(&settings, &["read", "--topic", &topic, "--count", "2"]).await;
    for (line, (id, name, amount)) in read.iter().zip(&rows) {
        assert_eq!(line["schema_id"], json!(registered.id));
        assert_eq!(line["value"], json!({"id": id.to_string(), "name": name, "amount": amount}));
    }

    remove_test_connector(&db, &connect, &connector.name, &table).await;
    delete_topics(&settings, &[&topic]).await;
    for suffix in ["key", "value"] {
        registry.delete_subject(&format!("{topic}-{suffix}")).await.unwrap();
    }
}

/// What Connect's FileStreamSink wrote, once it wrote `want` lines; a FAILED task ends the
/// wait at once with Connect's trace.
async fn sink_lines(
    connect: &paystream_stack::connect::ConnectClient,
    name: &str,
    path: &std::path::Path,
    want: usize,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= want {
            return lines;
        }
        if let Ok(status) = connect.status(name).await {
            assert!(status.failure().is_none(), "the sink failed: {}", status.failure().unwrap_or_default());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sink wrote {} of {want} lines: {lines:?}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connects_avro_converter_decodes_what_rust_and_python_wrote() {
    let settings = kafka_stack().await;
    let connect = connect_stack(&settings).await;
    let (_, registry, codec) = registry().await;
    let suffix = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let topic = format!("it.avro-sink.{suffix}");
    let subject = format!("{topic}-value");
    create_topic(&settings, &topic, 1).await;

    // Both write the PaymentInitiated contract under the subject of the topic they write to
    // (TopicNameStrategy), as paystream's producers do: Connect's converter looks the
    // schema's version up under exactly that subject.
    let from_rust = payment_initiated();
    let bytes = codec.encode_value(&topic, PaymentInitiated::SCHEMA_JSON, from_rust.to_avro()).await.unwrap();
    let producer: BaseProducer =
        paystream_stack::kafka::idempotent_producer(&settings.kafka_bootstrap).create().unwrap();
    let key = from_rust.payment_id.to_string();
    producer.send(BaseRecord::to(&topic).key(&key).payload(&bytes)).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let from_python = PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id: Uuid::new_v4(),
        amount: "0.10".parse().unwrap(),
        ..payment_initiated()
    };
    let contract = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro/PaymentInitiated.avsc");
    run_python(
        &settings,
        &[
            "write",
            "--topic",
            &topic,
            "--schema-file",
            contract.to_str().unwrap(),
            "--subject",
            &subject,
            "--key",
            &from_python.payment_id.to_string(),
            "--record",
            &initiated_json(&from_python).to_string(),
        ],
    )
    .await;

    // Connect's sink decodes both with the AvroConverter and writes each value as text.
    let file = std::env::temp_dir().join(format!("paystream-it-avro-sink-{suffix}.txt"));
    let mut sink = ConnectorDefinition { name: format!("it-avro-sink-{suffix}"), config: Default::default() };
    sink.set("connector.class", "org.apache.kafka.connect.file.FileStreamSinkConnector")
        .set("tasks.max", "1")
        .set("topics", &topic)
        .set("file", file.to_str().unwrap())
        .set("key.converter", "org.apache.kafka.connect.storage.StringConverter")
        .set("value.converter", "io.confluent.connect.avro.AvroConverter")
        .set("value.converter.schema.registry.url", &settings.schema_registry_url)
        .set("errors.tolerance", "none");
    connect.apply(&sink).await.expect("PUT sink config");
    let lines = sink_lines(&connect, &sink.name, &file, 2).await;
    connect.delete(&sink.name).await.unwrap();
    let _ = tokio::fs::remove_file(&file).await;
    delete_topics(&settings, &[&topic]).await;
    registry.delete_subject(&subject).await.unwrap();

    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, event) in lines.iter().zip([&from_rust, &from_python]) {
        assert!(line.starts_with("Struct{"), "decoded into a Connect Struct: {line}");
        for expected in [
            format!("paymentId={}", event.payment_id),
            format!("amount={}", event.amount),
            format!("description={}", event.description),
            format!("currency={}", event.currency),
        ] {
            assert!(line.contains(&expected), "Connect's view lacks {expected}: {line}");
        }
    }
}
