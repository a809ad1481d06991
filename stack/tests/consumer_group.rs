//! A consumer group really splits partitions: two members of one group get disjoint
//! assignments that cover the topic, and together receive every record exactly once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use paystream_stack::kafka;
use paystream_stack::testkit::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PARTITIONS: i32 = 4;
const RECORDS_PER_PARTITION: i32 = 25;
const TIMEOUT: Duration = Duration::from_secs(60);

fn assigned(consumer: &BaseConsumer) -> BTreeSet<i32> {
    consumer.assignment().expect("assignment").elements().iter().map(|e| e.partition()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_members_split_the_partitions_and_share_the_records() {
    let settings = kafka_stack().await;
    let topic = unique("it.group");
    create_topic(&settings, &topic, PARTITIONS).await;
    let group = unique("it-group");
    let bootstrap = settings.kafka_bootstrap.clone();
    let topic_c = topic.clone();

    let (seen_a, seen_b, parts_a, parts_b) = tokio::task::spawn_blocking(move || {
        let member = || {
            let consumer: BaseConsumer = kafka::read_committed_consumer(&bootstrap, &group).create().unwrap();
            consumer.subscribe(&[&topic_c]).unwrap();
            consumer
        };
        let (a, b) = (member(), member());
        let started = Instant::now();

        // 1. Both join. Polling serves each member's rebalance callbacks; the topic is
        //    still empty, so nothing is consumed before the group has settled.
        while assigned(&a).is_empty() || assigned(&b).is_empty() {
            assert!(
                started.elapsed() < TIMEOUT,
                "group did not settle: a={:?} b={:?}",
                assigned(&a),
                assigned(&b)
            );
            for consumer in [&a, &b] {
                assert!(consumer.poll(Duration::from_millis(50)).is_none(), "record in an empty topic");
            }
        }
        let (parts_a, parts_b) = (assigned(&a), assigned(&b));

        // 2. Records on every partition.
        let producer: BaseProducer = kafka::idempotent_producer(&bootstrap).create().unwrap();
        for partition in 0..PARTITIONS {
            for n in 0..RECORDS_PER_PARTITION {
                let value = format!("{partition}/{n}");
                producer
                    .send(BaseRecord::<(), _>::to(&topic_c).partition(partition).payload(&value))
                    .unwrap();
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();

        // 3. Each member receives the records of its own partitions.
        let mut seen_a = Vec::new();
        let mut seen_b = Vec::new();
        let total = (PARTITIONS * RECORDS_PER_PARTITION) as usize;
        while seen_a.len() + seen_b.len() < total {
            assert!(
                started.elapsed() < TIMEOUT,
                "received only {} + {} of {total}",
                seen_a.len(),
                seen_b.len()
            );
            for (consumer, seen) in [(&a, &mut seen_a), (&b, &mut seen_b)] {
                if let Some(message) = consumer.poll(Duration::from_millis(50)) {
                    let message = message.unwrap();
                    let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
                    seen.push((message.partition(), value));
                }
            }
        }
        assert_eq!(
            (assigned(&a), assigned(&b)),
            (parts_a.clone(), parts_b.clone()),
            "group rebalanced mid-test"
        );
        (seen_a, seen_b, parts_a, parts_b)
    })
    .await
    .unwrap();

    assert!(parts_a.is_disjoint(&parts_b), "overlapping assignments {parts_a:?} {parts_b:?}");
    assert_eq!(parts_a.union(&parts_b).copied().collect::<BTreeSet<_>>(), (0..PARTITIONS).collect());
    assert!(!parts_a.is_empty() && !parts_b.is_empty());
    // Each member received exactly the records of its own partitions, and nothing twice.
    assert!(seen_a.iter().all(|(p, _)| parts_a.contains(p)), "a read outside its assignment");
    assert!(seen_b.iter().all(|(p, _)| parts_b.contains(p)), "b read outside its assignment");
    assert_eq!(seen_a.len(), parts_a.len() * RECORDS_PER_PARTITION as usize);
    let mut all: Vec<_> = seen_a.iter().chain(&seen_b).map(|(_, v)| v.clone()).collect();
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), (PARTITIONS * RECORDS_PER_PARTITION) as usize);
    assert_eq!(count, all.len(), "a record was delivered to both members");

    delete_topics(&settings, &[&topic]).await;
}
