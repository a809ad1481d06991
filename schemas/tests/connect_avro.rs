//! The third client: Kafka Connect's own Avro converter (Confluent's AvroConverter, on the
//! worker's plugin.path) inside a Debezium connector, registering the schemas of a CDC
//! topic in the same registry. paystream's Rust codec and Confluent's Python client both
//! decode what Connect wrote, and everyone agrees on the schema ids.
//!
//! This is the path the payment view will take for the `users` and `wallets` tables.

mod common;

use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::Schema;
use common::{registry, run_python};
use paystream_schemas::wire;
use paystream_schemas::Amount;
use paystream_stack::connect::ConnectorDefinition;
use paystream_stack::testkit::*;
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
