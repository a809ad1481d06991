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

use apache_avro::types::Value;
use apache_avro::Schema;
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

impl EncodeError {
    /// Retrying may succeed: the registry could not be reached, or answered 5xx or 429. A
    /// refused contract (incompatible, invalid) is not retriable.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Registry { source, .. } => registry_away(source),
        }
    }
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
///
/// The encoder caches the writer schema per subject: one codec writes one version of each
/// contract, the one it was built with, as a deployed producer does. Decoding reads any
/// version by the id in the frame.
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
        self.encode_value(E::TOPIC, E::SCHEMA_JSON, event.to_avro()).await
    }

    /// Decodes a Confluent-framed payload into `E`.
    pub async fn decode<E: Event>(&self, payload: &[u8]) -> Result<E, DecodeError> {
        let value = self.decode_value(payload, E::schema()).await?;
        Ok(E::from_avro(value)?)
    }

    /// Encodes an Avro value written with `writer_schema` (JSON text) for `topic`'s value
    /// subject. The typed [`EventCodec::encode`] is this with the event's contract.
    pub async fn encode_value(
        &self,
        topic: &str,
        writer_schema: &str,
        value: Value,
    ) -> Result<Vec<u8>, EncodeError> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_owned(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, writer_schema.to_owned()),
        );
        let encoded = self.encoder.encode_value(value, &strategy).await;
        if encoded.is_err() {
            // A failure is cached by the encoder; a later attempt must ask the registry again.
            self.encoder.remove_errors_from_cache();
        }
        encoded.map_err(|source| EncodeError::Registry { subject: format!("{topic}-value"), source })
    }

    /// Decodes a framed payload with its writer's schema and resolves it to `reader`.
    pub async fn decode_value(&self, payload: &[u8], reader: &Schema) -> Result<Value, DecodeError> {
        let framed = wire::parse(payload)?;
        // Fetching the writer schema first tells an unknown id apart from a bad body.
        if let Err(error) = self.decoder.get_schema(framed.schema_id).await {
            return Err(self.registry_error(error, framed.schema_id));
        }
        let decoded = self.decoder.decode(Some(payload)).await.map_err(|e| DecodeError::Body {
            schema_id: framed.schema_id,
            detail: e.cause.clone().unwrap_or(e.error),
        })?;
        widen_decimals(decoded.value).resolve(reader).map_err(|e| DecodeError::Incompatible {
            schema_id: framed.schema_id,
            reader: reader.name().map_or_else(|| "the reader schema".to_owned(), ToString::to_string),
            detail: e.to_string(),
        })
    }

    fn registry_error(&self, error: SRCError, schema_id: u32) -> DecodeError {
        let classified = classify_registry_error(&error, schema_id);
        if classified.is_retriable() {
            // The decoder caches failures: without this every retry would get the cached
            // error without asking the registry again.
            self.decoder.remove_errors_from_cache();
        }
        classified
    }
}

/// What a failed schema lookup means for the record. The registry being away (no
/// connection, or it answered 5xx or 429) is retriable: the record may be perfectly good.
/// A 404 means the id was never given out: the record is bad and goes to the DLQ.
fn classify_registry_error(error: &SRCError, schema_id: u32) -> DecodeError {
    let text = format!("{} {}", error.error, error.cause.as_deref().unwrap_or_default());
    match http_status(error) {
        _ if registry_away(error) => DecodeError::RegistryUnavailable(error.to_string()),
        Some(404) => DecodeError::UnknownSchemaId(schema_id),
        _ if text.contains("40403") => DecodeError::UnknownSchemaId(schema_id),
        _ => DecodeError::Registry(error.to_string()),
    }
}

/// The registry is away rather than refusing: no connection (the client marks it retriable), or
/// it answered 5xx or 429. The one rule for decoding and encoding alike.
fn registry_away(error: &SRCError) -> bool {
    error.retriable || matches!(http_status(error), Some(500..=599 | 429))
}

/// The HTTP status the registry answered with, as the client writes it into its message.
fn http_status(error: &SRCError) -> Option<u16> {
    let text = format!("{} {}", error.error, error.cause.as_deref().unwrap_or_default());
    text.split("status ").skip(1).find_map(|rest| rest.get(..3).and_then(|digits| digits.parse::<u16>().ok()))
}

/// Byte length every decimal is sign-extended to before resolution: holds precision 38.
const DECIMAL_RESOLVE_BYTES: usize = 16;

/// Sign-extends every `decimal` in `value` to [`DECIMAL_RESOLVE_BYTES`].
///
/// apache-avro 0.22's `Value::resolve` refuses a `bytes` decimal whose *byte length* could
/// not hold the schema's full precision (`max_prec_for_len(len) < precision`), although
/// Avro writers (Java, fastavro, this crate) write the minimal two's-complement length:
/// 1.00 at precision 18 arrives as 1 byte and would be refused. Sign extension does not
/// change the number, so widening first makes every valid decimal resolve.
fn widen_decimals(value: Value) -> Value {
    match value {
        Value::Decimal(decimal) => match Vec::<u8>::try_from(&decimal) {
            Ok(bytes) if bytes.len() < DECIMAL_RESOLVE_BYTES => {
                let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) { 0xFF } else { 0x00 };
                let mut wide = vec![fill; DECIMAL_RESOLVE_BYTES - bytes.len()];
                wide.extend_from_slice(&bytes);
                Value::Decimal(apache_avro::Decimal::from(wide))
            }
            _ => Value::Decimal(decimal),
        },
        Value::Record(fields) => {
            Value::Record(fields.into_iter().map(|(k, v)| (k, widen_decimals(v))).collect())
        }
        Value::Union(index, inner) => Value::Union(index, Box::new(widen_decimals(*inner))),
        Value::Array(items) => Value::Array(items.into_iter().map(widen_decimals).collect()),
        Value::Map(entries) => Value::Map(entries.into_iter().map(|(k, v)| (k, widen_decimals(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: &str) -> SRCError {
        let message = format!("HTTP request to schema registry failed with status {status}");
        SRCError::new(&message, Some("error_code 0".into()), false)
    }

    #[test]
    fn a_registry_that_is_away_or_failing_is_retriable_and_an_unknown_id_is_not() {
        assert!(classify_registry_error(&answered("500 Internal Server Error"), 7).is_retriable());
        assert!(classify_registry_error(&answered("503 Service Unavailable"), 7).is_retriable());
        assert!(classify_registry_error(&answered("429 Too Many Requests"), 7).is_retriable());
        let unreachable = SRCError::new("http call to schema registry failed", Some("refused".into()), true);
        assert!(classify_registry_error(&unreachable, 7).is_retriable());
        assert!(matches!(
            classify_registry_error(&answered("404 Not Found"), 7),
            DecodeError::UnknownSchemaId(7)
        ));
        let other = classify_registry_error(&answered("401 Unauthorized"), 7);
        assert!(matches!(other, DecodeError::Registry(_)) && !other.is_retriable());
    }

    #[test]
    fn encoding_against_a_registry_that_is_away_is_retriable_and_a_refused_contract_is_not() {
        let encode = |source| EncodeError::Registry { subject: "t-value".into(), source };
        assert!(encode(answered("503 Service Unavailable")).is_retriable());
        assert!(encode(answered("429 Too Many Requests")).is_retriable());
        let unreachable = SRCError::new("http call to schema registry failed", Some("refused".into()), true);
        assert!(encode(unreachable).is_retriable());
        assert!(!encode(answered("409 Conflict")).is_retriable(), "an incompatible contract");
        assert!(!encode(answered("422 Unprocessable Entity")).is_retriable(), "an invalid contract");
    }

    #[test]
    fn widening_keeps_the_number_and_lets_minimal_decimals_resolve() {
        let schema =
            Schema::parse_str(r#"{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}"#)
                .unwrap();
        let one_byte = Value::Decimal(apache_avro::Decimal::from(vec![0x64u8]));
        assert!(one_byte.clone().resolve(&schema).is_err(), "the upstream check this works around");
        let widened = widen_decimals(one_byte).resolve(&schema).unwrap();
        let Value::Decimal(d) = widened else { panic!("not a decimal") };
        let bytes = Vec::<u8>::try_from(&d).unwrap();
        assert_eq!(bytes.len(), DECIMAL_RESOLVE_BYTES);
        assert_eq!(crate::Amount::from_avro_bytes(&bytes).unwrap().minor(), 100);
        let negative = widen_decimals(Value::Decimal(apache_avro::Decimal::from(vec![0xFFu8])));
        let Value::Decimal(d) = negative else { panic!("not a decimal") };
        assert!(Vec::<u8>::try_from(&d).unwrap().iter().all(|b| *b == 0xFF), "-1 stays -1");
    }
}
