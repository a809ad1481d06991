//! `paystream status` as an operator runs it, against the live local stack: the table names every
//! component (each connector and task Connect has included), lists every consumer group the broker
//! knows with a group of this test's own shown with its lag, has its four other sections, and
//! exits 0 exactly when every required component is up.
//!
//! It reads only: the processes, Prometheus and Jaeger may be up or not (a row says which).

use std::time::Duration;

use paystream_stack::connect::ConnectClient;
use paystream_stack::testkit::{self, unique};
use paystream_stack::{kafka, StackSettings};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// How long one run of the command may take (it bounds every probe itself).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// Records the test's group is behind.
const BEHIND: i64 = 3;

/// Every row the component table always has, running or not.
const COMPONENTS: &[&str] = &[
    "postgresql",
    "kafka",
    "kafka-connect",
    "schema-registry",
    "prometheus",
    "jaeger",
    "paystream api",
    "paystream provider-sim",
    "paystream settle",
    "paystream dispatch",
    "paystream saga",
    "paystream timers",
    "paystream view",
    "paystream orders",
    "paystream lag-exporter",
];

async fn paystream(args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    command.args(args).kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("paystream {args:?} did not end within {COMMAND_TIMEOUT:?}"))
        .expect("run paystream");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 output");
    (output.status.code(), text(output.stdout), text(output.stderr))
}

/// The rows of the section that starts with `title`, up to the next blank line.
fn section<'a>(out: &'a str, title: &str) -> Vec<&'a str> {
    let start = out.find(title).unwrap_or_else(|| panic!("no section {title:?} in:\n{out}"));
    out[start..].lines().skip(1).take_while(|l| !l.trim().is_empty()).collect()
}

/// The row whose first column is `name` (columns are separated by two spaces or more).
fn row<'a>(rows: &[&'a str], name: &str) -> Option<Vec<&'a str>> {
    rows.iter()
        .map(|r| r.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_names_every_component_and_every_group_with_its_lag() {
    let settings: StackSettings = testkit::kafka_stack().await;
    // A group of our own, BEHIND records behind on a topic of our own.
    let topic = unique("it-status");
    let group = unique("it-status-group");
    testkit::create_topic(&settings, &topic, 1).await;
    let producer: FutureProducer = kafka::idempotent_producer(&settings.kafka_bootstrap).create().unwrap();
    for _ in 0..BEHIND + 1 {
        producer
            .send(FutureRecord::to(&topic).key("k").payload("v").partition(0), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let consumer: BaseConsumer =
        kafka::read_committed_consumer(&settings.kafka_bootstrap, &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1)).unwrap();
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(consumer);
    let connectors = ConnectClient::new(&settings.connect_url).unwrap().list().await.expect("connectors");

    let (code, out, err) = paystream(&["status"]).await;

    let components = section(&out, "COMPONENTS");
    for name in COMPONENTS {
        assert!(row(&components, name).is_some(), "no row {name:?} in:\n{out}");
    }
    for name in &connectors {
        assert!(row(&components, &format!("connector {name}")).is_some(), "connector {name} missing:\n{out}");
        assert!(
            components.iter().any(|r| r.trim_start().starts_with(&format!("task {name}/"))),
            "no task row of {name}:\n{out}"
        );
    }
    let required_up = ["postgresql", "kafka", "kafka-connect", "schema-registry"]
        .iter()
        .all(|name| row(&components, name).is_some_and(|cells| cells.contains(&"up")));
    let tasks_up = components
        .iter()
        .filter(|r| r.trim_start().starts_with("connector ") || r.trim_start().starts_with("task "))
        .all(|r| r.contains("  up  "));
    assert_eq!(
        code == Some(0),
        required_up && tasks_up,
        "exit {code:?} disagrees with the table:\n{out}\nstderr: {err}"
    );

    let lag = section(&out, "CONSUMER LAG");
    let ours = row(&lag, &group).unwrap_or_else(|| panic!("group {group} not listed:\n{out}"));
    // GROUP TYPE STATE MEMBERS PARTITIONS LAG LAG_S BEHIND; no member ever joined: no type.
    assert_eq!(&ours[1..6], &["-", "Empty", "0", "1", BEHIND.to_string().as_str()], "{ours:?}");
    assert!(ours[7].starts_with(&format!("{topic}/0:{BEHIND}")), "{ours:?}");
    assert!(row(&lag, "paystream-connect").is_some(), "Kafka Connect's worker group is listed too:\n{out}");
    for title in ["PAYMENTS accepted", "DEAD LETTERS", "STUCK PAYMENTS"] {
        assert!(!section(&out, title).is_empty(), "section {title} is empty:\n{out}");
    }

    let admin = kafka::admin(&settings.kafka_bootstrap).unwrap();
    let _ = admin.delete_groups(&[&group], &rdkafka::admin::AdminOptions::new()).await;
    testkit::delete_topics(&settings, &[&topic]).await;
}
