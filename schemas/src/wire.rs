//! The Confluent wire format: `[0x00][schema id: u32 big-endian][Avro body]`.
//!
//! Parsed here, before anything else touches the bytes, so that a record from a
//! misconfigured producer (JSON, a string, a truncated write) is a typed error that a
//! consumer can dead-letter with its reason, never a panic.

/// The magic byte of the Confluent framing.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Why bytes are not a Confluent-framed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty payload (a tombstone or a null value where an event was expected)")]
    Empty,
    #[error("payload of {0} bytes is shorter than the 5-byte Confluent header")]
    Truncated(usize),
    #[error("first byte is {0:#04x}, not the Confluent magic byte 0x00 (not registry-framed Avro)")]
    WrongMagicByte(u8),
}

/// A framed record: the writer's schema id and the Avro body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub schema_id: u32,
    pub body: &'a [u8],
}

/// Splits a payload into schema id and body.
pub fn parse(payload: &[u8]) -> Result<Framed<'_>, WireError> {
    match payload {
        [] => Err(WireError::Empty),
        [magic, ..] if *magic != MAGIC_BYTE => Err(WireError::WrongMagicByte(*magic)),
        short if short.len() < HEADER_LEN => Err(WireError::Truncated(short.len())),
        [_, a, b, c, d, body @ ..] => Ok(Framed { schema_id: u32::from_be_bytes([*a, *b, *c, *d]), body }),
        _ => unreachable!("every slice of 5 or more bytes matches the previous arm"),
    }
}

/// Frames an Avro body with its schema id.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(HEADER_LEN + body.len());
    framed.push(MAGIC_BYTE);
    framed.extend_from_slice(&schema_id.to_be_bytes());
    framed.extend_from_slice(body);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_frames() {
        let framed = frame(0x0102_0304, b"body");
        assert_eq!(framed, [0, 1, 2, 3, 4, b'b', b'o', b'd', b'y']);
        assert_eq!(parse(&framed), Ok(Framed { schema_id: 0x0102_0304, body: b"body" }));
        assert_eq!(parse(&[0, 0, 0, 0, 7]), Ok(Framed { schema_id: 7, body: &[] }));
    }

    #[test]
    fn rejects_what_is_not_framed() {
        assert_eq!(parse(&[]), Err(WireError::Empty));
        assert_eq!(parse(b"{\"json\":1}"), Err(WireError::WrongMagicByte(b'{')));
        assert_eq!(parse(&[0, 0, 1]), Err(WireError::Truncated(3)));
    }
}
