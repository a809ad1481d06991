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
        outcome in 0..4usize, attempts in 1..100i32, kind in 0..3usize, fired in any::<bool>(),
    ) {
        round_trip(&ChargeCommand {
            command_id: ids.0, payment_id: ids.1, wallet_id: ids.2, amount, currency: "RUB".into(),
            description: text.clone(), issued_at: at.0,
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
