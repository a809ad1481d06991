//! Processor logic on the TopologyTestDriver: no broker, deterministic time.

mod common;

use std::time::Duration;

use common::{counting, ticking, utf8, POISON};
use paystream_topology::dlq::{HEADER_REASON, HEADER_SOURCE_OFFSET};
use paystream_topology::record::header;
use paystream_topology::store::UNLIMITED;
use paystream_topology::task::Processed;
use paystream_topology::{
    ErrorPolicy, ProcessError, Processor, ProcessorContext, Record, StoreSpec, Topology, TopologyTestDriver,
};

fn values(driver: &mut TopologyTestDriver<String, String>, topic: &str) -> Vec<(String, String)> {
    driver
        .read_all(topic)
        .into_iter()
        .map(|r| (String::from_utf8(r.key.unwrap()).unwrap(), String::from_utf8(r.value.unwrap()).unwrap()))
        .collect()
}

fn dlq() -> ErrorPolicy {
    ErrorPolicy::DeadLetter { topic: "dlq".into() }
}

#[test]
fn counts_per_key_and_logs_every_store_write() {
    let mut driver = TopologyTestDriver::new(counting("in", "out"), "app", ErrorPolicy::Fail, 0).unwrap();
    for key in ["a", "b", "a", "a"] {
        assert_eq!(driver.pipe("in", Some(key.as_bytes()), Some(b"x"), 10).unwrap(), Processed::Ok);
    }
    assert_eq!(
        values(&mut driver, "out"),
        vec![
            ("a".into(), "1".into()),
            ("b".into(), "1".into()),
            ("a".into(), "2".into()),
            ("a".into(), "3".into())
        ]
    );
    let store = driver.store("counts").unwrap();
    assert_eq!(store.get(b"a").unwrap(), Some(b"3".to_vec()));
    assert_eq!(store.range(b"", None, UNLIMITED).unwrap().len(), 2);
    let changelog = driver.topic("app-counts-changelog");
    assert_eq!(changelog.len(), 4, "one changelog record per committed write");
    assert!(changelog.iter().all(|r| r.partition == Some(0)));
}

#[test]
fn a_store_rebuilt_from_its_changelog_equals_the_original() {
    let mut driver = TopologyTestDriver::new(counting("in", "out"), "app", ErrorPolicy::Fail, 0).unwrap();
    for i in 0..50 {
        driver.pipe("in", Some(format!("k{}", i % 7).as_bytes()), Some(b"x"), i).unwrap();
    }
    let before = driver.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap();
    driver.restart_from_changelogs().unwrap();
    let after = driver.store("counts").unwrap().range(b"", None, UNLIMITED).unwrap();
    assert_eq!(before, after);
    driver.read_all("out");
    driver.pipe("in", Some(b"k0"), Some(b"x"), 99).unwrap();
    assert_eq!(
        values(&mut driver, "out"),
        vec![("k0".into(), "9".into())],
        "counting continues from the restored state"
    );
}

#[test]
fn poison_records_are_dead_lettered_and_leave_nothing_behind() {
    let mut driver = TopologyTestDriver::new(counting("in", "out"), "app", dlq(), 0).unwrap();
    driver.pipe("in", Some(b"a"), Some(b"x"), 1).unwrap();
    assert_eq!(
        driver.pipe("in", Some(b"a"), Some(POISON.as_bytes()), 2).unwrap(),
        Processed::DeadLettered(paystream_topology::dlq::PoisonKind::Processing)
    );
    assert_eq!(
        driver.pipe("in", Some(b"a"), Some(&[0xff, 0xfe]), 3).unwrap(),
        Processed::DeadLettered(paystream_topology::dlq::PoisonKind::Deserialization)
    );
    driver.pipe("in", Some(b"a"), Some(b"x"), 4).unwrap();
    assert_eq!(values(&mut driver, "out"), vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
    let letters = driver.read_all("dlq");
    assert_eq!(letters.len(), 2);
    assert_eq!(header(&letters[0].headers, HEADER_REASON), Some(&b"processing"[..]));
    assert_eq!(header(&letters[0].headers, HEADER_SOURCE_OFFSET), Some(&b"1"[..]));
    assert_eq!(letters[1].value.as_deref(), Some(&[0xff, 0xfe][..]), "the bytes are kept as they were");
    assert_eq!(header(&letters[1].headers, HEADER_REASON), Some(&b"deserialization"[..]));
}

#[test]
fn under_the_fail_policy_a_poison_record_stops_the_task() {
    let mut driver = TopologyTestDriver::new(counting("in", "out"), "app", ErrorPolicy::Fail, 0).unwrap();
    let error = driver.pipe("in", Some(b"a"), Some(POISON.as_bytes()), 1).unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
    assert!(driver.read_all("out").is_empty());
    assert_eq!(driver.store("counts").unwrap().get(b"a").unwrap(), None);
}

#[test]
fn wall_clock_punctuation_follows_the_drivers_clock_and_skips_missed_intervals() {
    let mut driver = TopologyTestDriver::new(
        ticking("in", "out", Duration::from_secs(1), Duration::from_secs(10)),
        "app",
        ErrorPolicy::Fail,
        0,
    )
    .unwrap();
    assert_eq!(driver.advance_wall_clock(Duration::from_millis(999)).unwrap(), 0);
    assert_eq!(driver.advance_wall_clock(Duration::from_millis(1)).unwrap(), 1);
    // 3.5 s later: one punctuation, not three.
    assert_eq!(driver.advance_wall_clock(Duration::from_millis(3500)).unwrap(), 1);
    assert_eq!(driver.advance_wall_clock(Duration::from_millis(400)).unwrap(), 0, "next is due at 5 s");
    assert_eq!(driver.advance_wall_clock(Duration::from_millis(100)).unwrap(), 1);
    assert_eq!(
        values(&mut driver, "out").into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        vec!["wall:1000", "wall:4500", "wall:5000"]
    );
}

#[test]
fn stream_time_punctuation_moves_only_with_record_timestamps() {
    let mut driver = TopologyTestDriver::new(
        ticking("in", "out", Duration::from_secs(3600), Duration::from_secs(10)),
        "app",
        ErrorPolicy::Fail,
        0,
    )
    .unwrap();
    driver.advance_wall_clock(Duration::from_secs(60)).unwrap();
    driver.read_all("out");
    driver.pipe("in", Some(b"k"), Some(b"v"), 1_000).unwrap();
    driver.pipe("in", Some(b"k"), Some(b"v"), 10_999).unwrap();
    assert!(values(&mut driver, "out").is_empty(), "stream time 10.999 s has not reached 1 s + 10 s");
    driver.pipe("in", Some(b"k"), Some(b"v"), 11_000).unwrap();
    driver.pipe("in", Some(b"k"), Some(b"v"), 5_000).unwrap();
    assert_eq!(driver.stream_time_ms(), Some(11_000), "an older record does not move stream time back");
    driver.pipe("in", Some(b"k"), Some(b"v"), 45_000).unwrap();
    assert_eq!(
        values(&mut driver, "out").into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        vec!["stream:11000", "stream:45000"]
    );
}

/// Forwards to a named child only, and uses prefix scans.
struct Router;
impl Processor<String, String> for Router {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessError> {
        let store = ctx.store("seen")?;
        store.put(format!("{}/{}", record.key, record.value).as_bytes(), b"")?;
        let seen = store.prefix(format!("{}/", record.key).as_bytes(), 100)?.len();
        let child = if record.value.starts_with("even") { "evens" } else { "odds" };
        ctx.forward_to(child, record.with_value(seen.to_string()))
    }
}

#[test]
fn forward_to_reaches_one_child_and_unknown_children_are_errors() {
    let mut builder = Topology::builder();
    builder
        .add_source("in", &["in"], utf8)
        .add_processor("route", || Router, &["in"])
        .add_state_store(StoreSpec::in_memory("seen"), &["route"])
        .add_sink("evens", "evens", common::to_bytes, &["route"])
        .add_sink("odds", "odds", common::to_bytes, &["route"]);
    let mut driver = TopologyTestDriver::new(builder.build().unwrap(), "app", ErrorPolicy::Fail, 0).unwrap();
    driver.pipe("in", Some(b"k"), Some(b"even-1"), 1).unwrap();
    driver.pipe("in", Some(b"k"), Some(b"odd-1"), 2).unwrap();
    driver.pipe("in", Some(b"j"), Some(b"even-2"), 3).unwrap();
    assert_eq!(values(&mut driver, "evens"), vec![("k".into(), "1".into()), ("j".into(), "1".into())]);
    assert_eq!(values(&mut driver, "odds"), vec![("k".into(), "2".into())]);

    struct Lost;
    impl Processor<String, String> for Lost {
        fn process(
            &mut self,
            r: Record<String, String>,
            ctx: &mut ProcessorContext<'_, String, String>,
        ) -> Result<(), ProcessError> {
            ctx.forward_to("nowhere", r)
        }
    }
    let mut builder = Topology::builder();
    builder.add_source("in", &["in"], utf8).add_processor("lost", || Lost, &["in"]);
    let mut driver = TopologyTestDriver::new(builder.build().unwrap(), "app", dlq(), 0).unwrap();
    let error = driver.pipe("in", Some(b"k"), Some(b"v"), 1).unwrap_err();
    assert!(error.to_string().contains("no child named nowhere"), "{error}");
}

#[test]
fn a_processor_may_only_use_stores_attached_to_it() {
    struct Snoop;
    impl Processor<String, String> for Snoop {
        fn process(
            &mut self,
            _: Record<String, String>,
            ctx: &mut ProcessorContext<'_, String, String>,
        ) -> Result<(), ProcessError> {
            ctx.store("counts")?;
            Ok(())
        }
    }
    let mut builder = Topology::builder();
    builder
        .add_source("in", &["in"], utf8)
        .add_processor("count", || common::Count, &["in"])
        .add_processor("snoop", || Snoop, &["in"])
        .add_state_store(StoreSpec::persistent("counts"), &["count"]);
    let mut driver = TopologyTestDriver::new(builder.build().unwrap(), "app", ErrorPolicy::Fail, 0).unwrap();
    let error = driver.pipe("in", Some(b"k"), Some(b"v"), 1).unwrap_err();
    assert!(error.to_string().contains("not attached to processor snoop"), "{error}");
}

/// A retriable error (a dependency away) is the test's error, never a dead letter, under either
/// policy; piping the same record again is the runtime's retry.
mod retriable {
    use super::*;
    use common::{flaky_counting, Flaky, FLAKY};
    use paystream_topology::task::{RetriableKind, TaskError};
    use paystream_topology::Retriable;

    fn kind(error: &TaskError) -> RetriableKind {
        match error {
            TaskError::Retriable { kind, .. } => *kind,
            other => panic!("expected a retriable error, got {other}"),
        }
    }

    #[test]
    fn a_retriable_deserializer_error_is_reported_as_retriable_and_never_dead_lettered() {
        for policy in [dlq(), ErrorPolicy::Fail] {
            let mut driver =
                TopologyTestDriver::new(flaky_counting("in", "out", Flaky::new(2)), "app", policy, 0)
                    .unwrap();
            driver.pipe("in", Some(b"a"), Some(b"x"), 1).unwrap();
            for attempt in 1..=2 {
                let error = driver.pipe("in", Some(b"a"), Some(FLAKY.as_bytes()), 2).unwrap_err();
                assert_eq!(kind(&error), RetriableKind::Deserialization, "attempt {attempt}: {error}");
                assert!(error.to_string().contains("in-0@1"), "names the record: {error}");
                assert!(driver.read_all("dlq").is_empty(), "attempt {attempt}: nothing dead-lettered");
                assert_eq!(driver.store("counts").unwrap().get(b"a").unwrap(), Some(b"1".to_vec()));
            }
            assert_eq!(driver.pipe("in", Some(b"a"), Some(FLAKY.as_bytes()), 2).unwrap(), Processed::Ok);
            driver.pipe("in", Some(b"a"), Some(b"x"), 3).unwrap();
            assert_eq!(
                values(&mut driver, "out").into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                vec!["1", "2", "3"],
                "every record counted once, the retried one at the offset it failed at"
            );
            assert!(driver.read_all("dlq").is_empty());
        }
    }

    /// Counts like `Count`, but the registry it needs is away on values `down`.
    struct Dependent;
    impl Processor<String, String> for Dependent {
        fn process(
            &mut self,
            record: Record<String, String>,
            ctx: &mut ProcessorContext<'_, String, String>,
        ) -> Result<(), ProcessError> {
            ctx.store("counts")?.put(record.key.as_bytes(), b"written")?;
            if record.value == "down" {
                return Err(ProcessError::retriable("the database is away"));
            }
            ctx.forward(record);
            Ok(())
        }
    }

    #[test]
    fn retriable_processor_and_serializer_errors_drop_the_records_work_and_are_not_dead_lettered() {
        let mut builder = Topology::builder();
        builder
            .add_source("in", &["in"], utf8)
            .add_processor("dependent", || Dependent, &["in"])
            .add_state_store(StoreSpec::in_memory("counts"), &["dependent"])
            .add_sink(
                "out",
                "out",
                |r: &Record<String, String>| match r.value.as_str() {
                    "unencodable" => Err(Retriable::boxed("registry answered 503")),
                    _ => common::to_bytes(r),
                },
                &["dependent"],
            );
        let mut driver = TopologyTestDriver::new(builder.build().unwrap(), "app", dlq(), 0).unwrap();
        let error = driver.pipe("in", Some(b"a"), Some(b"down"), 1).unwrap_err();
        assert_eq!(kind(&error), RetriableKind::Processing, "{error}");
        let error = driver.pipe("in", Some(b"b"), Some(b"unencodable"), 2).unwrap_err();
        assert_eq!(kind(&error), RetriableKind::Serialization, "{error}");
        assert!(error.to_string().contains("503"), "the dependency's words are kept: {error}");
        assert_eq!(driver.store("counts").unwrap().get(b"a").unwrap(), None, "store writes dropped");
        assert_eq!(driver.store("counts").unwrap().get(b"b").unwrap(), None, "store writes dropped");
        assert!(driver.read_all("out").is_empty() && driver.read_all("dlq").is_empty());
    }

    /// Emits on every wall-clock punctuation, unless its dependency is away.
    struct Punctual {
        away: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }
    impl Processor<String, String> for Punctual {
        fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<(), ProcessError> {
            ctx.schedule(Duration::from_secs(1), paystream_topology::PunctuationType::WallClock);
            Ok(())
        }
        fn process(
            &mut self,
            _: Record<String, String>,
            _: &mut ProcessorContext<'_, String, String>,
        ) -> Result<(), ProcessError> {
            Ok(())
        }
        fn punctuate(
            &mut self,
            _: paystream_topology::PunctuationId,
            timestamp_ms: i64,
            ctx: &mut ProcessorContext<'_, String, String>,
        ) -> Result<(), ProcessError> {
            if self.away.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ProcessError::retriable("registry away"));
            }
            ctx.forward(Record::new("tick".into(), timestamp_ms.to_string(), timestamp_ms));
            Ok(())
        }
    }

    #[test]
    fn a_retriable_error_in_a_punctuation_is_retried_not_fatal() {
        let away = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = away.clone();
        let mut builder = Topology::builder();
        builder
            .add_source("in", &["in"], utf8)
            .add_processor("punctual", move || Punctual { away: flag.clone() }, &["in"])
            .add_sink("out", "out", common::to_bytes, &["punctual"]);
        let mut driver = TopologyTestDriver::new(builder.build().unwrap(), "app", dlq(), 0).unwrap();
        let error = driver.advance_wall_clock(Duration::from_secs(1)).unwrap_err();
        assert_eq!(kind(&error), RetriableKind::Punctuation, "{error}");
        away.store(false, std::sync::atomic::Ordering::SeqCst);
        // The revived processor scheduled its punctuation anew, one interval after the abort.
        assert_eq!(driver.advance_wall_clock(Duration::from_secs(1)).unwrap(), 1);
        assert_eq!(values(&mut driver, "out"), vec![("tick".into(), "2000".into())]);
        assert!(driver.read_all("dlq").is_empty());
    }
}
