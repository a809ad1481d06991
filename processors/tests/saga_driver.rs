//! The saga and the timer processor on the topology test driver: no broker, deterministic time.
//! Every scenario of the saga issue that is logic rather than infrastructure is here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_processors::saga::processor::{
    self, AvroDatumCodec, Input, SagaCodec, SagaEvent, SagaMetrics, SagaSettings, SagaTopics,
};
use paystream_processors::saga::timers;
use paystream_schemas::events::{
    topics, DispatchOutcome, DispatchResult, PaymentInitiated, PaymentResult, PaymentResultStatus,
    ProviderCallbackReceived, ProviderStatus, TimerChange, TimerEvent, TimerKind,
};
use paystream_schemas::money::Amount;
use paystream_topology::{ErrorPolicy, TopologyTestDriver};
use uuid::Uuid;

const T0_MS: i64 = 1_800_000_000_000;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn saga() -> (TopologyTestDriver<Uuid, SagaEvent>, SagaMetrics) {
    let metrics = SagaMetrics::new(&prometheus::Registry::new()).unwrap();
    let topology =
        processor::topology(AvroDatumCodec, SagaSettings::default(), metrics.clone(), &SagaTopics::default())
            .unwrap();
    let dlq = ErrorPolicy::DeadLetter { topic: "payments.dlq".into() };
    (TopologyTestDriver::new(topology, "paystream-saga", dlq, T0_MS).unwrap(), metrics)
}

fn pipe(driver: &mut TopologyTestDriver<Uuid, SagaEvent>, id: Uuid, event: SagaEvent) {
    let topic = match &event {
        SagaEvent::Initiated(_) => topics::PAYMENTS_INITIATED,
        SagaEvent::Callback(_) => topics::PAYMENTS_CALLBACKS,
        SagaEvent::Outcome(_) => topics::PAYMENTS_DISPATCH_OUTCOMES,
        SagaEvent::Timer(_) => topics::PAYMENTS_TIMERS,
        _ => panic!("not an input"),
    };
    let bytes = AvroDatumCodec.encode(&event).unwrap();
    driver.pipe(topic, Some(id.to_string().as_bytes()), Some(&bytes), T0_MS).unwrap();
}

fn decode(topic: &str, value: &[u8]) -> SagaEvent {
    use apache_avro::reader::datum::GenericDatumReader;
    use paystream_schemas::event::Event;
    fn read<E: Event>(value: &[u8]) -> E {
        let reader = GenericDatumReader::builder(E::schema()).build().unwrap();
        E::from_avro(reader.read_value(&mut &value[..]).unwrap()).unwrap()
    }
    match topic {
        topics::PAYMENTS_RESULTS => SagaEvent::Result(read(value)),
        topics::PAYMENTS_PROVIDER_COMMANDS => SagaEvent::Charge(read(value)),
        topics::PAYMENTS_TIMERS => AvroDatumCodec.decode(Input::Timer, value).unwrap(),
        other => panic!("no outputs on {other}"),
    }
}

fn results(driver: &mut TopologyTestDriver<Uuid, SagaEvent>) -> Vec<PaymentResult> {
    driver
        .read_all(topics::PAYMENTS_RESULTS)
        .into_iter()
        .map(|r| match decode(topics::PAYMENTS_RESULTS, r.value.as_deref().unwrap()) {
            SagaEvent::Result(result) => result,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn initiated(id: Uuid, wallet: Uuid) -> SagaEvent {
    SagaEvent::Initiated(PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id: id,
        wallet_id: wallet,
        amount: Amount::from_minor(12_345).unwrap(),
        currency: "RUB".into(),
        kind: "purchase".into(),
        description: "coffee".into(),
        requested_at: at(T0_MS),
        initiated_at: at(T0_MS),
    })
}

fn callback(id: Uuid, status: ProviderStatus) -> SagaEvent {
    SagaEvent::Callback(ProviderCallbackReceived {
        event_id: Uuid::new_v4(),
        payment_id: id,
        provider_event_id: Uuid::new_v4().to_string(),
        status,
        description: format!("provider says {}", status.symbol()),
        provider_timestamp: at(T0_MS),
        received_at: at(T0_MS),
    })
}

fn outcome(id: Uuid, outcome: DispatchResult) -> SagaEvent {
    SagaEvent::Outcome(DispatchOutcome {
        command_id: Uuid::new_v4(),
        payment_id: id,
        outcome,
        attempts: 1,
        detail: outcome.symbol().into(),
        decided_at: at(T0_MS),
    })
}

fn fired(id: Uuid, kind: TimerKind) -> SagaEvent {
    SagaEvent::Timer(TimerEvent {
        timer_id: Uuid::new_v4(),
        payment_id: id,
        kind,
        due_at: at(T0_MS),
        change: TimerChange::Fired { fired_at: at(T0_MS) },
    })
}

#[test]
fn happy_path_issues_a_charge_and_a_timer_and_ends_in_one_completed_result() {
    let (mut driver, _) = saga();
    let (id, wallet) = (Uuid::new_v4(), Uuid::new_v4());
    pipe(&mut driver, id, initiated(id, wallet));
    let commands = driver.read_all(topics::PAYMENTS_PROVIDER_COMMANDS);
    assert_eq!(commands.len(), 1);
    let SagaEvent::Charge(charge) =
        decode(topics::PAYMENTS_PROVIDER_COMMANDS, commands[0].value.as_deref().unwrap())
    else {
        panic!()
    };
    assert_eq!((charge.payment_id, charge.wallet_id, charge.amount.minor()), (id, wallet, 12_345));
    let timers = driver.read_all(topics::PAYMENTS_TIMERS);
    let SagaEvent::Timer(timer) = decode(topics::PAYMENTS_TIMERS, timers[0].value.as_deref().unwrap()) else {
        panic!()
    };
    assert_eq!(timer.kind, TimerKind::PaymentTimeout);
    assert_eq!(timer.due_at, at(T0_MS + 30_000), "default timeout 30 s");

    pipe(&mut driver, id, outcome(id, DispatchResult::Accepted));
    assert!(results(&mut driver).is_empty());
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    let done = results(&mut driver);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, PaymentResultStatus::Completed);
    assert_eq!(done[0].payment_result_id, PaymentResult::id_for(id, PaymentResultStatus::Completed));
    assert_eq!((done[0].wallet_id, done[0].amount.minor()), (wallet, 12_345));
}

#[test]
fn a_provider_failure_fails_and_retries_exhausted_fails() {
    let (mut driver, _) = saga();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    pipe(&mut driver, a, initiated(a, Uuid::new_v4()));
    pipe(&mut driver, a, outcome(a, DispatchResult::Accepted));
    pipe(&mut driver, a, callback(a, ProviderStatus::Failed));
    pipe(&mut driver, b, initiated(b, Uuid::new_v4()));
    pipe(&mut driver, b, outcome(b, DispatchResult::RetriesExhausted));
    let done = results(&mut driver);
    assert_eq!(
        done.iter().map(|r| (r.payment_id, r.status)).collect::<Vec<_>>(),
        vec![(a, PaymentResultStatus::Failed), (b, PaymentResultStatus::Failed)]
    );
}

#[test]
fn the_timer_wins_and_a_late_or_duplicate_callback_changes_nothing() {
    let (mut driver, metrics) = saga();
    let id = Uuid::new_v4();
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    pipe(&mut driver, id, outcome(id, DispatchResult::Accepted));
    pipe(&mut driver, id, fired(id, TimerKind::PaymentTimeout));
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    pipe(&mut driver, id, fired(id, TimerKind::PaymentTimeout));
    let done = results(&mut driver);
    assert_eq!(done.len(), 1, "exactly one result: {done:?}");
    assert_eq!(done[0].status, PaymentResultStatus::FailedTimeout);
    assert_eq!(metrics.signals.with_label_values(&["provider_succeeded", "absorbed"]).get(), 2);
    assert_eq!(metrics.signals.with_label_values(&["timer_fired", "absorbed"]).get(), 1);
}

#[test]
fn a_callback_before_its_payment_is_kept_and_applied_when_the_payment_appears() {
    let (mut driver, _) = saga();
    let id = Uuid::new_v4();
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    assert!(results(&mut driver).is_empty());
    let retention = driver.read_all(topics::PAYMENTS_TIMERS);
    assert_eq!(retention.len(), 1, "a retention timer for the early callback");
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    assert_eq!(driver.read_all(topics::PAYMENTS_PROVIDER_COMMANDS).len(), 1, "the charge is still issued");
    let done = results(&mut driver);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, PaymentResultStatus::Completed);
}

#[test]
fn an_early_callback_whose_payment_never_appears_expires() {
    let (mut driver, metrics) = saga();
    let id = Uuid::new_v4();
    pipe(&mut driver, id, callback(id, ProviderStatus::Failed));
    assert!(driver.store(processor::STORE).unwrap().get(id.as_bytes()).unwrap().is_some());
    pipe(&mut driver, id, fired(id, TimerKind::CallbackRetention));
    assert!(driver.store(processor::STORE).unwrap().get(id.as_bytes()).unwrap().is_none());
    assert_eq!(metrics.expired_callbacks.with_label_values(&["FAILED"]).get(), 1);
    assert!(results(&mut driver).is_empty(), "no result for a payment never initiated");
}

#[test]
fn a_redelivered_payment_issues_no_second_charge_and_the_state_survives_a_restart() {
    let (mut driver, _) = saga();
    let id = Uuid::new_v4();
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    assert_eq!(driver.read_all(topics::PAYMENTS_PROVIDER_COMMANDS).len(), 1);
    driver.restart_from_changelogs().unwrap();
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    assert_eq!(results(&mut driver).len(), 1);
}

#[test]
fn poison_inputs_are_dead_lettered() {
    let (mut driver, _) = saga();
    let id = Uuid::new_v4();
    driver
        .pipe(topics::PAYMENTS_CALLBACKS, Some(id.to_string().as_bytes()), Some(b"not avro"), T0_MS)
        .unwrap();
    driver.pipe(topics::PAYMENTS_CALLBACKS, Some(b"not-a-uuid"), Some(b"x"), T0_MS).unwrap();
    pipe(&mut driver, id, callback(id, ProviderStatus::Unknown));
    assert_eq!(driver.read_all("payments.dlq").len(), 3);
}

#[test]
fn timers_fire_once_when_due_and_not_before() {
    let topology = timers::topology(AvroDatumCodec, topics::PAYMENTS_TIMERS).unwrap();
    let mut driver = TopologyTestDriver::new(topology, "paystream-timers", ErrorPolicy::Fail, T0_MS).unwrap();
    let id = Uuid::new_v4();
    let scheduled = SagaEvent::Timer(TimerEvent {
        timer_id: Uuid::new_v4(),
        payment_id: id,
        kind: TimerKind::PaymentTimeout,
        due_at: at(T0_MS + 30_000),
        change: TimerChange::Scheduled { scheduled_at: at(T0_MS) },
    });
    let bytes = AvroDatumCodec.encode(&scheduled).unwrap();
    driver.pipe(topics::PAYMENTS_TIMERS, Some(id.to_string().as_bytes()), Some(&bytes), T0_MS).unwrap();
    // Its own Fired events come back on the same topic: they are not timers to keep.
    driver.advance_wall_clock(Duration::from_millis(29_900)).unwrap();
    assert!(driver.read_all(topics::PAYMENTS_TIMERS).is_empty(), "not due yet");
    driver.advance_wall_clock(Duration::from_millis(200)).unwrap();
    let fired = driver.read_all(topics::PAYMENTS_TIMERS);
    assert_eq!(fired.len(), 1);
    let SagaEvent::Timer(timer) = decode(topics::PAYMENTS_TIMERS, fired[0].value.as_deref().unwrap()) else {
        panic!()
    };
    assert!(matches!(timer.change, TimerChange::Fired { .. }));
    assert_eq!((timer.payment_id, timer.kind), (id, TimerKind::PaymentTimeout));
    let late_by_ms = match timer.change {
        TimerChange::Fired { fired_at } => (fired_at - timer.due_at).num_milliseconds(),
        _ => unreachable!(),
    };
    assert!((0..=100).contains(&late_by_ms), "fired within one punctuation interval: {late_by_ms} ms");
    driver.advance_wall_clock(Duration::from_secs(60)).unwrap();
    assert!(driver.read_all(topics::PAYMENTS_TIMERS).is_empty(), "fired once");
    // Survives a restart: a timer scheduled, the process gone, the store rebuilt.
    let later = SagaEvent::Timer(TimerEvent {
        timer_id: Uuid::new_v4(),
        payment_id: id,
        kind: TimerKind::CallbackRetention,
        due_at: at(driver.wall_clock_ms() + 5_000),
        change: TimerChange::Scheduled { scheduled_at: at(driver.wall_clock_ms()) },
    });
    let bytes = AvroDatumCodec.encode(&later).unwrap();
    driver.pipe(topics::PAYMENTS_TIMERS, Some(id.to_string().as_bytes()), Some(&bytes), T0_MS).unwrap();
    driver.restart_from_changelogs().unwrap();
    driver.advance_wall_clock(Duration::from_secs(6)).unwrap();
    assert_eq!(driver.read_all(topics::PAYMENTS_TIMERS).len(), 1, "the timer survived the restart");
}
