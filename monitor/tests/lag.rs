//! Lag and DLQ counts against the real broker: a group of this test's own, with an offset
//! committed part-way through a topic of its own, is found by `lag::collect` with the right
//! lag in records and a time lag that is the age of the first unconsumed record; letters with
//! `dlq.*` headers are counted by source topic and reason, and only the new ones on a second
//! catch-up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use paystream_monitor::dlq::{DlqCounter, DlqKey};
use paystream_monitor::lag;
use paystream_processors::dlq::{HEADER_PROCESSOR, HEADER_REASON, HEADER_SOURCE_TOPIC};
use paystream_stack::testkit::{self, unique};
use paystream_stack::{kafka, StackSettings};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// How old the test makes its records (their timestamps), so that the time lag is measurably
/// more than the test's own duration.
const RECORD_AGE: Duration = Duration::from_secs(600);
const RECORDS: i64 = 10;
const CONSUMED: i64 = 4;

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

async fn produce(settings: &StackSettings, topic: &str, timestamp_ms: i64, headers: Option<OwnedHeaders>) {
    let producer: FutureProducer =
        kafka::idempotent_producer(&settings.kafka_bootstrap).create().expect("producer");
    let mut record = FutureRecord::to(topic).key("k").payload("v").partition(0).timestamp(timestamp_ms);
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
}

/// Commits `offset` on partition 0 of `topic` for `group`, as a consumer of that group would.
fn commit(settings: &StackSettings, group: &str, topic: &str, offset: i64) {
    let consumer: BaseConsumer =
        kafka::read_committed_consumer(&settings.kafka_bootstrap, group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset)).unwrap();
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}

#[tokio::test]
async fn a_group_behind_is_found_with_its_lag_in_records_and_seconds() {
    let settings = testkit::kafka_stack().await;
    let topic = unique("it-lag");
    let behind = unique("it-lag-behind");
    let caught_up = unique("it-lag-caught-up");
    testkit::create_topic(&settings, &topic, 1).await;
    let first_ts = now_ms() - i64::try_from(RECORD_AGE.as_millis()).unwrap();
    for i in 0..RECORDS {
        produce(&settings, &topic, first_ts + i * 1000, None).await;
    }
    commit(&settings, &behind, &topic, CONSUMED);
    commit(&settings, &caught_up, &topic, RECORDS);

    let bootstrap = settings.kafka_bootstrap.clone();
    let groups =
        tokio::task::spawn_blocking(move || lag::collect(&bootstrap)).await.unwrap().expect("collect");
    let find = |name: &str| {
        groups
            .iter()
            .find(|g| g.group == name)
            .unwrap_or_else(|| panic!("group {name} not listed: {groups:#?}"))
    };
    let group = find(&behind);
    assert_eq!(group.members, 0, "nobody joined it");
    let partition = group.partitions.iter().find(|p| p.topic == topic).expect("the test topic's partition");
    assert_eq!(
        (partition.committed, partition.end, partition.records),
        (CONSUMED, RECORDS, RECORDS - CONSUMED)
    );
    // The first unconsumed record is record CONSUMED, stamped RECORD_AGE - CONSUMED s ago.
    let expected_s = (RECORD_AGE.as_secs_f64()) - f64::from(u32::try_from(CONSUMED).unwrap());
    let seconds = partition.seconds.expect("time lag read");
    assert!(
        seconds >= expected_s && seconds < expected_s + 60.0,
        "time lag {seconds} s, expected about {expected_s} s"
    );
    let group = find(&caught_up);
    let partition = group.partitions.iter().find(|p| p.topic == topic).expect("the test topic's partition");
    assert_eq!((partition.records, partition.seconds), (0, Some(0.0)));
    testkit::delete_topics(&settings, &[&topic]).await;
    delete_groups(&settings, &[&behind, &caught_up]).await;
}

/// Removes the test's groups, so that the cluster's group list (and `paystream status`) does not
/// keep them.
async fn delete_groups(settings: &StackSettings, groups: &[&str]) {
    let admin = kafka::admin(&settings.kafka_bootstrap).expect("admin client");
    let results =
        admin.delete_groups(groups, &rdkafka::admin::AdminOptions::new()).await.expect("delete groups");
    for result in results {
        result.unwrap_or_else(|(group, code)| panic!("deleting group {group}: {code}"));
    }
}

fn letter_headers(source: &str, reason: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header { key: HEADER_SOURCE_TOPIC, value: Some(source) })
        .insert(Header { key: HEADER_REASON, value: Some(reason) })
        .insert(Header { key: HEADER_PROCESSOR, value: Some("it-test") })
}

#[tokio::test]
async fn dead_letters_are_counted_by_source_and_reason_once_each() {
    let settings = testkit::kafka_stack().await;
    let dlq = unique("it-dlq");
    testkit::create_topic(&settings, &dlq, 1).await;
    for reason in ["malformed-body", "malformed-body", "unknown-schema-id"] {
        produce(&settings, &dlq, now_ms(), Some(letter_headers("payments.results", reason))).await;
    }
    let bootstrap = settings.kafka_bootstrap.clone();
    let topic = dlq.clone();
    let (counter, first) = tokio::task::spawn_blocking(move || {
        let mut counter = DlqCounter::new(&bootstrap, &topic).expect("counter");
        counter.catch_up().expect("catch up");
        let first = counter.counts().clone();
        (counter, first)
    })
    .await
    .unwrap();
    let key = |reason: &str| DlqKey {
        source_topic: "payments.results".into(),
        reason: reason.into(),
        processor: "it-test".into(),
    };
    assert_eq!(first.get(&key("malformed-body")), Some(&2), "{first:?}");
    assert_eq!(first.get(&key("unknown-schema-id")), Some(&1), "{first:?}");

    produce(&settings, &dlq, now_ms(), Some(letter_headers("payments.results", "unknown-schema-id"))).await;
    let second = tokio::task::spawn_blocking(move || {
        let mut counter = counter;
        counter.catch_up().expect("catch up");
        counter.counts().clone()
    })
    .await
    .unwrap();
    assert_eq!(second.get(&key("malformed-body")), Some(&2), "counted once: {second:?}");
    assert_eq!(second.get(&key("unknown-schema-id")), Some(&2), "{second:?}");
    testkit::delete_topics(&settings, &[&dlq]).await;
}
