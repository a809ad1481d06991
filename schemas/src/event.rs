//! The [`Event`] trait every contract implements, and [`RecordReader`], which turns an
//! Avro record into typed fields.
//!
//! Conversion is written out per event instead of derived through serde: Avro's logical
//! types (decimal, uuid, timestamp-micros) and enum defaults are exactly where derived
//! mappings go wrong, and money is the last place for surprises.

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use uuid::Uuid;

use crate::money::{Amount, AmountError};
use crate::time::{self, Timestamp};

/// Why an Avro value is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("expected a record, got {0}")]
    NotARecord(String),
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("field {field} has the wrong type: {found}")]
    WrongType { field: &'static str, found: String },
    #[error("field {field}: {source}")]
    Amount { field: &'static str, source: AmountError },
    #[error("field {field} is not a UUID: {value}")]
    BadUuid { field: &'static str, value: String },
    #[error("field {field} is out of range: {value}")]
    OutOfRange { field: &'static str, value: String },
}

/// A paystream event: an Avro contract in `schemas/avro/`, the topic it travels on, and
/// the conversion between the Rust type and the Avro value.
pub trait Event: Sized + Send + Sync + 'static {
    /// The contract, as written in `schemas/avro/<Name>.avsc`.
    const SCHEMA_JSON: &'static str;
    /// The topic the event travels on; its value subject is `<TOPIC>-value`.
    const TOPIC: &'static str;

    /// The parsed contract (parsed once).
    fn schema() -> &'static Schema;

    /// The Avro value of this event (a record matching [`Event::schema`]).
    fn to_avro(&self) -> Value;

    /// The event from an Avro value already resolved to [`Event::schema`].
    fn from_avro(value: Value) -> Result<Self, ContractError>;

    /// The registry subject of the event's value (TopicNameStrategy).
    fn subject() -> String {
        format!("{}-value", Self::TOPIC)
    }
}

/// Parses an embedded contract. The contracts are compiled in and covered by tests, so a
/// parse failure is a programmer error, not an operating condition.
pub(crate) fn parse_contract(name: &str, json: &str) -> Schema {
    Schema::parse_str(json).unwrap_or_else(|e| panic!("schemas/avro/{name}.avsc does not parse: {e}"))
}

/// Typed access to the fields of an Avro record.
pub struct RecordReader {
    fields: HashMap<String, Value>,
}

impl RecordReader {
    pub fn new(value: Value) -> Result<Self, ContractError> {
        match value {
            Value::Record(fields) => Ok(Self { fields: fields.into_iter().collect() }),
            other => Err(ContractError::NotARecord(kind(&other))),
        }
    }

    fn take(&mut self, field: &'static str) -> Result<Value, ContractError> {
        self.fields.remove(field).ok_or(ContractError::Missing(field))
    }

    pub fn string(&mut self, field: &'static str) -> Result<String, ContractError> {
        match self.take(field)? {
            Value::String(s) => Ok(s),
            other => Err(wrong(field, &other)),
        }
    }

    pub fn uuid(&mut self, field: &'static str) -> Result<Uuid, ContractError> {
        match self.take(field)? {
            Value::Uuid(u) => Ok(u),
            Value::String(s) => Uuid::parse_str(&s).map_err(|_| ContractError::BadUuid { field, value: s }),
            other => Err(wrong(field, &other)),
        }
    }

    pub fn amount(&mut self, field: &'static str) -> Result<Amount, ContractError> {
        let bytes = match self.take(field)? {
            Value::Decimal(d) => Vec::<u8>::try_from(d)
                .map_err(|e| ContractError::WrongType { field, found: e.to_string() })?,
            Value::Bytes(b) => b,
            other => return Err(wrong(field, &other)),
        };
        Amount::from_avro_bytes(&bytes).map_err(|source| ContractError::Amount { field, source })
    }

    pub fn timestamp(&mut self, field: &'static str) -> Result<Timestamp, ContractError> {
        match self.take(field)? {
            Value::TimestampMicros(micros) | Value::Long(micros) => time::from_micros(micros)
                .ok_or(ContractError::OutOfRange { field, value: micros.to_string() }),
            other => Err(wrong(field, &other)),
        }
    }

    pub fn int(&mut self, field: &'static str) -> Result<i32, ContractError> {
        match self.take(field)? {
            Value::Int(n) => Ok(n),
            other => Err(wrong(field, &other)),
        }
    }

    pub fn long(&mut self, field: &'static str) -> Result<i64, ContractError> {
        match self.take(field)? {
            Value::Long(n) => Ok(n),
            other => Err(wrong(field, &other)),
        }
    }

    /// An enum symbol (readers of older schemas get the enum's default symbol for new ones).
    pub fn symbol(&mut self, field: &'static str) -> Result<String, ContractError> {
        match self.take(field)? {
            Value::Enum(_, symbol) => Ok(symbol),
            other => Err(wrong(field, &other)),
        }
    }

    /// The branch of a union: its index and value.
    pub fn union(&mut self, field: &'static str) -> Result<(u32, Value), ContractError> {
        match self.take(field)? {
            Value::Union(index, value) => Ok((index, *value)),
            other => Err(wrong(field, &other)),
        }
    }
}

fn wrong(field: &'static str, found: &Value) -> ContractError {
    ContractError::WrongType { field, found: kind(found) }
}

fn kind(value: &Value) -> String {
    let debug = format!("{value:?}");
    debug.split(['(', ' ']).next().unwrap_or("value").to_owned()
}

/// Builders for Avro values of the logical types paystream uses.
pub mod avro {
    use super::*;

    pub fn uuid(u: Uuid) -> Value {
        Value::Uuid(u)
    }

    pub fn amount(a: Amount) -> Value {
        Value::Decimal(apache_avro::Decimal::from(a.to_avro_bytes()))
    }

    pub fn timestamp(at: Timestamp) -> Value {
        Value::TimestampMicros(time::to_micros(at))
    }

    pub fn string(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    /// An enum value; `symbols` is the contract's symbol list.
    pub fn symbol(symbols: &[&str], symbol: &str) -> Value {
        let index = symbols.iter().position(|s| *s == symbol).expect("symbol is one of the contract's");
        Value::Enum(u32::try_from(index).expect("few symbols"), symbol.to_owned())
    }

    pub fn record(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}
