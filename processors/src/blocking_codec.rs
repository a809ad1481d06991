//! The registry's Confluent wire format for the topology's processors: the async `EventCodec`
//! bridged onto the stream thread, written once for the saga, the timers and the view.
//!
//! The stream thread is a plain OS thread, so it may block on the tokio runtime's handle; the
//! codec caches schemas per id and per subject, so after the first record of each contract a
//! call does no I/O.
//!
//! A registry that is away (no connection, a timeout, 5xx or 429: `DecodeError::is_retriable`,
//! `EncodeError::is_retriable`) is not the record's fault, so its error is marked
//! [`Retriable`]: the runtime never dead-letters such a record, whatever its error policy, but
//! aborts the transaction, rewinds and retries it after a capped back-off until the registry is
//! back. Every other codec error (bad bytes, an unknown schema id, a refused contract) is about
//! the record and dead-letters it.

use paystream_schemas::{DecodeError, EncodeError, Event, EventCodec};
use paystream_topology::{BoxError, Retriable};
use tokio::runtime::Handle;

/// Confluent-framed Avro with schema ids from the registry, callable from a stream thread.
pub struct BlockingCodec {
    codec: EventCodec,
    runtime: Handle,
}

impl BlockingCodec {
    /// A codec over `codec`, blocking on `runtime` (call from inside it: `Handle::current()`).
    pub fn new(codec: EventCodec, runtime: Handle) -> Self {
        Self { codec, runtime }
    }

    /// Decodes one `E`; a registry that is away gives a [`Retriable`] error.
    pub fn decode<E: Event>(&self, bytes: &[u8]) -> Result<E, BoxError> {
        self.runtime.block_on(self.codec.decode(bytes)).map_err(decode_error)
    }

    /// Encodes one `E`; a registry that is away gives a [`Retriable`] error.
    pub fn encode<E: Event>(&self, event: &E) -> Result<Vec<u8>, BoxError> {
        self.runtime.block_on(self.codec.encode(event)).map_err(encode_error)
    }
}

/// A decode error as the runtime must read it: retriable when the registry is away.
fn decode_error(error: DecodeError) -> BoxError {
    match error.is_retriable() {
        true => Retriable::boxed(error),
        false => Box::new(error),
    }
}

/// An encode error as the runtime must read it: retriable when the registry is away.
fn encode_error(error: EncodeError) -> BoxError {
    match error.is_retriable() {
        true => Retriable::boxed(error),
        false => Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_that_is_away_is_marked_retriable_and_a_bad_record_is_not() {
        let away = decode_error(DecodeError::RegistryUnavailable("connection refused".into()));
        assert!(Retriable::is_marked(away.as_ref()), "{away}");
        assert!(away.to_string().contains("connection refused"), "the registry's words are kept: {away}");
        let bad = decode_error(DecodeError::UnknownSchemaId(7));
        assert!(!Retriable::is_marked(bad.as_ref()), "{bad}");
    }
}
