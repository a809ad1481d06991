//! Timestamps as Avro `timestamp-micros`: microseconds since the Unix epoch, UTC.

use chrono::{DateTime, Utc};

/// An instant with microsecond precision, as every paystream event carries it.
pub type Timestamp = DateTime<Utc>;

/// Microseconds since the epoch.
pub fn to_micros(at: Timestamp) -> i64 {
    at.timestamp_micros()
}

/// The instant `micros` after the epoch; `None` outside chrono's range (±262,000 years).
pub fn from_micros(micros: i64) -> Option<Timestamp> {
    DateTime::from_timestamp_micros(micros)
}

/// Now, truncated to microseconds so that it survives a round trip through Avro.
pub fn now() -> Timestamp {
    from_micros(to_micros(Utc::now())).expect("the current time is within chrono's range")
}
