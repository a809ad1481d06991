//! The contracts without a registry: every `.avsc` parses, every event survives an Avro
//! round trip through its own schema (property-tested), unknown enum symbols read as the
//! default, and every event's topic is one the stack creates.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use paystream_schemas::events::*;
use paystream_schemas::money::AMOUNT_MAX_MINOR;
use paystream_schemas::registry::catalog;
use paystream_schemas::time::{from_micros, Timestamp};
use paystream_schemas::{Amount, Event};
use proptest::prelude::*;
use uuid::Uuid;

fn round_trip<E: Event + PartialEq + std::fmt::Debug>(event: &E) {
    let writer = GenericDatumWriter::builder(E::schema()).build().unwrap();
    let bytes = writer.write_value_to_vec(event.to_avro()).expect("encodes with its own schema");
    let reader = GenericDatumReader::builder(E::schema()).build().unwrap();
    let value = reader.read_value(&mut bytes.as_slice()).expect("decodes");
    assert_eq!(&E::from_avro(value).expect("valid event"), event);
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}
fn amount() -> impl Strategy<Value = Amount> {
    (1..=AMOUNT_MAX_MINOR).prop_map(|m| Amount::from_minor(m).unwrap())
}
fn timestamp() -> impl Strategy<Value = Timestamp> {
    // Year 1 to 9999, the range a payments system can meet.
    (-62_135_596_800_000_000i64..=253_402_300_799_999_999).prop_map(|m| from_micros(m).unwrap())
}
fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

proptest! {
    #[test]
    fn payment_initiated_round_trips(
        ids in (uuid(), uuid(), uuid()), amount in amount(), currency in "[A-Z]{3}",
        kind in text(), description in text(), at in (timestamp(), timestamp()),
    ) {
        round_trip(&PaymentInitiated {
            event_id: ids.0, payment_id: ids.1, wallet_id: ids.2, amount, currency, kind, description,
            requested_at: at.0, initiated_at: at.1,
        });
    }

    #[test]
    fn callback_round_trips(ids in (uuid(), uuid()), provider_event_id in text(), status in 0..3usize,
                            description in text(), at in (timestamp(), timestamp())) {
        round_trip(&ProviderCallbackReceived {
            event_id: ids.0, payment_id: ids.1, provider_event_id,
            status: ProviderStatus::from_symbol(ProviderStatus::SYMBOLS[status]),
            description, provider_timestamp: at.0, received_at: at.1,
        });
    }

    #[test]
    fn result_round_trips(ids in (uuid(), uuid()), amount in amount(), status in 0..4usize,
                          reason in text(), at in timestamp()) {
        let status = PaymentResultStatus::from_symbol(PaymentResultStatus::SYMBOLS[status]);
        round_trip(&PaymentResult {
            payment_result_id: PaymentResult::id_for(ids.0, status), payment_id: ids.0, wallet_id: ids.1,
            amount, status, reason, decided_at: at,
        });
    }

    #[test]
    fn commands_outcomes_and_timers_round_trip(
        ids in (uuid(), uuid(), uuid()), amount in amount(), text in text(), at in (timestamp(), timestamp()),
        outcome in 0..DispatchResult::SYMBOLS.len(), attempts in 0..100i32,
        kind in 0..TimerKind::SYMBOLS.len(), fired in any::<bool>(), deadline in any::<bool>(),
    ) {
        round_trip(&ChargeCommand {
            command_id: ids.0, payment_id: ids.1, wallet_id: ids.2, amount, currency: "RUB".into(),
            description: text.clone(), issued_at: at.0, not_after: deadline.then_some(at.1),
        });
        round_trip(&DispatchOutcome {
            command_id: ids.0, payment_id: ids.1,
            outcome: DispatchResult::from_symbol(DispatchResult::SYMBOLS[outcome]),
            attempts, detail: text, decided_at: at.0,
        });
        round_trip(&TimerEvent {
            timer_id: ids.0, payment_id: ids.1, kind: TimerKind::from_symbol(TimerKind::SYMBOLS[kind]),
            due_at: at.0,
            change: if fired { TimerChange::Fired { fired_at: at.1 } } else { TimerChange::Scheduled { scheduled_at: at.1 } },
        });
    }
}

proptest! {
    #[test]
    fn provider_requests_and_reconciliation_events_round_trip(
        ids in (uuid(), uuid(), uuid()), amount in amount(), text in text(), at in timestamp(),
        action in 0..3usize, status in 0..PaymentResultStatus::SYMBOLS.len(), refund in any::<bool>(),
    ) {
        let action = match action {
            0 => ProviderAction::StatusQuery { reason: text.clone() },
            1 => ProviderAction::Void { reason: text.clone() },
            _ => ProviderAction::Refund { amount, currency: "EUR".into(), reason: text.clone() },
        };
        round_trip(&ProviderRequest { request_id: ids.0, payment_id: ids.1, action, issued_at: at });
        round_trip(&ReconciliationEvent {
            event_id: ReconciliationEvent::id_for(ids.1, Discrepancy::ChargedAfterFailure),
            payment_id: ids.1, wallet_id: ids.2, amount, currency: "RUB".into(),
            discrepancy: Discrepancy::ChargedAfterFailure, remedy: Remedy::RefundRequested,
            published_status: PaymentResultStatus::from_symbol(PaymentResultStatus::SYMBOLS[status]),
            refund_request_id: refund.then_some(ids.0), evidence: text, detected_at: at,
        });
    }
}

/// A ChargeCommand written before `notAfter` existed reads with no deadline, and one
/// without a deadline never expires.
#[test]
fn an_old_charge_command_reads_without_a_deadline() {
    // The contract of before: the same record without its last field.
    let mut before: serde_json::Value = serde_json::from_str(ChargeCommand::SCHEMA_JSON).unwrap();
    before["fields"].as_array_mut().unwrap().retain(|f| f["name"] != "notAfter");
    let before = Schema::parse_str(&before.to_string()).unwrap();
    let command = ChargeCommand {
        command_id: Uuid::new_v4(),
        payment_id: Uuid::new_v4(),
        wallet_id: Uuid::new_v4(),
        amount: Amount::from_minor(100).unwrap(),
        currency: "RUB".into(),
        description: "tea".into(),
        issued_at: from_micros(1_000).unwrap(),
        not_after: None,
    };
    let mut value = command.to_avro();
    if let Value::Record(fields) = &mut value {
        fields.retain(|(name, _)| name != "notAfter");
    }
    let bytes = GenericDatumWriter::builder(&before).build().unwrap().write_value_to_vec(value).unwrap();
    let mut written =
        GenericDatumReader::builder(&before).build().unwrap().read_value(&mut bytes.as_slice()).unwrap();
    // Sign-extend the amount to the precision's width first, as the codec does before resolving
    // (apache-avro refuses minimal-length decimals; see `schemas/src/codec.rs`).
    if let Value::Record(fields) = &mut written {
        for (name, field) in fields.iter_mut() {
            if name == "amount" {
                let Value::Decimal(d) = field else { panic!("amount is a decimal") };
                let minimal = Vec::<u8>::try_from(&*d).unwrap();
                let mut wide = vec![0u8; 8 - minimal.len()];
                wide.extend_from_slice(&minimal);
                *field = Value::Decimal(apache_avro::Decimal::from(wide));
            }
        }
    }
    let read = ChargeCommand::from_avro(written.resolve(ChargeCommand::schema()).unwrap()).unwrap();
    assert_eq!(read, command);
    assert!(!read.is_expired_at(from_micros(i64::MAX / 2).unwrap()));
    let with_deadline = ChargeCommand { not_after: Some(from_micros(2_000).unwrap()), ..command };
    assert!(
        !with_deadline.is_expired_at(from_micros(2_000).unwrap()),
        "the deadline itself is still in time"
    );
    assert!(with_deadline.is_expired_at(from_micros(2_001).unwrap()));
}

#[test]
fn every_contract_parses_and_names_its_subject_after_its_topic() {
    let stack_topics: Vec<String> =
        paystream_stack::kafka::payment_topics(6).into_iter().map(|t| t.name).collect();
    for contract in catalog() {
        let schema = Schema::parse_str(contract.schema).unwrap_or_else(|e| panic!("{}: {e}", contract.name));
        assert_eq!(schema.name().map(|n| n.name()), Some(contract.name));
        let topic = contract.subject.strip_suffix("-value").expect("TopicNameStrategy value subject");
        assert!(
            stack_topics.iter().any(|t| t == topic),
            "{topic} is not created by `paystream topics create`"
        );
    }
}

#[test]
fn a_symbol_this_build_does_not_know_reads_as_the_default() {
    // A newer writer adds CHARGEBACK; an older reader resolves it to the enum default.
    let newer = Value::Enum(3, "CHARGEBACK".into());
    let reader = Schema::parse_str(
        r#"{"type":"enum","name":"PaymentResultStatus","symbols":["UNKNOWN","COMPLETED","FAILED","FAILED_TIMEOUT"],"default":"UNKNOWN"}"#,
    )
    .unwrap();
    assert_eq!(newer.resolve(&reader).unwrap(), Value::Enum(0, "UNKNOWN".into()));
    assert_eq!(PaymentResultStatus::from_symbol("CHARGEBACK"), PaymentResultStatus::Unknown);
}

#[test]
fn result_ids_are_deterministic_per_payment_and_outcome() {
    let payment = Uuid::new_v4();
    let completed = PaymentResult::id_for(payment, PaymentResultStatus::Completed);
    assert_eq!(completed, PaymentResult::id_for(payment, PaymentResultStatus::Completed));
    assert_ne!(completed, PaymentResult::id_for(payment, PaymentResultStatus::FailedTimeout));
    assert_ne!(completed, PaymentResult::id_for(Uuid::new_v4(), PaymentResultStatus::Completed));
    assert_eq!(completed.get_version_num(), 5);
}

#[test]
fn a_record_that_breaks_the_contract_is_a_typed_error() {
    let mut value = PaymentResult {
        payment_result_id: Uuid::nil(),
        payment_id: Uuid::nil(),
        wallet_id: Uuid::nil(),
        amount: Amount::from_minor(100).unwrap(),
        status: PaymentResultStatus::Completed,
        reason: String::new(),
        decided_at: from_micros(0).unwrap(),
    }
    .to_avro();
    if let Value::Record(fields) = &mut value {
        fields.retain(|(name, _)| name != "reason");
    }
    let error = PaymentResult::from_avro(value).unwrap_err();
    assert_eq!(error.to_string(), "field reason is missing");
}

proptest! {
    /// The read side's contracts, with every nullable field both null and set.
    #[test]
    fn payment_views_and_timeline_events_round_trip(
        ids in (uuid(), uuid(), uuid()), amount in amount(), text in text(), at in (timestamp(), timestamp()),
        known in any::<bool>(), version in 1..i64::MAX, seq in 1..i32::MAX,
        trace in proptest::option::of("[0-9a-f]{32}"),
    ) {
        round_trip(&PaymentView {
            payment_id: ids.0,
            wallet_id: known.then_some(ids.1),
            amount: known.then_some(amount),
            currency: known.then(|| "RUB".to_owned()),
            kind: known.then(|| text.clone()),
            description: known.then(|| text.clone()),
            status: "COMPLETED".into(),
            reason: (!known).then(|| text.clone()),
            created_at: known.then_some(at.0),
            updated_at: at.1,
            version,
            result_id: (!known).then_some(ids.2),
            trace_id: trace.clone(),
        });
        round_trip(&PaymentTimelineEvent {
            payment_id: ids.0, seq, kind: "RESULT".into(), detail: text, at: at.0, trace_id: trace,
        });
    }
}
