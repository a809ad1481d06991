//! Dead letters: a poison record goes to the DLQ topic, bytes unchanged, with the reason and its
//! origin in headers (the same `dlq.*` names paystream's other consumers use), and processing
//! goes on.

use crate::record::{OutputRecord, RawRecord};

/// Header: a short, stable reason (`deserialization`, `processing`, `serialization`).
pub const HEADER_REASON: &str = "dlq.reason";
/// Header: the error in words, at most [`DETAIL_MAX_BYTES`].
pub const HEADER_DETAIL: &str = "dlq.detail";
/// Header: source topic.
pub const HEADER_SOURCE_TOPIC: &str = "dlq.source.topic";
/// Header: source partition, decimal.
pub const HEADER_SOURCE_PARTITION: &str = "dlq.source.partition";
/// Header: source offset, decimal.
pub const HEADER_SOURCE_OFFSET: &str = "dlq.source.offset";
/// Header: the application and node that refused the record, `<application.id>/<node>`.
pub const HEADER_PROCESSOR: &str = "dlq.processor";
/// Longest `dlq.detail` kept; longer texts are cut at a character boundary.
pub const DETAIL_MAX_BYTES: usize = 1_024;

/// What the runtime does with a poison record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Send it to this topic (in the same transaction as everything else) and go on.
    DeadLetter {
        /// The DLQ topic.
        topic: String,
    },
    /// Stop the runtime with the error; the record stays uncommitted and is read again on restart.
    Fail,
}

/// Which step refused the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonKind {
    /// The source's deserializer.
    Deserialization,
    /// A processor returned `ProcessError::Poison`.
    Processing,
    /// A sink's serializer.
    Serialization,
}

impl PoisonKind {
    /// The `dlq.reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            PoisonKind::Deserialization => "deserialization",
            PoisonKind::Processing => "processing",
            PoisonKind::Serialization => "serialization",
        }
    }
}

/// The dead letter for `raw`: its bytes and headers, plus the `dlq.*` headers.
pub fn dead_letter(
    topic: &str,
    raw: &RawRecord,
    kind: PoisonKind,
    detail: &str,
    application_id: &str,
    node: &str,
) -> OutputRecord {
    let mut headers = raw.headers.clone();
    headers.extend([
        (HEADER_REASON.to_string(), kind.as_str().as_bytes().to_vec()),
        (HEADER_DETAIL.to_string(), truncate(detail, DETAIL_MAX_BYTES).as_bytes().to_vec()),
        (HEADER_SOURCE_TOPIC.to_string(), raw.topic.as_bytes().to_vec()),
        (HEADER_SOURCE_PARTITION.to_string(), raw.partition.to_string().into_bytes()),
        (HEADER_SOURCE_OFFSET.to_string(), raw.offset.to_string().into_bytes()),
        (HEADER_PROCESSOR.to_string(), format!("{application_id}/{node}").into_bytes()),
    ]);
    OutputRecord {
        topic: topic.to_string(),
        // The key decides the partition, as for any keyed record; a null key spreads.
        partition: None,
        key: raw.key.clone(),
        value: raw.value.clone(),
        timestamp_ms: raw.timestamp_ms,
        headers,
    }
}

/// `text` cut to at most `max_bytes`, at a character boundary: the one truncation every
/// `dlq.detail` in paystream goes through.
pub fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_bytes_and_names_its_origin() {
        let raw = RawRecord {
            topic: "in".into(),
            partition: 3,
            offset: 42,
            key: Some(b"k".to_vec()),
            value: Some(vec![0, 1, 2]),
            timestamp_ms: 7,
            headers: vec![("traceparent".into(), b"00-x".to_vec())],
        };
        let letter = dead_letter("dlq", &raw, PoisonKind::Deserialization, &"é".repeat(600), "app", "src");
        assert_eq!((letter.key, letter.value), (raw.key.clone(), raw.value.clone()));
        let h = |n: &str| {
            crate::record::header(&letter.headers, n).map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(h("traceparent").as_deref(), Some("00-x"));
        assert_eq!(h(HEADER_REASON).as_deref(), Some("deserialization"));
        assert_eq!(h(HEADER_SOURCE_PARTITION).as_deref(), Some("3"));
        assert_eq!(h(HEADER_SOURCE_OFFSET).as_deref(), Some("42"));
        assert_eq!(h(HEADER_PROCESSOR).as_deref(), Some("app/src"));
        assert!(h(HEADER_DETAIL).unwrap().len() <= DETAIL_MAX_BYTES);
    }
}
