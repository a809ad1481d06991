//! paystream's event contracts: the `.avsc` files beside this crate, the Rust types for
//! them, and their Confluent-wire-format serde through the Schema Registry.
//!
//! Not built yet: reserved by the foundation; the issue "Avro contracts in a
//! Confluent-compatible Schema Registry" fills it.
