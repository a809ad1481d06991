//! The saga's production codec: the registry's Confluent wire format, through the async
//! `EventCodec`, bridged onto the topology's stream thread.
//!
//! The stream thread is a plain OS thread, so it may block on the tokio runtime's handle; the
//! codec caches schemas per id and per subject, so after the first record of each contract a
//! call does no I/O. A registry that cannot be reached is an error of the record (dead-lettered
//! under the DLQ policy): run the saga with `ErrorPolicy::Fail` to stop instead, if the
//! registry's availability is not trusted.

use paystream_schemas::EventCodec;
use paystream_topology::BoxError;
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

impl SagaCodec for RegistryCodec {
    fn decode(&self, input: Input, bytes: &[u8]) -> Result<SagaEvent, BoxError> {
        let codec = &self.codec;
        self.runtime.block_on(async move {
            Ok(match input {
                Input::Initiated => SagaEvent::Initiated(codec.decode(bytes).await?),
                Input::Callback => SagaEvent::Callback(codec.decode(bytes).await?),
                Input::Outcome => SagaEvent::Outcome(codec.decode(bytes).await?),
                Input::Timer => SagaEvent::Timer(codec.decode(bytes).await?),
            })
        })
    }

    fn encode(&self, event: &SagaEvent) -> Result<Vec<u8>, BoxError> {
        let codec = &self.codec;
        self.runtime.block_on(async move {
            Ok(match event {
                SagaEvent::Initiated(e) => codec.encode(e).await?,
                SagaEvent::Callback(e) => codec.encode(e).await?,
                SagaEvent::Outcome(e) => codec.encode(e).await?,
                SagaEvent::Timer(e) => codec.encode(e).await?,
                SagaEvent::Charge(e) => codec.encode(e).await?,
                SagaEvent::Request(e) => codec.encode(e).await?,
                SagaEvent::Result(e) => codec.encode(e).await?,
                SagaEvent::Reconciliation(e) => codec.encode(e).await?,
            })
        })
    }
}
