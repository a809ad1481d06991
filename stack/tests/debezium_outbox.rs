//! An outbox row becomes exactly one Kafka record through the real Debezium connector
//! defined in `connect/wallet-outbox.json`, registered through the Connect REST API:
//! key = aggregateid, value = the payload bytes unchanged, event id and trace context
//! in headers, and a row deleted in its own transaction still delivered.
//!
//! The test runs the real definition against a table, publication, slot and topic of its
//! own, so it cannot disturb the stack's connectors and can run twice in a row.

use std::path::Path;
use std::time::Duration;

use paystream_stack::connect::ConnectorDefinition;
use paystream_stack::testkit::*;
use uuid::Uuid;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long we keep listening after the expected records arrived, to catch duplicates.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(4);

/// One outbox event as the wallet service writes it.
struct OutboxEvent {
    id: Uuid,
    key: String,
    event_type: &'static str,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

impl OutboxEvent {
    fn new(key: &str, n: u8, traceparent: Option<String>) -> Self {
        // Confluent wire format shape (magic 0, 4-byte schema id, body) with bytes that a
        // text conversion would mangle: NUL, 0xFF, invalid UTF-8.
        let payload = vec![0x00, 0x00, 0x00, 0x00, 0x2A, 0xFF, 0xFE, 0x80, 0x00, n, 0xC3];
        Self { id: Uuid::new_v4(), key: key.to_owned(), event_type: "PaymentInitiated", payload, traceparent }
    }
}

async fn insert(tx: &mut sqlx::PgConnection, table: &str, topic: &str, event: &OutboxEvent) {
    sqlx::query(&format!(
        "INSERT INTO {table} (id, aggregatetype, aggregateid, type, payload, traceparent) VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(event.id)
    .bind(topic)
    .bind(&event.key)
    .bind(event.event_type)
    .bind(&event.payload)
    .bind(&event.traceparent)
    .execute(tx)
    .await
    .expect("insert outbox row");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_rows_reach_their_topic_exactly_once_with_headers() {
    let settings = kafka_stack().await;
    let connect = connect_stack(&settings).await;
    let db = wallet_db(&settings).await;

    let suffix = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let table = format!("it_outbox_{suffix}");
    let topic = format!("it.outbox.{suffix}");
    create_topic(&settings, &topic, 3).await;
    sqlx::query(&format!("CREATE TABLE {table} (LIKE wallet_outbox INCLUDING ALL)"))
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE PUBLICATION {table} FOR TABLE {table}")).execute(&db).await.unwrap();

    // The real definition, pointed at this test's table, publication and slot.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../connect/wallet-outbox.json");
    let mut connector = ConnectorDefinition::load(&path).expect("connect/wallet-outbox.json");
    connector.name = format!("it-outbox-{suffix}");
    connector
        .set("slot.name", &table)
        .set("publication.name", &table)
        .set("table.include.list", format!("public.{table}"))
        .set("topic.prefix", format!("it_{suffix}"));
    connect.apply(&connector).await.expect("PUT connector config");
    connect.wait_until_running(&connector.name, CONNECTOR_TIMEOUT).await.expect("connector RUNNING");
    wait_for_active_slot(&db, &table).await;

    // Two payments, three events in one transaction; a fourth inserted and deleted in its
    // own transaction, the way the wallet service keeps the outbox empty.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
    let events = [
        OutboxEvent::new("payment-1", 1, Some(trace.clone())),
        OutboxEvent::new("payment-2", 2, None),
        OutboxEvent::new("payment-1", 3, Some(trace.clone())),
        OutboxEvent::new("payment-3", 4, Some(trace.clone())),
    ];
    let mut tx = db.begin().await.unwrap();
    for event in &events[..3] {
        insert(&mut tx, &table, &topic, event).await;
    }
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    insert(&mut tx, &table, &topic, &events[3]).await;
    sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(events[3].id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let reader = consumer(&settings, &topic, "read_committed");
    let received = tokio::task::spawn_blocking(move || {
        consume_until(&reader, DELIVERY_TIMEOUT, DUPLICATE_WINDOW, |r| r.len() >= 4)
    })
    .await
    .unwrap();

    assert_eq!(received.len(), events.len(), "exactly one record per outbox row: {received:#?}");
    for event in &events {
        let id = event.id.to_string();
        let matching: Vec<_> = received.iter().filter(|r| r.header("id") == Some(id.as_bytes())).collect();
        assert_eq!(matching.len(), 1, "event {id} delivered {} times", matching.len());
        let record = matching[0];
        assert_eq!(record.key.as_deref(), Some(event.key.as_bytes()), "key is the aggregateid");
        assert_eq!(
            record.value.as_deref(),
            Some(event.payload.as_slice()),
            "payload passed through byte for byte"
        );
        assert_eq!(record.header("eventType"), Some(event.event_type.as_bytes()));
        if let Some(trace) = &event.traceparent {
            assert_eq!(record.header("traceparent"), Some(trace.as_bytes()));
        } else {
            assert!(record.header("traceparent").is_none(), "absent trace context stays absent");
        }
    }
    // Same key, same partition, in commit order: the events of payment-1 are ordered.
    let payment_1: Vec<_> =
        received.iter().filter(|r| r.key.as_deref() == Some(b"payment-1".as_slice())).collect();
    assert_eq!(payment_1[0].partition, payment_1[1].partition);
    assert!(payment_1[0].offset < payment_1[1].offset);
    assert_eq!(payment_1[0].value.as_deref(), Some(events[0].payload.as_slice()));

    remove_test_connector(&db, &connect, &connector.name, &table).await;
    delete_topics(&settings, &[&topic]).await;
}
