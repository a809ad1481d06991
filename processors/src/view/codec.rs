//! The view's production codec: the registry's Confluent wire format through the async
//! `EventCodec`, bridged onto the topology's stream thread (a plain OS thread, which may block on
//! the tokio runtime's handle; schemas are cached, so after the first record of each contract a
//! call does no I/O).
//!
//! As for the saga (`saga::codec`): a registry that is away is not the record's fault, so its
//! error is marked [`Retriable`] and the record is retried, never dead-lettered — a dead-lettered
//! result would leave a payment's view short of its outcome for good. Every other error (bad
//! bytes, an unknown schema id) is about the record and dead-letters it.

use paystream_schemas::{DecodeError, EncodeError, EventCodec};
use paystream_topology::{BoxError, Retriable};
use tokio::runtime::Handle;

use super::fact::InputEvent;
use super::processor::{Input, ViewCodec, ViewRecord};

/// Confluent-framed Avro with schema ids from the registry.
pub struct RegistryViewCodec {
    codec: EventCodec,
    runtime: Handle,
}

impl RegistryViewCodec {
    /// A codec over `codec`, blocking on `runtime` (call from inside it: `Handle::current()`).
    pub fn new(codec: EventCodec, runtime: Handle) -> Self {
        Self { codec, runtime }
    }
}

fn decode_error(error: DecodeError) -> BoxError {
    match error.is_retriable() {
        true => Retriable::boxed(error),
        false => Box::new(error),
    }
}

fn encode_error(error: EncodeError) -> BoxError {
    match error.is_retriable() {
        true => Retriable::boxed(error),
        false => Box::new(error),
    }
}

impl ViewCodec for RegistryViewCodec {
    fn decode(&self, input: Input, bytes: &[u8]) -> Result<InputEvent, BoxError> {
        let codec = &self.codec;
        self.runtime
            .block_on(async move {
                match input {
                    Input::Initiated => codec.decode(bytes).await.map(InputEvent::Initiated),
                    Input::Outcome => codec.decode(bytes).await.map(InputEvent::Outcome),
                    Input::Callback => codec.decode(bytes).await.map(InputEvent::Callback),
                    Input::Timer => codec.decode(bytes).await.map(InputEvent::Timer),
                    Input::Request => codec.decode(bytes).await.map(InputEvent::Request),
                    Input::Reconciliation => codec.decode(bytes).await.map(InputEvent::Reconciliation),
                    Input::Result => codec.decode(bytes).await.map(InputEvent::Result),
                }
            })
            .map_err(decode_error)
    }

    fn encode(&self, record: &ViewRecord) -> Result<Vec<u8>, BoxError> {
        let codec = &self.codec;
        match record {
            ViewRecord::View(view) => self.runtime.block_on(codec.encode(view)).map_err(encode_error),
            ViewRecord::Timeline(entry) => self.runtime.block_on(codec.encode(entry)).map_err(encode_error),
            ViewRecord::Input(_) => Err("the view writes only views and timeline entries".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_that_is_away_is_marked_retriable_and_a_bad_record_is_not() {
        let away = decode_error(DecodeError::RegistryUnavailable("connection refused".into()));
        assert!(Retriable::is_marked(away.as_ref()), "{away}");
        let bad = decode_error(DecodeError::UnknownSchemaId(7));
        assert!(!Retriable::is_marked(bad.as_ref()), "{bad}");
    }
}
