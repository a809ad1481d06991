//! The seeds' REST timestamps: `yyyyMMdd-HH:mm:ss:SSSSSS`, UTC, microseconds.

use chrono::{DateTime, NaiveDateTime, Utc};

const FORMAT: &str = "%Y%m%d-%H:%M:%S:%6f";

/// Parses `20261128-04:11:13:123456`.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    if text.len() != 24 {
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
    }
}
