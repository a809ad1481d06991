//! `CANCELED` joins `PaymentResult`'s status enum (issue 16), the safe way, against the real
//! registry on a subject of the test's own:
//!
//! - the new contract passes paystream's rule, FULL_TRANSITIVE, against the previous one
//!   (`tests/fixtures/PaymentResult.v1.avsc`, the contract as it was before the symbol), because
//!   the enum has a default symbol;
//! - a reader still on the previous contract decodes a CANCELED result, as UNKNOWN (so an old
//!   settlement dead-letters it as `unknown-status` instead of misreading it);
//! - a reader on the new contract decodes it as CANCELED, and still reads old results.

mod common;

use apache_avro::types::Value;
use apache_avro::Schema;
use common::*;
use paystream_schemas::events::{PaymentResult, PaymentResultStatus};
use paystream_schemas::registry::{CheckOutcome, CONTRACT_COMPATIBILITY};
use paystream_schemas::{time, Amount, Event};
use uuid::Uuid;

/// `PaymentResult.avsc` before CANCELED.
const PREVIOUS: &str = include_str!("fixtures/PaymentResult.v1.avsc");

fn result(status: PaymentResultStatus) -> PaymentResult {
    let payment_id = Uuid::new_v4();
    PaymentResult {
        payment_result_id: PaymentResult::id_for(payment_id, status),
        payment_id,
        wallet_id: Uuid::new_v4(),
        amount: Amount::from_minor(1_250).unwrap(),
        status,
        reason: "cancelled by its owner; the provider voided the charge".into(),
        decided_at: time::now(),
    }
}

#[test]
fn the_previous_contract_is_the_current_one_without_canceled() {
    let previous = Schema::parse_str(PREVIOUS).unwrap();
    let Schema::Record(previous) = previous else { panic!("PaymentResult is a record") };
    let Schema::Record(current) = PaymentResult::schema() else { panic!("PaymentResult is a record") };
    let names = |fields: &[apache_avro::schema::RecordField]| {
        fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&previous.fields), names(&current.fields), "only the enum changed");
    assert!(!PREVIOUS.contains("CANCELED"));
    assert!(PaymentResultStatus::SYMBOLS.contains(&"CANCELED"));
    assert_eq!(PaymentResultStatus::SYMBOLS.last(), Some(&"CANCELED"), "a symbol is only ever appended");
}

#[tokio::test(flavor = "multi_thread")]
async fn canceled_passes_full_transitive_and_an_old_reader_decodes_it_as_unknown() {
    let (settings, registry, old_codec) = registry().await;
    let topic = unique("it.canceled");
    let subject = format!("{topic}-value");
    registry.register_with_rule(&subject, PREVIOUS, CONTRACT_COMPATIBILITY).await.unwrap();

    assert_eq!(
        registry.check(&subject, PaymentResult::SCHEMA_JSON).await.unwrap(),
        CheckOutcome::Compatible,
        "the new contract against the previous under {CONTRACT_COMPATIBILITY:?}"
    );
    registry.register(&subject, PaymentResult::SCHEMA_JSON).await.expect("registered under FULL_TRANSITIVE");

    // A writer on the new contract (a codec writes one version per subject), one on the old.
    let new_codec = paystream_schemas::EventCodec::new(&settings.schema_registry_url).unwrap();
    let canceled = result(PaymentResultStatus::Canceled);
    let canceled_bytes =
        new_codec.encode_value(&topic, PaymentResult::SCHEMA_JSON, canceled.to_avro()).await.unwrap();
    let completed = result(PaymentResultStatus::Completed);
    let completed_bytes = old_codec.encode_value(&topic, PREVIOUS, completed.to_avro()).await.unwrap();

    // The old reader: CANCELED is the enum's default, everything else as written.
    let previous = Schema::parse_str(PREVIOUS).unwrap();
    let seen_by_old = old_codec.decode_value(&canceled_bytes, &previous).await.unwrap();
    let Value::Record(fields) = &seen_by_old else { panic!("not a record: {seen_by_old:?}") };
    let status = &fields.iter().find(|(name, _)| name == "status").unwrap().1;
    assert_eq!(status, &Value::Enum(0, "UNKNOWN".into()));
    let read = PaymentResult::from_avro(seen_by_old).unwrap();
    assert_eq!(read.status, PaymentResultStatus::Unknown);
    assert_eq!(read.payment_id, canceled.payment_id);
    assert_eq!(read.amount, canceled.amount);
    assert_eq!(read.reason, canceled.reason);

    // The new reader: CANCELED as written, and an old record as it was.
    let current = PaymentResult::schema();
    let seen_by_new = new_codec.decode_value(&canceled_bytes, current).await.unwrap();
    assert_eq!(PaymentResult::from_avro(seen_by_new).unwrap(), canceled);
    let old_seen_by_new = new_codec.decode_value(&completed_bytes, current).await.unwrap();
    assert_eq!(PaymentResult::from_avro(old_seen_by_new).unwrap(), completed);

    registry.delete_subject(&subject).await.unwrap();
}
