//! The view's production codec: the registry's Confluent wire format through
//! [`BlockingCodec`], as for the saga (`saga::codec`): a registry that is away is retried, never
//! dead-lettered — a dead-lettered result would leave a payment's view short of its outcome for
//! good. Every other error (bad bytes, an unknown schema id) is about the record and
//! dead-letters it.

use paystream_schemas::EventCodec;
use paystream_topology::BoxError;
use tokio::runtime::Handle;

use super::fact::InputEvent;
use super::processor::{Input, ViewCodec, ViewRecord};
use crate::blocking_codec::BlockingCodec;

/// Confluent-framed Avro with schema ids from the registry.
pub struct RegistryViewCodec {
    codec: BlockingCodec,
}

impl RegistryViewCodec {
    /// A codec over `codec`, blocking on `runtime` (call from inside it: `Handle::current()`).
    pub fn new(codec: EventCodec, runtime: Handle) -> Self {
        Self { codec: BlockingCodec::new(codec, runtime) }
    }
}

impl ViewCodec for RegistryViewCodec {
    fn decode(&self, input: Input, bytes: &[u8]) -> Result<InputEvent, BoxError> {
        let codec = &self.codec;
        match input {
            Input::Initiated => codec.decode(bytes).map(InputEvent::Initiated),
            Input::Outcome => codec.decode(bytes).map(InputEvent::Outcome),
            Input::Callback => codec.decode(bytes).map(InputEvent::Callback),
            Input::Timer => codec.decode(bytes).map(InputEvent::Timer),
            Input::Request => codec.decode(bytes).map(InputEvent::Request),
            Input::Reconciliation => codec.decode(bytes).map(InputEvent::Reconciliation),
            Input::Result => codec.decode(bytes).map(InputEvent::Result),
        }
    }

    fn encode(&self, record: &ViewRecord) -> Result<Vec<u8>, BoxError> {
        match record {
            ViewRecord::View(view) => self.codec.encode(view),
            ViewRecord::Timeline(entry) => self.codec.encode(entry),
            ViewRecord::Input(_) => Err("the view writes only views and timeline entries".into()),
        }
    }
}
