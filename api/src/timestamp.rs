//! The seeds' REST timestamps: `yyyyMMdd-HH:mm:ss:SSSSSS`, UTC, microseconds.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

const FORMAT: &str = "%Y%m%d-%H:%M:%S:%6f";
/// Exactly what [`parse`] accepts, as a regular expression for the OpenAPI document: real
/// calendar dates (months of 30 and 31 days, 29 February only in Gregorian leap years), hours
/// 00–23, minutes and seconds 00–59 (no leap second), six fraction digits. Exact, so a
/// generator's "valid" timestamps are accepted and its "invalid" ones refused.
pub const PATTERN: &str = concat!(
    "^(",
    "[0-9]{4}(0[13578]|1[02])(0[1-9]|[12][0-9]|3[01])",
    "|[0-9]{4}(0[469]|11)(0[1-9]|[12][0-9]|30)",
    "|[0-9]{4}02(0[1-9]|1[0-9]|2[0-8])",
    "|([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[048]|[2468][048]|[13579][26])00)0229",
    ")-([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]:[0-9]{6}$"
);

/// The OpenAPI schema of these timestamps (`Timestamp` in the document).
pub struct Timestamp;

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(PATTERN))
            .description(Some("yyyyMMdd-HH:mm:ss:SSSSSS, UTC, microseconds (the seeds' format)"))
            .examples([serde_json::json!("20261128-04:11:13:123456")])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}

/// Parses `20261128-04:11:13:123456`.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    // Digits and separators exactly where the format puts them (chrono alone would also take a
    // signed year or a one-digit field), and no second 60 (chrono reads it as a leap second):
    // what PATTERN says.
    let layout = text.bytes().enumerate().all(|(i, b)| match i {
        8 => b == b'-',
        11 | 14 | 17 => b == b':',
        _ => b.is_ascii_digit(),
    });
    if text.len() != 24 || !layout || &text[15..17] == "60" {
        return None;
    }
    NaiveDateTime::parse_from_str(text, FORMAT).ok().map(|naive| naive.and_utc())
}

/// Formats an instant the same way.
pub fn format(at: DateTime<Utc>) -> String {
    at.format(FORMAT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_microseconds() {
        let at = parse("20261128-04:11:13:123456").unwrap();
        assert_eq!(at.timestamp_subsec_micros(), 123_456);
        assert_eq!(format(at), "20261128-04:11:13:123456");
        assert!(parse("2026-11-28T04:11:13Z").is_none());
        assert!(parse("20261128-04:11:13:12345").is_none(), "six fraction digits");
        assert!(parse("20261332-04:11:13:123456").is_none(), "no 32nd of the 13th month");
        assert!(parse("20261128-23:59:60:000000").is_none(), "no leap second");
        assert!(parse("20240229-00:00:00:000000").is_some(), "a leap day");
        assert!(parse("20000229-00:00:00:000000").is_some(), "2000 was a leap year");
        assert!(parse("19000229-00:00:00:000000").is_none(), "1900 was not");
        assert!(parse("00000229-00:00:00:000000").is_some(), "nor is year 0 refused");
        assert!(parse("+2026112-04:11:13:123456").is_none(), "digits only");
        assert!(parse("20261128-24:00:00:000000").is_none());
    }
}
