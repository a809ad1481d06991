//! The timers' lag from a topic of this test's own, with TimerEvents encoded through the real
//! registry: a scheduled timer past its due time and not fired is overdue by its age, one due
//! later is only pending, and a fired one leaves the pending set with its delay measured.

use std::time::Duration;

use chrono::Utc;
use paystream_monitor::timers::TimerWatch;
use paystream_schemas::events::{TimerChange, TimerEvent, TimerKind};
use paystream_schemas::EventCodec;
use paystream_stack::kafka;
use paystream_stack::testkit::{self, unique};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

/// How long ago the overdue timer was due.
const OVERDUE_BY: Duration = Duration::from_secs(30);
/// How late the fired timer fired.
const FIRED_LATE_BY: Duration = Duration::from_secs(5);

fn timer(due_in_s: i64, change: TimerChange, timer_id: Uuid) -> TimerEvent {
    TimerEvent {
        timer_id,
        payment_id: Uuid::new_v4(),
        kind: TimerKind::PaymentTimeout,
        due_at: Utc::now() + chrono::Duration::seconds(due_in_s),
        change,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfired_timer_past_its_due_time_is_overdue_by_its_age() {
    let settings = testkit::kafka_stack().await;
    let topic = unique("it-timers");
    testkit::create_topic(&settings, &topic, 1).await;
    let (bootstrap, registry, watched) =
        (settings.kafka_bootstrap.clone(), settings.schema_registry_url.clone(), topic.clone());
    let mut watch = tokio::task::spawn_blocking(move || TimerWatch::new(&bootstrap, &registry, &watched))
        .await
        .unwrap()
        .expect("watch");

    let overdue_s = i64::try_from(OVERDUE_BY.as_secs()).unwrap();
    let late_s = i64::try_from(FIRED_LATE_BY.as_secs()).unwrap();
    let scheduled = TimerChange::Scheduled { scheduled_at: Utc::now() };
    let fired_id = Uuid::new_v4();
    let mut fired = timer(-2 * late_s, scheduled, fired_id);
    let events = vec![
        timer(-overdue_s, scheduled, Uuid::new_v4()),
        timer(3600, scheduled, Uuid::new_v4()),
        fired.clone(),
        {
            fired.change = TimerChange::Fired { fired_at: fired.due_at + chrono::Duration::seconds(late_s) };
            fired
        },
    ];
    let codec = EventCodec::new(&settings.schema_registry_url).expect("codec");
    let producer: FutureProducer = kafka::idempotent_producer(&settings.kafka_bootstrap).create().unwrap();
    for event in &events {
        let payload = codec.encode(event).await.expect("encode a TimerEvent");
        producer
            .send(
                FutureRecord::to(&topic).key(event.payment_id.as_bytes().as_slice()).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    let mut delays = Vec::new();
    // Each catch-up reads what is there; the records are on the broker, so one or two suffice.
    for _ in 0..3 {
        delays.extend(watch.catch_up().await.expect("catch up").fire_delays_s);
        if watch.pending() == 2 && !delays.is_empty() {
            break;
        }
    }
    assert_eq!(watch.pending(), 2, "the overdue and the future timer; the fired one left");
    assert_eq!(delays, vec![FIRED_LATE_BY.as_secs_f64()]);
    let now_ms = Utc::now().timestamp_millis();
    let (overdue, behind_s) = watch.overdue(now_ms);
    assert_eq!(overdue, 1);
    assert!(
        behind_s >= OVERDUE_BY.as_secs_f64() && behind_s < OVERDUE_BY.as_secs_f64() + 30.0,
        "behind {behind_s} s, expected about {OVERDUE_BY:?}"
    );
    testkit::delete_topics(&settings, &[&topic]).await;
}
