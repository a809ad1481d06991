//! Exact decimal amounts in JSON.
//!
//! Clients send amounts as JSON numbers (`"amount": 999999999.99`, as the seeds do). A
//! number parsed through `f64` can silently become another amount, so the field is read
//! as the number's raw text and parsed as a decimal; written back the same way.

use std::borrow::Cow;

use paystream_schemas::money::{AMOUNT_MAX_MINOR, SCALE};
use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::value::RawValue;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// The largest amount one request may move (`paystream_schemas::Amount`'s bound), as the
/// OpenAPI document states it.
pub const AMOUNT_MAX: f64 = AMOUNT_MAX_MINOR as f64 / 100.0;
/// The largest balance a wallet may hold (`wallets_balance_max`), as the OpenAPI document states it.
pub const BALANCE_MAX: f64 = 999_999_999_999.99;

/// The OpenAPI schema of an amount a client sends (`Amount` in the document): a positive JSON
/// number, at most [`AMOUNT_MAX`], a multiple of 0.01. `multipleOf` is what keeps a generator
/// (schemathesis) from sending `1.005` as valid: such numbers are refused with 422, never
/// rounded, and are tested as such. Exponent forms (`1e2`) are refused too.
pub struct RequestAmount;

impl utoipa::PartialSchema for RequestAmount {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .exclusive_minimum(Some(0))
            .maximum(Some(AMOUNT_MAX))
            .multiple_of(Some(0.01))
            .description(Some(
                "An amount of money: a plain JSON number (no exponent, never a string), > 0, \
                 at most two decimal places (1.005 is refused, not rounded), at most 999999999.99.",
            ))
            .examples([serde_json::json!(123.45)])
            .into()
    }
}

impl utoipa::ToSchema for RequestAmount {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Amount")
    }
}

/// The OpenAPI schema of a balance the API answers with (`Money`): a JSON number printed with
/// exactly two decimal places, from 0 to [`BALANCE_MAX`]. No `multipleOf` here: a validator
/// that checks it in binary floating point refuses 250.5 (250.5 / 0.01 is not an integer in
/// floats), and the answer is exact anyway.
pub struct ResponseMoney;

impl utoipa::PartialSchema for ResponseMoney {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(0))
            .maximum(Some(BALANCE_MAX))
            .description(Some("A balance: a JSON number with exactly two decimal places (0.00, 250.50)."))
            .examples([serde_json::json!(250.5)])
            .into()
    }
}

impl utoipa::ToSchema for ResponseMoney {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Money")
    }
}

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
    value.rescale(SCALE);
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

    #[test]
    fn the_documented_bounds_print_as_the_enforced_ones() {
        assert_eq!(serde_json::to_string(&AMOUNT_MAX).unwrap(), "999999999.99");
        assert_eq!(serde_json::to_string(&BALANCE_MAX).unwrap(), "999999999999.99");
        assert_eq!(
            AMOUNT_MAX.to_string().parse::<paystream_schemas::Amount>().unwrap().minor(),
            AMOUNT_MAX_MINOR
        );
    }
}
