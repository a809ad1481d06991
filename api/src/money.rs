//! Exact decimal amounts in JSON.
//!
//! Clients send amounts as JSON numbers (`"amount": 999999999.99`, as the seeds do). A
//! number parsed through `f64` can silently become another amount, so the field is read
//! as the number's raw text and parsed as a decimal; written back the same way.

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::value::RawValue;

/// `#[serde(deserialize_with = "money::exact")]`: a JSON number, parsed exactly.
pub fn exact<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let raw = <&RawValue>::deserialize(deserializer)?;
    let text = raw.get();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(D::Error::custom("amount must be a JSON number"));
    }
    Decimal::from_str_exact(text).map_err(|_| D::Error::custom("amount must be a plain decimal number"))
}

/// `#[serde(serialize_with = "money::to_number")]`: an amount as a JSON number with
/// exactly two decimal places (`0.00`, `250.50`), whatever scale the database returned.
pub fn to_number<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    let mut value = *value;
    value.rescale(paystream_schemas::money::SCALE);
    let raw = RawValue::from_string(value.to_string()).map_err(serde::ser::Error::custom)?;
    serde::Serialize::serialize(&raw, serializer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Deserialize, Serialize)]
    struct Body {
        #[serde(deserialize_with = "exact", serialize_with = "to_number")]
        amount: Decimal,
    }

    #[test]
    fn numbers_are_read_and_written_exactly() {
        let body: Body = serde_json::from_str(r#"{"amount": 999999999.99}"#).unwrap();
        assert_eq!(body.amount.to_string(), "999999999.99");
        let body: Body = serde_json::from_str(r#"{"amount": 0.1000000000000000001}"#).unwrap();
        assert_eq!(body.amount.to_string(), "0.1000000000000000001", "no float rounding");
        let zero = Body { amount: Decimal::ZERO };
        assert_eq!(serde_json::to_string(&zero).unwrap(), r#"{"amount":0.00}"#);
        let body: Body = serde_json::from_str(r#"{"amount": 250.5}"#).unwrap();
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"amount":250.50}"#);
        assert!(serde_json::from_str::<Body>(r#"{"amount": "12.50"}"#).is_err(), "strings are not amounts");
        assert!(serde_json::from_str::<Body>(r#"{"amount": 1e3}"#).is_err(), "no exponents");
    }
}
