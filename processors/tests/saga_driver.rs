//! The saga and the timer processor on the topology test driver: no broker, deterministic time.
//! Every scenario of the saga issue that is logic rather than infrastructure is here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_processors::saga::processor::{
    self, AvroDatumCodec, Input, SagaCodec, SagaEvent, SagaMetrics, SagaSettings, SagaTopics,
};
use paystream_processors::saga::timers;
use paystream_schemas::events::{
    topics, Discrepancy, DispatchOutcome, DispatchResult, PaymentCancelRequested, PaymentInitiated,
    PaymentResult, PaymentResultStatus, ProviderAction, ProviderCallbackReceived, ProviderRequest,
    ProviderStatus, ReconciliationEvent, Remedy, TimerChange, TimerEvent, TimerKind,
};
use paystream_schemas::money::Amount;
use paystream_topology::{ErrorPolicy, TopologyTestDriver};
use uuid::Uuid;

const T0_MS: i64 = 1_800_000_000_000;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn saga() -> (TopologyTestDriver<Uuid, SagaEvent>, SagaMetrics) {
    saga_with(SagaSettings::default())
}

fn saga_with(settings: SagaSettings) -> (TopologyTestDriver<Uuid, SagaEvent>, SagaMetrics) {
    let metrics = SagaMetrics::new(&prometheus::Registry::new()).unwrap();
    let topology =
        processor::topology(AvroDatumCodec, settings, metrics.clone(), &SagaTopics::default()).unwrap();
    let dlq = ErrorPolicy::DeadLetter { topic: "payments.dlq".into() };
    (TopologyTestDriver::new(topology, "paystream-saga", dlq, T0_MS).unwrap(), metrics)
}

fn pipe(driver: &mut TopologyTestDriver<Uuid, SagaEvent>, id: Uuid, event: SagaEvent) {
    let topic = match &event {
        SagaEvent::Initiated(_) => topics::PAYMENTS_INITIATED,
        SagaEvent::Callback(_) => topics::PAYMENTS_CALLBACKS,
        SagaEvent::Outcome(_) => topics::PAYMENTS_DISPATCH_OUTCOMES,
        SagaEvent::Timer(_) => topics::PAYMENTS_TIMERS,
        SagaEvent::CancelRequested(_) => topics::PAYMENTS_CANCEL_REQUESTS,
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
        topics::PAYMENTS_PROVIDER_REQUESTS => SagaEvent::Request(read(value)),
        topics::PAYMENTS_RECONCILIATION => SagaEvent::Reconciliation(read(value)),
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

/// The provider requests the saga issued since the last call.
fn requests(driver: &mut TopologyTestDriver<Uuid, SagaEvent>) -> Vec<ProviderRequest> {
    driver
        .read_all(topics::PAYMENTS_PROVIDER_REQUESTS)
        .into_iter()
        .map(|r| match decode(topics::PAYMENTS_PROVIDER_REQUESTS, r.value.as_deref().unwrap()) {
            SagaEvent::Request(request) => request,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// The one provider request issued since the last call.
fn one_request(driver: &mut TopologyTestDriver<Uuid, SagaEvent>) -> ProviderRequest {
    let mut issued = requests(driver);
    assert_eq!(issued.len(), 1, "one request: {issued:?}");
    issued.remove(0)
}

fn reconciliations(driver: &mut TopologyTestDriver<Uuid, SagaEvent>) -> Vec<ReconciliationEvent> {
    driver
        .read_all(topics::PAYMENTS_RECONCILIATION)
        .into_iter()
        .map(|r| match decode(topics::PAYMENTS_RECONCILIATION, r.value.as_deref().unwrap()) {
            SagaEvent::Reconciliation(event) => event,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// The dispatcher's answer to `request`.
fn answer(request: &ProviderRequest, outcome: DispatchResult) -> SagaEvent {
    SagaEvent::Outcome(DispatchOutcome {
        command_id: request.request_id,
        payment_id: request.payment_id,
        outcome,
        attempts: 1,
        detail: format!("provider says {}", outcome.symbol()),
        decided_at: at(T0_MS),
    })
}

/// The timers the saga scheduled since the last call.
fn scheduled(driver: &mut TopologyTestDriver<Uuid, SagaEvent>) -> Vec<TimerEvent> {
    driver
        .read_all(topics::PAYMENTS_TIMERS)
        .into_iter()
        .map(|r| match decode(topics::PAYMENTS_TIMERS, r.value.as_deref().unwrap()) {
            SagaEvent::Timer(timer) => timer,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// The timer processor's firing of `timer`.
fn fire(timer: &TimerEvent) -> SagaEvent {
    SagaEvent::Timer(TimerEvent { change: TimerChange::Fired { fired_at: timer.due_at }, ..timer.clone() })
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

fn cancel(id: Uuid) -> SagaEvent {
    SagaEvent::CancelRequested(PaymentCancelRequested {
        event_id: Uuid::new_v4(),
        payment_id: id,
        user_id: Uuid::new_v4(),
        reason: "changed my mind".into(),
        requested_at: at(T0_MS),
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
    let (mut driver, metrics) = saga();
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
    assert_eq!(timer.due_at, at(T0_MS + 60_000), "default timeout 60 s");
    assert_eq!(charge.not_after, Some(at(T0_MS + 45_000)), "no attempt after the deadline");

    pipe(&mut driver, id, outcome(id, DispatchResult::Accepted));
    assert!(results(&mut driver).is_empty());
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    let done = results(&mut driver);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, PaymentResultStatus::Completed);
    assert_eq!(done[0].payment_result_id, PaymentResult::id_for(id, PaymentResultStatus::Completed));
    assert_eq!((done[0].wallet_id, done[0].amount.minor()), (wallet, 12_345));
    // POST→result: from PaymentInitiated's initiatedAt to the result's decision, once.
    let latency = metrics.result_latency.with_label_values(&["COMPLETED"]);
    assert_eq!(latency.get_sample_count(), 1, "the result's latency is observed once");
    let decided_after_ms = done[0].decided_at.timestamp_millis() - T0_MS;
    assert_eq!(
        (latency.get_sample_sum() * 1_000.0).round() as i64,
        decided_after_ms,
        "initiatedAt → decidedAt"
    );
}

#[test]
fn a_provider_failure_fails_and_exhausted_retries_fail_once_a_void_confirms_no_charge() {
    let (mut driver, _) = saga();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    pipe(&mut driver, a, initiated(a, Uuid::new_v4()));
    pipe(&mut driver, a, outcome(a, DispatchResult::Accepted));
    pipe(&mut driver, a, callback(a, ProviderStatus::Failed));
    pipe(&mut driver, b, initiated(b, Uuid::new_v4()));
    pipe(&mut driver, b, outcome(b, DispatchResult::RetriesExhausted));
    assert_eq!(
        results(&mut driver).iter().map(|r| (r.payment_id, r.status)).collect::<Vec<_>>(),
        vec![(a, PaymentResultStatus::Failed)],
        "b is verified, not failed blind"
    );
    let query = one_request(&mut driver);
    assert_eq!(query.payment_id, b);
    assert!(matches!(query.action, ProviderAction::StatusQuery { .. }), "{query:?}");
    pipe(&mut driver, b, answer(&query, DispatchResult::NotCharged));
    let void = one_request(&mut driver);
    assert!(matches!(void.action, ProviderAction::Void { .. }), "{void:?}");
    assert!(results(&mut driver).is_empty(), "no failure before the void is confirmed");
    pipe(&mut driver, b, answer(&void, DispatchResult::Voided));
    let done = results(&mut driver);
    assert_eq!(
        done.iter().map(|r| (r.payment_id, r.status)).collect::<Vec<_>>(),
        vec![(b, PaymentResultStatus::Failed)]
    );
    assert!(
        done[0].reason.contains("RETRIES_EXHAUSTED") && done[0].reason.contains("no charge"),
        "{}",
        done[0].reason
    );
}

/// Seed 000's lost callback: the timer fires while the charge is out, the provider says it
/// charged, the payment completes (the wallet is debited, never refunded).
#[test]
fn a_lost_callback_is_verified_and_completes_when_the_provider_charged() {
    let (mut driver, metrics) = saga();
    let id = Uuid::new_v4();
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    pipe(&mut driver, id, outcome(id, DispatchResult::Accepted));
    pipe(&mut driver, id, fired(id, TimerKind::PaymentTimeout));
    assert!(results(&mut driver).is_empty(), "no FAILED_TIMEOUT on the timer alone");
    let query = one_request(&mut driver);
    pipe(&mut driver, id, answer(&query, DispatchResult::Charged));
    let done = results(&mut driver);
    assert_eq!(done.iter().map(|r| r.status).collect::<Vec<_>>(), vec![PaymentResultStatus::Completed]);
    // The callback turns up after all: absorbed.
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    assert!(results(&mut driver).is_empty() && requests(&mut driver).is_empty());
    assert_eq!(metrics.signals.with_label_values(&["provider_succeeded", "absorbed"]).get(), 1);
}

#[test]
fn the_timer_wins_with_a_confirmed_void_and_a_late_success_is_refunded_and_reconciled_once() {
    let (mut driver, metrics) = saga();
    let (id, wallet) = (Uuid::new_v4(), Uuid::new_v4());
    pipe(&mut driver, id, initiated(id, wallet));
    pipe(&mut driver, id, outcome(id, DispatchResult::Accepted));
    pipe(&mut driver, id, fired(id, TimerKind::PaymentTimeout));
    let query = one_request(&mut driver);
    pipe(&mut driver, id, answer(&query, DispatchResult::NotCharged));
    let void = one_request(&mut driver);
    pipe(&mut driver, id, answer(&void, DispatchResult::Voided));
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    pipe(&mut driver, id, fired(id, TimerKind::PaymentTimeout));
    let done = results(&mut driver);
    assert_eq!(done.len(), 1, "exactly one result: {done:?}");
    assert_eq!(done[0].status, PaymentResultStatus::FailedTimeout);
    let refund = one_request(&mut driver);
    assert_eq!(
        refund.action,
        ProviderAction::Refund {
            amount: Amount::from_minor(12_345).unwrap(),
            currency: "RUB".into(),
            reason: "charged after the payment failed: provider says SUCCEEDED".into(),
        }
    );
    let events = reconciliations(&mut driver);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].discrepancy, events[0].remedy, events[0].published_status, events[0].refund_request_id),
        (
            Discrepancy::ChargedAfterFailure,
            Remedy::RefundRequested,
            PaymentResultStatus::FailedTimeout,
            Some(refund.request_id)
        )
    );
    assert_eq!((events[0].wallet_id, events[0].amount.minor()), (wallet, 12_345));
    assert_eq!(metrics.reconciliations.with_label_values(&["CHARGED_AFTER_FAILURE"]).get(), 1);
    assert_eq!(
        metrics.signals.with_label_values(&["provider_succeeded", "absorbed"]).get(),
        1,
        "the duplicate"
    );
    pipe(&mut driver, id, answer(&refund, DispatchResult::Refunded));
    assert_eq!(metrics.refunds.with_label_values(&["refunded"]).get(), 1);
    pipe(&mut driver, id, callback(id, ProviderStatus::Succeeded));
    assert!(
        results(&mut driver).is_empty()
            && requests(&mut driver).is_empty()
            && reconciliations(&mut driver).is_empty()
    );
}

/// No answer is no decision: the saga asks again with a growing back-off, raises the alert past
/// the bound, and holds the reservation until the provider answers.
#[test]
fn an_unanswered_verification_is_asked_again_alerts_past_its_bound_and_never_guesses() {
    let settings = SagaSettings { verify_rounds_alert: 3, ..SagaSettings::default() };
    let (mut driver, metrics) = saga_with(settings.clone());
    let id = Uuid::new_v4();
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    scheduled(&mut driver);
    pipe(&mut driver, id, fired(id, TimerKind::PaymentTimeout));
    let mut request = one_request(&mut driver);
    let mut ids = vec![request.request_id];
    for round in 1..=5u32 {
        let inconclusive = if round % 2 == 0 { DispatchResult::Pending } else { DispatchResult::Unanswered };
        pipe(&mut driver, id, answer(&request, inconclusive));
        assert!(requests(&mut driver).is_empty(), "nothing is asked before the back-off");
        let retry = scheduled(&mut driver);
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].kind, TimerKind::VerifyRetry);
        let TimerChange::Scheduled { scheduled_at } = retry[0].change else { panic!() };
        let pause = (retry[0].due_at - scheduled_at).to_std().unwrap();
        assert_eq!(pause, settings.verify_backoff(round), "round {round}");
        // A redelivered answer changes nothing.
        pipe(&mut driver, id, answer(&request, inconclusive));
        assert!(scheduled(&mut driver).is_empty() && requests(&mut driver).is_empty());
        pipe(&mut driver, id, fire(&retry[0]));
        request = one_request(&mut driver);
        assert!(matches!(request.action, ProviderAction::StatusQuery { .. }));
        ids.push(request.request_id);
        pipe(&mut driver, id, fire(&retry[0]));
        assert!(requests(&mut driver).is_empty(), "a timer fires once");
    }
    assert_eq!(settings.verify_backoff(1), Duration::from_secs(1));
    assert_eq!(settings.verify_backoff(2), Duration::from_secs(2));
    assert_eq!(settings.verify_backoff(30), Duration::from_secs(60), "capped");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "every round has its own request id");
    assert_eq!(metrics.verification_overdue.get(), 1, "alerted once, at the bound");
    assert!(results(&mut driver).is_empty(), "the reservation is held");
    pipe(&mut driver, id, answer(&request, DispatchResult::Charged));
    assert_eq!(
        results(&mut driver).iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![PaymentResultStatus::Completed]
    );
}

/// An answer to a request that is no longer outstanding is stale: it changes nothing.
#[test]
fn a_stale_answer_is_ignored() {
    let (mut driver, metrics) = saga();
    let id = Uuid::new_v4();
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    pipe(&mut driver, id, outcome(id, DispatchResult::RetriesExhausted));
    let query = one_request(&mut driver);
    let forged = ProviderRequest { request_id: Uuid::new_v4(), ..query.clone() };
    pipe(&mut driver, id, answer(&forged, DispatchResult::NotCharged));
    assert!(requests(&mut driver).is_empty(), "no void on an answer to another request");
    pipe(&mut driver, id, answer(&query, DispatchResult::NotCharged));
    let void = one_request(&mut driver);
    pipe(&mut driver, id, answer(&query, DispatchResult::Charged));
    assert!(results(&mut driver).is_empty(), "the query's answer, again and contradicting, is stale now");
    assert_eq!(metrics.signals.with_label_values(&["NOT_CHARGED", "stale"]).get(), 1);
    assert_eq!(metrics.signals.with_label_values(&["CHARGED", "stale"]).get(), 1);
    pipe(&mut driver, id, answer(&void, DispatchResult::Charged));
    assert_eq!(
        results(&mut driver).iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![PaymentResultStatus::Completed],
        "a void refused as already charged completes"
    );
}

/// An expired command (nothing sent by the run that reports it) skips the question but not the
/// void: a crashed earlier run may have sent it.
#[test]
fn an_expired_command_is_voided_before_it_fails() {
    let (mut driver, _) = saga();
    let id = Uuid::new_v4();
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    let SagaEvent::Outcome(mut expired) = outcome(id, DispatchResult::Expired) else { unreachable!() };
    expired.attempts = 0;
    pipe(&mut driver, id, SagaEvent::Outcome(expired.clone()));
    let void = one_request(&mut driver);
    assert!(matches!(void.action, ProviderAction::Void { .. }), "straight to the void: {void:?}");
    pipe(&mut driver, id, answer(&void, DispatchResult::Voided));
    assert_eq!(
        results(&mut driver).iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![PaymentResultStatus::Failed]
    );

    // Expired after attempts of its own: one of them may have reached the provider.
    let other = Uuid::new_v4();
    pipe(&mut driver, other, initiated(other, Uuid::new_v4()));
    let SagaEvent::Outcome(late) = outcome(other, DispatchResult::Expired) else { unreachable!() };
    pipe(&mut driver, other, SagaEvent::Outcome(DispatchOutcome { attempts: 2, ..late }));
    assert!(matches!(one_request(&mut driver).action, ProviderAction::StatusQuery { .. }));
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

/// An operator's nudge of a stranded reservation (issue 11) sends the payment's PaymentInitiated
/// again. After the result, the saga forwards that very result again — same id, status, reason,
/// decision time — so settlement applies it if it was lost and ignores it if not; no second
/// charge, timer or request, and no new result is counted. Before the result it changes nothing.
#[test]
fn a_repeated_payment_initiated_re_forwards_a_terminal_payments_one_result_and_nothing_else() {
    let (mut driver, metrics) = saga();
    let (completed, timed_out, in_flight) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    pipe(&mut driver, completed, initiated(completed, Uuid::new_v4()));
    pipe(&mut driver, completed, outcome(completed, DispatchResult::Accepted));
    pipe(&mut driver, completed, callback(completed, ProviderStatus::Succeeded));
    pipe(&mut driver, timed_out, initiated(timed_out, Uuid::new_v4()));
    pipe(&mut driver, timed_out, fired(timed_out, TimerKind::PaymentTimeout));
    let query = one_request(&mut driver);
    pipe(&mut driver, timed_out, answer(&query, DispatchResult::NotCharged));
    let void = one_request(&mut driver);
    pipe(&mut driver, timed_out, answer(&void, DispatchResult::Voided));
    pipe(&mut driver, in_flight, initiated(in_flight, Uuid::new_v4()));
    let published = results(&mut driver);
    assert_eq!(
        published.iter().map(|r| (r.payment_id, r.status)).collect::<Vec<_>>(),
        vec![(completed, PaymentResultStatus::Completed), (timed_out, PaymentResultStatus::FailedTimeout)]
    );
    // Reads (and so drains) every side output; true if there was none.
    let silent = |driver: &mut TopologyTestDriver<Uuid, SagaEvent>| {
        let outputs = driver.read_all(topics::PAYMENTS_PROVIDER_COMMANDS).len()
            + scheduled(driver).len()
            + requests(driver).len()
            + reconciliations(driver).len();
        outputs == 0
    };
    assert!(!silent(&mut driver), "the set-up issued commands and timers");

    // Later, so a result made afresh would carry another decision time.
    driver.advance_wall_clock(Duration::from_secs(600)).unwrap();
    for id in [completed, timed_out, in_flight] {
        pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    }
    assert_eq!(
        results(&mut driver),
        published,
        "the same two results, unchanged; none for the one in flight"
    );
    assert!(silent(&mut driver), "no second charge, timer or request");
    assert_eq!(metrics.signals.with_label_values(&["initiated", "reforwarded"]).get(), 2);
    assert_eq!(metrics.signals.with_label_values(&["initiated", "duplicate"]).get(), 1, "in flight");
    assert_eq!(metrics.results.with_label_values(&["COMPLETED"]).get(), 1, "not a new result");
    assert_eq!(metrics.results.with_label_values(&["FAILED_TIMEOUT"]).get(), 1, "not a new result");

    // What is re-forwarded is kept in the store, so it survives a restart.
    driver.restart_from_changelogs().unwrap();
    pipe(&mut driver, completed, initiated(completed, Uuid::new_v4()));
    assert_eq!(results(&mut driver), published[..1]);
    assert!(silent(&mut driver));
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

/// One payment, one trace: the due index keeps the scheduling's `traceparent` (without export,
/// the record's own, passed on unchanged) and the `TimerFired` carries it, through a restart from
/// the changelog too; a timer scheduled without one fires without one.
#[test]
fn a_fired_timer_carries_the_trace_context_of_its_scheduling() {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let topology = timers::topology(AvroDatumCodec, topics::PAYMENTS_TIMERS).unwrap();
    let mut driver = TopologyTestDriver::new(topology, "paystream-timers", ErrorPolicy::Fail, T0_MS).unwrap();
    let (traced, untraced) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, headers) in
        [(traced, vec![("traceparent".to_owned(), TRACEPARENT.as_bytes().to_vec())]), (untraced, vec![])]
    {
        let scheduled = SagaEvent::Timer(TimerEvent {
            timer_id: Uuid::new_v4(),
            payment_id: id,
            kind: TimerKind::PaymentTimeout,
            due_at: at(T0_MS + 10_000),
            change: TimerChange::Scheduled { scheduled_at: at(T0_MS) },
        });
        let bytes = AvroDatumCodec.encode(&scheduled).unwrap();
        driver
            .pipe_with_headers(
                topics::PAYMENTS_TIMERS,
                Some(id.to_string().as_bytes()),
                Some(&bytes),
                T0_MS,
                headers,
            )
            .unwrap();
    }
    driver.restart_from_changelogs().unwrap();
    driver.advance_wall_clock(Duration::from_secs(11)).unwrap();
    let fired = driver.read_all(topics::PAYMENTS_TIMERS);
    assert_eq!(fired.len(), 2, "both timers fired");
    for record in fired {
        let SagaEvent::Timer(timer) = decode(topics::PAYMENTS_TIMERS, record.value.as_deref().unwrap())
        else {
            panic!("not a timer")
        };
        assert!(matches!(timer.change, TimerChange::Fired { .. }), "{timer:?}");
        let header = record.headers.iter().find(|(name, _)| name == "traceparent").map(|(_, v)| v.as_slice());
        if timer.payment_id == traced {
            assert_eq!(
                header,
                Some(TRACEPARENT.as_bytes()),
                "the fired timer continues its scheduling's trace"
            );
        } else {
            assert_eq!(header, None, "a timer scheduled without a context fires without one");
        }
    }
}

/// Issue 16: a cancel while NEW voids the key; a confirmed void ends the payment CANCELED with
/// its one result, and the charge that reaches the provider afterwards (refused for good: 410,
/// REJECTED) and the timer change nothing. The same cancel again is a duplicate.
#[test]
fn a_cancel_while_new_voids_the_key_and_ends_in_one_canceled_result() {
    let (mut driver, metrics) = saga();
    let (id, wallet) = (Uuid::new_v4(), Uuid::new_v4());
    pipe(&mut driver, id, initiated(id, wallet));
    let _ = driver.read_all(topics::PAYMENTS_PROVIDER_COMMANDS);
    pipe(&mut driver, id, cancel(id));
    let void = one_request(&mut driver);
    assert!(
        matches!(&void.action, ProviderAction::Void { reason } if reason == "changed my mind"),
        "{void:?}"
    );
    pipe(&mut driver, id, cancel(id));
    assert!(requests(&mut driver).is_empty(), "the same cancel twice: one void");
    assert!(results(&mut driver).is_empty(), "no result before the provider confirms the void");
    pipe(&mut driver, id, answer(&void, DispatchResult::Voided));
    pipe(&mut driver, id, outcome(id, DispatchResult::Rejected));
    pipe(&mut driver, id, fired(id, TimerKind::PaymentTimeout));
    pipe(&mut driver, id, cancel(id));
    let done = results(&mut driver);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].status, PaymentResultStatus::Canceled);
    assert_eq!(done[0].payment_result_id, PaymentResult::id_for(id, PaymentResultStatus::Canceled));
    assert_eq!((done[0].wallet_id, done[0].amount.minor()), (wallet, 12_345));
    assert!(
        done[0].reason.contains("changed my mind") && done[0].reason.contains("voided"),
        "{}",
        done[0].reason
    );
    assert_eq!(metrics.results.with_label_values(&["CANCELED"]).get(), 1);
    assert_eq!(metrics.signals.with_label_values(&["cancel_requested", "duplicate"]).get(), 1);
    assert_eq!(metrics.signals.with_label_values(&["cancel_requested", "absorbed"]).get(), 1);
}

/// Once the charge is out, the void is refused as already charged: the payment completes and
/// the cancel is refused; a status query that was out is replaced by the cancel's void.
#[test]
fn a_cancel_after_the_charge_completes_when_the_provider_already_charged() {
    let (mut driver, _) = saga();
    let id = Uuid::new_v4();
    pipe(&mut driver, id, initiated(id, Uuid::new_v4()));
    pipe(&mut driver, id, outcome(id, DispatchResult::Accepted));
    pipe(&mut driver, id, fired(id, TimerKind::PaymentTimeout));
    let query = one_request(&mut driver);
    assert!(matches!(query.action, ProviderAction::StatusQuery { .. }), "{query:?}");
    pipe(&mut driver, id, cancel(id));
    let void = one_request(&mut driver);
    assert!(matches!(void.action, ProviderAction::Void { .. }), "{void:?}");
    pipe(&mut driver, id, answer(&query, DispatchResult::NotCharged));
    assert!(
        requests(&mut driver).is_empty() && results(&mut driver).is_empty(),
        "the query's answer is stale"
    );
    pipe(&mut driver, id, answer(&void, DispatchResult::Pending));
    assert!(results(&mut driver).is_empty(), "a pending charge: ask again later");
    let retry = scheduled(&mut driver).into_iter().find(|t| t.kind == TimerKind::VerifyRetry).unwrap();
    pipe(&mut driver, id, fire(&retry));
    let again = one_request(&mut driver);
    assert!(matches!(again.action, ProviderAction::Void { .. }), "{again:?}");
    pipe(&mut driver, id, answer(&again, DispatchResult::Charged));
    let done = results(&mut driver);
    assert_eq!(done.iter().map(|r| r.status).collect::<Vec<_>>(), vec![PaymentResultStatus::Completed]);
}

/// A cancel that arrives before its payment is kept, and applied once the payment appears; the
/// provider's callback decides over a cancel whose void is out.
#[test]
fn an_early_cancel_is_kept_and_a_callback_beats_a_cancel_in_flight() {
    let (mut driver, _) = saga();
    let (early, raced) = (Uuid::new_v4(), Uuid::new_v4());
    pipe(&mut driver, early, cancel(early));
    assert!(requests(&mut driver).is_empty());
    pipe(&mut driver, early, initiated(early, Uuid::new_v4()));
    let void = one_request(&mut driver);
    assert_eq!(void.payment_id, early);
    pipe(&mut driver, early, answer(&void, DispatchResult::Voided));

    pipe(&mut driver, raced, initiated(raced, Uuid::new_v4()));
    pipe(&mut driver, raced, outcome(raced, DispatchResult::Accepted));
    pipe(&mut driver, raced, cancel(raced));
    let raced_void = one_request(&mut driver);
    pipe(&mut driver, raced, callback(raced, ProviderStatus::Succeeded));
    pipe(&mut driver, raced, answer(&raced_void, DispatchResult::Charged));
    let done = results(&mut driver);
    assert_eq!(
        done.iter().map(|r| (r.payment_id, r.status)).collect::<Vec<_>>(),
        vec![(early, PaymentResultStatus::Canceled), (raced, PaymentResultStatus::Completed)]
    );
}
