//! Encoding and decoding events through the Schema Registry.
//!
//! Writers register (or look up) their own contract under `<topic>-value` and frame the
//! Avro body with its id; the registry refuses a contract that breaks the subject's
//! compatibility rule, so an incompatible writer cannot produce at all.
//!
//! Readers fetch the writer's schema by the id in the frame, decode with it, then
//! resolve the value to the contract this binary was built with (Avro schema
//! resolution: added fields take their defaults, unknown enum symbols take the enum's
//! default). Every failure is a [`DecodeError`] whose [`DecodeError::is_retriable`] tells
//! a consumer whether to retry (registry away) or dead-letter (the record is bad).

use std::sync::Once;
use std::time::Duration;

use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};

use crate::event::{ContractError, Event};
use crate::wire::{self, WireError};

/// The largest allocation one decode may make. paystream's events are a few hundred
/// bytes; a corrupt length prefix must not make the decoder reserve gigabytes.
pub const DECODE_ALLOCATION_MAX_BYTES: usize = 1 << 20;
/// How long one registry request may take.
pub const REGISTRY_TIMEOUT_MS: u64 = 10_000;

/// Why an event could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The registry refused the contract (incompatible, invalid) or could not be reached.
    #[error("registry refused or failed to register {subject}: {source}")]
    Registry { subject: String, source: SRCError },
}

/// Why bytes could not be decoded into an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("schema id {0} is not known to the registry")]
    UnknownSchemaId(u32),
    #[error("the registry is unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("the registry failed: {0}")]
    Registry(String),
    #[error("the Avro body does not decode with writer schema {schema_id}: {detail}")]
    Body { schema_id: u32, detail: String },
    #[error("writer schema {schema_id} cannot be read as {reader}: {detail}")]
    Incompatible { schema_id: u32, reader: String, detail: String },
    #[error("the record breaks the contract: {0}")]
    Contract(#[from] ContractError),
}

impl DecodeError {
    /// Retrying may succeed (the registry was away); every other error is about the record
    /// itself and sends it to the dead-letter topic.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::RegistryUnavailable(_))
    }

    /// A short, stable name for the error kind, for DLQ headers and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Wire(WireError::Empty) => "empty",
            Self::Wire(WireError::Truncated(_)) => "truncated",
            Self::Wire(WireError::WrongMagicByte(_)) => "wrong-magic-byte",
            Self::UnknownSchemaId(_) => "unknown-schema-id",
            Self::RegistryUnavailable(_) => "registry-unavailable",
            Self::Registry(_) => "registry-error",
            Self::Body { .. } => "malformed-body",
            Self::Incompatible { .. } => "incompatible-schema",
            Self::Contract(_) => "contract-violation",
        }
    }
}

/// Encodes and decodes paystream events in the Confluent wire format.
pub struct EventCodec {
    /// Registers/looks up writer schemas and frames bodies; caches ids per subject.
    encoder: AvroEncoder,
    /// Fetches writer schemas by id and decodes bodies; caches schemas per id.
    decoder: AvroDecoder,
}

impl EventCodec {
    /// A codec talking to the registry's Confluent API at `registry_url` (for Apicurio:
    /// `http://host:8081/apis/ccompat/v7`, no trailing slash).
    pub fn new(registry_url: &str) -> Result<Self, SRCError> {
        static LIMIT: Once = Once::new();
        LIMIT.call_once(|| {
            apache_avro::util::max_allocation_bytes(DECODE_ALLOCATION_MAX_BYTES);
        });
        let settings = SrSettings::new_builder(registry_url.trim_end_matches('/').to_owned())
            .set_timeout(Duration::from_millis(REGISTRY_TIMEOUT_MS))
            .build()?;
        Ok(Self { encoder: AvroEncoder::new(settings.clone()), decoder: AvroDecoder::new(settings) })
    }

    /// Encodes `event` with its own contract (registered under `<topic>-value` if it is not yet).
    pub async fn encode<E: Event>(&self, event: &E) -> Result<Vec<u8>, EncodeError> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            E::TOPIC.to_owned(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, E::SCHEMA_JSON.to_owned()),
        );
        let encoded = self.encoder.encode_value(event.to_avro(), &strategy).await;
        if encoded.is_err() {
            // A failure is cached by the encoder; a later attempt must ask the registry again.
            self.encoder.remove_errors_from_cache();
        }
        encoded.map_err(|source| EncodeError::Registry { subject: E::subject(), source })
    }

    /// Decodes a Confluent-framed payload into `E`.
    pub async fn decode<E: Event>(&self, payload: &[u8]) -> Result<E, DecodeError> {
        let framed = wire::parse(payload)?;
        // Fetching the writer schema first tells an unknown id apart from a bad body.
        if let Err(error) = self.decoder.get_schema(framed.schema_id).await {
            return Err(self.registry_error(error, framed.schema_id));
        }
        let decoded = self.decoder.decode(Some(payload)).await.map_err(|e| DecodeError::Body {
            schema_id: framed.schema_id,
            detail: e.cause.clone().unwrap_or(e.error),
        })?;
        let resolved = decoded.value.resolve(E::schema()).map_err(|e| DecodeError::Incompatible {
            schema_id: framed.schema_id,
            reader: E::subject(),
            detail: e.to_string(),
        })?;
        Ok(E::from_avro(resolved)?)
    }

    fn registry_error(&self, error: SRCError, schema_id: u32) -> DecodeError {
        if error.retriable {
            // Cached failures would make every retry fail without asking the registry.
            self.decoder.remove_errors_from_cache();
            return DecodeError::RegistryUnavailable(error.to_string());
        }
        let text = format!("{} {}", error.error, error.cause.as_deref().unwrap_or_default());
        if text.contains("40403") || text.contains("status 404") {
            DecodeError::UnknownSchemaId(schema_id)
        } else {
            DecodeError::Registry(error.to_string())
        }
    }
}
