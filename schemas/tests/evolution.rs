//! Contract evolution against the real registry, on subjects of the tests' own.
//!
//! - BACKWARD (the registry's global default, kept for CDC subjects) accepts an optional
//!   field with a default and refuses a new required field or a changed type with 409.
//! - FULL_TRANSITIVE (paystream's rule for its own contracts) also refuses removing a
//!   field that has no default, because old readers still need it.
//! - A reader on the old schema decodes records written with the new one, and the other
//!   way round; a symbol added to an enum with a default reads as that default.

mod common;

use apache_avro::types::Value;
use apache_avro::Schema;
use common::*;
use paystream_schemas::registry::{error_code, CheckOutcome, Compatibility, RegistryClient};

const V1: &str = r#"{"type":"record","name":"Evolving","namespace":"it.paystream","fields":[
  {"name":"id","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}},
  {"name":"note","type":"string"},
  {"name":"state","type":{"type":"enum","name":"State","symbols":["UNKNOWN","OPEN","DONE"],"default":"UNKNOWN"}}]}"#;

/// V1 plus an optional field with a default, and a new enum symbol.
const V2: &str = r#"{"type":"record","name":"Evolving","namespace":"it.paystream","fields":[
  {"name":"id","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}},
  {"name":"note","type":"string"},
  {"name":"state","type":{"type":"enum","name":"State","symbols":["UNKNOWN","OPEN","DONE","DISPUTED"],"default":"UNKNOWN"}},
  {"name":"channel","type":["null","string"],"default":null}]}"#;

/// V1 plus a field old records do not have and that has no default.
const ADDS_REQUIRED: &str = r#"{"type":"record","name":"Evolving","namespace":"it.paystream","fields":[
  {"name":"id","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}},
  {"name":"note","type":"string"},
  {"name":"state","type":{"type":"enum","name":"State","symbols":["UNKNOWN","OPEN","DONE"],"default":"UNKNOWN"}},
  {"name":"merchant","type":"string"}]}"#;

/// V1 without `note`, which has no default.
const REMOVES_NOTE: &str = r#"{"type":"record","name":"Evolving","namespace":"it.paystream","fields":[
  {"name":"id","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}},
  {"name":"state","type":{"type":"enum","name":"State","symbols":["UNKNOWN","OPEN","DONE"],"default":"UNKNOWN"}}]}"#;

/// V1 with `note` as an int.
const CHANGES_TYPE: &str = r#"{"type":"record","name":"Evolving","namespace":"it.paystream","fields":[
  {"name":"id","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}},
  {"name":"note","type":"int"},
  {"name":"state","type":{"type":"enum","name":"State","symbols":["UNKNOWN","OPEN","DONE"],"default":"UNKNOWN"}}]}"#;

async fn refused_with_409(registry: &RegistryClient, subject: &str, schema: &str, what: &str) {
    let error = registry.register(subject, schema).await.expect_err(what);
    assert_eq!(error.error_code(), Some(error_code::INCOMPATIBLE_SCHEMA), "{what}: {error}");
    assert!(
        matches!(error, paystream_schemas::registry::RegistryError::Api { status: 409, .. }),
        "{what}: {error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backward_accepts_optional_fields_and_refuses_required_ones_and_type_changes() {
    let (_, registry, _) = registry().await;
    let subject = format!("{}-value", unique("it.evolution"));
    let v1 = registry.register_with_rule(&subject, V1, Compatibility::Backward).await.unwrap();
    assert_eq!(registry.compatibility(&subject).await.unwrap(), Compatibility::Backward);
    assert_eq!(registry.register(&subject, V1).await.unwrap(), v1, "same schema, same id");

    assert_eq!(registry.check(&subject, V2).await.unwrap(), CheckOutcome::Compatible);
    let v2 = registry.register(&subject, V2).await.expect("optional field with a default passes BACKWARD");
    assert_ne!(v1, v2);

    refused_with_409(&registry, &subject, ADDS_REQUIRED, "a required field without default").await;
    refused_with_409(&registry, &subject, CHANGES_TYPE, "a changed type").await;
    registry.delete_subject(&subject).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn paystreams_rule_also_refuses_removing_a_field_without_default() {
    let (_, registry, _) = registry().await;
    let subject = format!("{}-value", unique("it.evolution"));
    registry
        .register_with_rule(&subject, V1, paystream_schemas::registry::CONTRACT_COMPATIBILITY)
        .await
        .unwrap();
    assert_eq!(registry.compatibility(&subject).await.unwrap(), Compatibility::FullTransitive);

    assert!(matches!(
        registry.check(&subject, REMOVES_NOTE).await.unwrap(),
        CheckOutcome::Incompatible { .. }
    ));
    refused_with_409(&registry, &subject, REMOVES_NOTE, "removing a field without default").await;
    refused_with_409(&registry, &subject, CHANGES_TYPE, "a changed type").await;
    registry.register(&subject, V2).await.expect("optional field and enum symbol with default pass FULL");
    registry.delete_subject(&subject).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_schemas_are_refused_with_42201() {
    let (_, registry, _) = registry().await;
    let subject = format!("{}-value", unique("it.evolution"));
    let error =
        registry.register(&subject, r#"{"type":"record","name":"Broken","fields":[{"name":"x"}]}"#).await;
    let error = error.expect_err("a field without a type is not a schema");
    assert_eq!(error.error_code(), Some(error_code::INVALID_SCHEMA), "{error}");
}

fn record(v2: bool, state: &str, state_index: u32) -> Value {
    let mut fields = vec![
        ("id".to_owned(), Value::String("p-1".into())),
        ("amount".to_owned(), Value::Decimal(apache_avro::Decimal::from(vec![0x30u8, 0x39]))), // 123.45
        ("note".to_owned(), Value::String("first".into())),
        ("state".to_owned(), Value::Enum(state_index, state.into())),
    ];
    if v2 {
        fields.push(("channel".to_owned(), Value::Union(1, Box::new(Value::String("app".into())))));
    }
    Value::Record(fields)
}

fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    let Value::Record(fields) = value else { panic!("not a record: {value:?}") };
    &fields.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no field {name}")).1
}

#[tokio::test(flavor = "multi_thread")]
async fn old_readers_read_new_records_and_new_readers_old_ones() {
    let (_, registry, codec) = registry().await;
    let topic = unique("it.evolution");
    let subject = format!("{topic}-value");
    registry
        .register_with_rule(&subject, V1, paystream_schemas::registry::CONTRACT_COMPATIBILITY)
        .await
        .unwrap();
    let (v1, v2) = (Schema::parse_str(V1).unwrap(), Schema::parse_str(V2).unwrap());

    // Two producers: one still on V1, one already on V2 (a codec writes one version per subject).
    let old_bytes = codec.encode_value(&topic, V1, record(false, "OPEN", 1)).await.unwrap();
    let newer =
        paystream_schemas::EventCodec::new(&paystream_stack::StackSettings::from_env().schema_registry_url)
            .unwrap();
    let new_bytes = newer.encode_value(&topic, V2, record(true, "DISPUTED", 3)).await.unwrap();
    assert_ne!(old_bytes[1..5], new_bytes[1..5], "each is framed with its own writer schema id");

    // The old reader: the new field is skipped, the new symbol reads as the default.
    let seen_by_old = codec.decode_value(&new_bytes, &v1).await.unwrap();
    assert_eq!(field(&seen_by_old, "note"), &Value::String("first".into()));
    assert_eq!(field(&seen_by_old, "state"), &Value::Enum(0, "UNKNOWN".into()));
    let Value::Record(fields) = &seen_by_old else { unreachable!() };
    assert!(fields.iter().all(|(k, _)| k != "channel"), "old reader has no channel field");

    // The new reader: the missing field takes its default.
    let seen_by_new = codec.decode_value(&old_bytes, &v2).await.unwrap();
    assert_eq!(field(&seen_by_new, "channel"), &Value::Union(0, Box::new(Value::Null)));
    assert_eq!(field(&seen_by_new, "state"), &Value::Enum(1, "OPEN".into()));
    let Value::Decimal(amount) = field(&seen_by_new, "amount") else { panic!("amount is not a decimal") };
    let amount = paystream_schemas::Amount::from_avro_bytes(&Vec::<u8>::try_from(amount).unwrap()).unwrap();
    assert_eq!(amount.to_string(), "123.45");

    registry.delete_subject(&subject).await.unwrap();
}
