//! The saga's production codec: the registry's Confluent wire format, through the async
//! `EventCodec`, bridged onto the topology's stream thread.
//!
//! The stream thread is a plain OS thread, so it may block on the tokio runtime's handle; the
//! codec caches schemas per id and per subject, so after the first record of each contract a
//! call does no I/O.
//!
//! A registry that is away (no connection, a timeout, 5xx or 429: `DecodeError::is_retriable`,
//! `EncodeError::is_retriable`) is not the record's fault, so its error is marked
//! [`Retriable`]: the runtime never dead-letters such a record, whatever its error policy, but
//! aborts the transaction, rewinds and retries it after a capped back-off until the registry is
//! back. A dead-lettered saga input would strand a wallet reservation, turn a provider's charge
//! into a timeout refund, or leave a payment that never times out. Every other codec error (bad
//! bytes, an unknown schema id, a refused contract) is about the record and dead-letters it.
//! The timer processor goes through this codec too, and so behaves the same.

use paystream_schemas::{DecodeError, EncodeError, EventCodec};
use paystream_topology::{BoxError, Retriable};
use tokio::runtime::Handle;

use super::processor::{Input, SagaCodec, SagaEvent};

/// Confluent-framed Avro with schema ids from the registry.
pub struct RegistryCodec {
    codec: EventCodec,
    runtime: Handle,
}

impl RegistryCodec {
    /// A codec over `codec`, blocking on `runtime` (call from inside it: `Handle::current()`).
    pub fn new(codec: EventCodec, runtime: Handle) -> Self {
        Self { codec, runtime }
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

impl SagaCodec for RegistryCodec {
    fn decode(&self, input: Input, bytes: &[u8]) -> Result<SagaEvent, BoxError> {
        let codec = &self.codec;
        self.runtime
            .block_on(async move {
                match input {
                    Input::Initiated => codec.decode(bytes).await.map(SagaEvent::Initiated),
                    Input::Callback => codec.decode(bytes).await.map(SagaEvent::Callback),
                    Input::Outcome => codec.decode(bytes).await.map(SagaEvent::Outcome),
                    Input::Timer => codec.decode(bytes).await.map(SagaEvent::Timer),
                    Input::CancelRequested => codec.decode(bytes).await.map(SagaEvent::CancelRequested),
                }
            })
            .map_err(decode_error)
    }

    fn encode(&self, event: &SagaEvent) -> Result<Vec<u8>, BoxError> {
        let codec = &self.codec;
        self.runtime
            .block_on(async move {
                match event {
                    SagaEvent::Initiated(e) => codec.encode(e).await,
                    SagaEvent::Callback(e) => codec.encode(e).await,
                    SagaEvent::Outcome(e) => codec.encode(e).await,
                    SagaEvent::Timer(e) => codec.encode(e).await,
                    SagaEvent::CancelRequested(e) => codec.encode(e).await,
                    SagaEvent::Charge(e) => codec.encode(e).await,
                    SagaEvent::Request(e) => codec.encode(e).await,
                    SagaEvent::Result(e) => codec.encode(e).await,
                    SagaEvent::Reconciliation(e) => codec.encode(e).await,
                }
            })
            .map_err(encode_error)
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
