//! The broker's transactions are the real thing: read_committed consumers see committed
//! records only, aborted records stay invisible, and offsets sent to a transaction
//! become the group's committed offsets exactly when the transaction commits.

use std::time::Duration;

use paystream_stack::kafka;
use paystream_stack::testkit::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);

fn transactional(bootstrap: &str) -> BaseProducer {
    let producer: BaseProducer =
        kafka::transactional_producer(bootstrap, &unique("it-txn")).create().expect("producer");
    producer.init_transactions(TXN_TIMEOUT).expect("init_transactions");
    producer
}

fn send(producer: &BaseProducer, topic: &str, values: &[&str]) {
    for value in values {
        producer
            .send(BaseRecord::to(topic).key("k").payload(*value))
            .unwrap_or_else(|(e, _)| panic!("send {value}: {e}"));
    }
    producer.flush(TXN_TIMEOUT).expect("flush");
}

fn values(records: &[Received]) -> Vec<&str> {
    records.iter().map(Received::value_str).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn read_committed_sees_committed_records_and_never_aborted_ones() {
    let settings = kafka_stack().await;
    let topic = unique("it.txn");
    create_topic(&settings, &topic, 1).await;

    let bootstrap = settings.kafka_bootstrap.clone();
    let topic_for_producer = topic.clone();
    tokio::task::spawn_blocking(move || {
        let producer = transactional(&bootstrap);
        producer.begin_transaction().unwrap();
        send(&producer, &topic_for_producer, &["committed-1", "committed-2", "committed-3"]);
        producer.commit_transaction(TXN_TIMEOUT).expect("commit");

        producer.begin_transaction().unwrap();
        send(&producer, &topic_for_producer, &["aborted-1", "aborted-2"]);
        producer.abort_transaction(TXN_TIMEOUT).expect("abort");

        producer.begin_transaction().unwrap();
        send(&producer, &topic_for_producer, &["committed-4"]);
        producer.commit_transaction(TXN_TIMEOUT).expect("commit");
    })
    .await
    .unwrap();

    let committed = consume_until(
        &consumer(&settings, &topic, "read_committed"),
        CONSUME_TIMEOUT,
        Duration::from_secs(2),
        |r| r.iter().any(|m| m.value_str() == "committed-4"),
    );
    assert_eq!(values(&committed), ["committed-1", "committed-2", "committed-3", "committed-4"]);

    // The aborted records were written to the log: a read_uncommitted reader sees them.
    // Without this the test could pass against a broker that silently drops aborts.
    let uncommitted = consume_until(
        &consumer(&settings, &topic, "read_uncommitted"),
        CONSUME_TIMEOUT,
        Duration::from_secs(2),
        |r| r.iter().any(|m| m.value_str() == "committed-4"),
    );
    assert_eq!(
        values(&uncommitted),
        ["committed-1", "committed-2", "committed-3", "aborted-1", "aborted-2", "committed-4"]
    );

    delete_topics(&settings, &[&topic]).await;
}

/// Consume-transform-produce as a processor does it: the input offsets go into the same
/// transaction as the output. A commit moves the group's offsets; an abort does not.
#[tokio::test(flavor = "multi_thread")]
async fn send_offsets_to_transaction_moves_group_offsets_only_on_commit() {
    let settings = kafka_stack().await;
    let input = unique("it.txn-in");
    let output = unique("it.txn-out");
    create_topic(&settings, &input, 1).await;
    create_topic(&settings, &output, 1).await;
    let group = unique("it-txn-group");

    let bootstrap = settings.kafka_bootstrap.clone();
    let (input_c, output_c, group_c) = (input.clone(), output.clone(), group.clone());
    tokio::task::spawn_blocking(move || {
        let plain: BaseProducer = kafka::idempotent_producer(&bootstrap).create().unwrap();
        send(&plain, &input_c, &["a", "b", "c", "d", "e"]);

        let consumer: BaseConsumer = kafka::read_committed_consumer(&bootstrap, &group_c).create().unwrap();
        consumer.subscribe(&[&input_c]).unwrap();
        let first = consume_until(&consumer, CONSUME_TIMEOUT, Duration::ZERO, |r| r.len() >= 3);
        let first = &first[..3];
        let producer = transactional(&bootstrap);

        // An aborted transaction carrying offsets must leave the group's offsets alone.
        producer.begin_transaction().unwrap();
        send(&producer, &output_c, &["A?", "B?", "C?"]);
        let mut positions = TopicPartitionList::new();
        positions.add_partition_offset(&input_c, 0, Offset::Offset(first[2].offset + 1)).unwrap();
        producer
            .send_offsets_to_transaction(&positions, &consumer.group_metadata().unwrap(), TXN_TIMEOUT)
            .expect("send_offsets_to_transaction");
        producer.abort_transaction(TXN_TIMEOUT).expect("abort");
        assert_eq!(committed_offset(&consumer, &input_c), None, "an abort committed offsets");

        // The same work committed: offsets advance to just past the last processed record.
        producer.begin_transaction().unwrap();
        send(&producer, &output_c, &["A", "B", "C"]);
        producer
            .send_offsets_to_transaction(&positions, &consumer.group_metadata().unwrap(), TXN_TIMEOUT)
            .expect("send_offsets_to_transaction");
        producer.commit_transaction(TXN_TIMEOUT).expect("commit");
        assert_eq!(committed_offset(&consumer, &input_c), Some(3));
    })
    .await
    .unwrap();

    // Downstream sees the committed output only, once.
    let out = consume_until(
        &consumer(&settings, &output, "read_committed"),
        CONSUME_TIMEOUT,
        Duration::from_secs(2),
        |r| r.len() >= 3,
    );
    assert_eq!(values(&out), ["A", "B", "C"]);

    // A new member of the group resumes after the committed offsets: it gets d and e only.
    let bootstrap = settings.kafka_bootstrap.clone();
    let (input_c, group_c) = (input.clone(), group.clone());
    let rest = tokio::task::spawn_blocking(move || {
        let resumed: BaseConsumer = kafka::read_committed_consumer(&bootstrap, &group_c).create().unwrap();
        resumed.subscribe(&[&input_c]).unwrap();
        consume_until(&resumed, CONSUME_TIMEOUT, Duration::from_secs(2), |r| r.len() >= 2)
    })
    .await
    .unwrap();
    assert_eq!(values(&rest), ["d", "e"]);

    delete_topics(&settings, &[&input, &output]).await;
}

fn committed_offset(consumer: &BaseConsumer, topic: &str) -> Option<i64> {
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let committed =
        consumer.committed_offsets(partitions, Duration::from_secs(10)).expect("committed_offsets");
    match committed.find_partition(topic, 0).expect("partition 0").offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}
