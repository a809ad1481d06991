//! `paystream load` reads its payments' records back from Kafka after the run: from a time, to
//! each partition's end, committed records only, the run's keys only. Against the real broker,
//! on a topic of its own; a transaction's commit marker is the last offset of a partition,
//! which read_committed never delivers, so the read must still end.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use paystream_bench::flow::records;
use paystream_stack::{kafka, testkit};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(30);

fn transactional(settings: &paystream_stack::StackSettings) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::transactional_producer(&settings.kafka_bootstrap, &testkit::unique("load-records"))
            .create()
            .expect("producer");
    producer.init_transactions(TIMEOUT).expect("init_transactions");
    producer
}

/// Sends one record per key with `timestamp_ms`, in one transaction, committed or aborted.
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    keys: &[Uuid],
    timestamp_ms: i64,
    commit: bool,
) {
    producer.begin_transaction().expect("begin");
    for key in keys {
        let key = key.to_string();
        producer
            .send(BaseRecord::to(topic).key(&key).payload(b"value").timestamp(timestamp_ms))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(TIMEOUT).expect("flush");
    if commit {
        producer.commit_transaction(TIMEOUT).expect("commit");
    } else {
        producer.abort_transaction(TIMEOUT).expect("abort");
    }
}

#[tokio::test]
async fn reads_the_runs_committed_records_since_its_start_and_ends() {
    let settings = testkit::kafka_stack().await;
    let topic = testkit::unique("load-records");
    testkit::create_topic(&settings, &topic, 3).await;
    let producer = transactional(&settings);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let run: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let others: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    // Before the run: the run's first keys again (a replayed id), which must not be read.
    send(&producer, &topic, &run[..5], now_ms - 60_000, true);
    // The run: its records, another run's, and an aborted transaction's.
    send(&producer, &topic, &run, now_ms, true);
    send(&producer, &topic, &others, now_ms + 1, true);
    let aborted: Vec<Uuid> = run[..3].to_vec();
    send(&producer, &topic, &aborted, now_ms + 2, false);

    let keys = Arc::new(run.iter().copied().collect::<HashSet<_>>());
    let records = tokio::time::timeout(
        Duration::from_secs(60),
        records::read_since(&settings.kafka_bootstrap, &topic, now_ms - 1_000, keys, true),
    )
    .await
    .expect("the read ends at the partitions' ends")
    .expect("reading");
    testkit::delete_topics(&settings, &[&topic]).await;

    let read: Vec<Uuid> = records.iter().map(|r| r.payment_id).collect();
    assert_eq!(read.len(), run.len(), "each of the run's records once, no aborted or earlier one: {read:?}");
    assert_eq!(read.iter().copied().collect::<HashSet<_>>(), run.iter().copied().collect());
    assert!(records.iter().all(|r| r.timestamp_ms == now_ms), "the records' own timestamps");
    assert!(records.iter().all(|r| r.value.as_deref() == Some(&b"value"[..])));
}

#[tokio::test]
async fn a_time_after_every_record_reads_nothing() {
    let settings = testkit::kafka_stack().await;
    let topic = testkit::unique("load-records-empty");
    testkit::create_topic(&settings, &topic, 2).await;
    let producer = transactional(&settings);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let run = vec![Uuid::new_v4()];
    send(&producer, &topic, &run, now_ms - 10_000, true);
    let keys = Arc::new(run.iter().copied().collect::<HashSet<_>>());
    let records =
        records::read_since(&settings.kafka_bootstrap, &topic, now_ms, keys, false).await.expect("reading");
    testkit::delete_topics(&settings, &[&topic]).await;
    assert!(records.is_empty(), "{} records from before the run", records.len());
}
