//! The saga's production codec: the registry's Confluent wire format through
//! [`BlockingCodec`], which marks a registry that is away [`Retriable`](paystream_topology::Retriable)
//! so a saga input is retried, never dead-lettered: a dead-lettered saga input would strand a
//! wallet reservation, turn a provider's charge into a timeout refund, or leave a payment that
//! never times out. The timer processor goes through this codec too, and so behaves the same.

use paystream_schemas::EventCodec;
use paystream_topology::BoxError;
use tokio::runtime::Handle;

use super::processor::{Input, SagaCodec, SagaEvent};
use crate::blocking_codec::BlockingCodec;

/// Confluent-framed Avro with schema ids from the registry.
pub struct RegistryCodec {
    codec: BlockingCodec,
}

impl RegistryCodec {
    /// A codec over `codec`, blocking on `runtime` (call from inside it: `Handle::current()`).
    pub fn new(codec: EventCodec, runtime: Handle) -> Self {
        Self { codec: BlockingCodec::new(codec, runtime) }
    }
}

impl SagaCodec for RegistryCodec {
    fn decode(&self, input: Input, bytes: &[u8]) -> Result<SagaEvent, BoxError> {
        let codec = &self.codec;
        match input {
            Input::Initiated => codec.decode(bytes).map(SagaEvent::Initiated),
            Input::Callback => codec.decode(bytes).map(SagaEvent::Callback),
            Input::Outcome => codec.decode(bytes).map(SagaEvent::Outcome),
            Input::Timer => codec.decode(bytes).map(SagaEvent::Timer),
            Input::CancelRequested => codec.decode(bytes).map(SagaEvent::CancelRequested),
        }
    }

    fn encode(&self, event: &SagaEvent) -> Result<Vec<u8>, BoxError> {
        let codec = &self.codec;
        match event {
            SagaEvent::Initiated(e) => codec.encode(e),
            SagaEvent::Callback(e) => codec.encode(e),
            SagaEvent::Outcome(e) => codec.encode(e),
            SagaEvent::Timer(e) => codec.encode(e),
            SagaEvent::CancelRequested(e) => codec.encode(e),
            SagaEvent::Charge(e) => codec.encode(e),
            SagaEvent::Request(e) => codec.encode(e),
            SagaEvent::Result(e) => codec.encode(e),
            SagaEvent::Reconciliation(e) => codec.encode(e),
        }
    }
}
