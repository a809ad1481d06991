//! paystream's event contracts and their wire format.
//!
//! Every event on a paystream topic is Avro, written with a schema registered in a
//! Confluent-compatible Schema Registry under `<topic>-value` (TopicNameStrategy), and
//! framed in the Confluent wire format: magic byte 0, the 4-byte big-endian schema id,
//! then the Avro body. The `.avsc` files in `schemas/avro/` are the contracts; this crate
//! embeds them, so the binary and the registry can never disagree silently.
//!
//! # Layout
//! - [`money`]: [`Amount`], a payment amount with two decimal places, never a float,
//!   and its Avro `decimal` bytes.
//! - [`time`]: timestamps as Avro `timestamp-micros`.
//! - [`event`]: the [`Event`] trait every contract implements, and a reader that turns an
//!   Avro record into typed fields with errors that name the field.
//! - [`events`]: the contracts themselves (PaymentInitiated, ProviderCallbackReceived,
//!   PaymentResult, ChargeCommand, DispatchOutcome, TimerEvent, ProviderRequest,
//!   ReconciliationEvent, PaymentCancelRequested).
//!   The read side's contracts, PaymentView and PaymentTimelineEvent, are there too.
//! - [`wire`]: the Confluent framing, parsed without trusting the input.
//! - [`codec`]: encode and decode events through the registry (`schema_registry_converter`),
//!   resolving every record to the schema this binary was built with.
//! - [`registry`]: the registry's admin API: register, check compatibility, set the level.

pub mod codec;
pub mod event;
pub mod events;
pub mod money;
pub mod registry;
pub mod time;
pub mod wire;

pub use codec::{DecodeError, EncodeError, EventCodec};
pub use event::{ContractError, Event};
pub use money::Amount;
