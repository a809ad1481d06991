//! The Schema Registry's admin API (Confluent REST): register contracts, check a
//! contract against what is registered, set the compatibility rule.
//!
//! `paystream schemas check` and `paystream schemas register` use it; encoding and
//! decoding go through [`crate::codec`] instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::event::Event;
use crate::events::{
    ChargeCommand, DispatchOutcome, PaymentCancelRequested, PaymentInitiated, PaymentResult,
    ProviderCallbackReceived, ProviderRequest, ReconciliationEvent, TimerEvent,
};
use crate::events::{OrderPaid, OrderPaymentFailed, PayOrder};
use crate::events::{PaymentTimelineEvent, PaymentView};

/// How long one admin request may take.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Confluent error codes paystream reacts to.
pub mod error_code {
    pub const SUBJECT_NOT_FOUND: u32 = 40401;
    pub const VERSION_NOT_FOUND: u32 = 40402;
    pub const SCHEMA_NOT_FOUND: u32 = 40403;
    pub const INCOMPATIBLE_SCHEMA: u32 = 409;
    pub const INVALID_SCHEMA: u32 = 42201;
}

/// Errors of the admin client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the Schema Registry is unreachable: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the Schema Registry answered {status} (error code {error_code}): {message}")]
    Api { status: u16, error_code: u32, message: String },
}

impl RegistryError {
    /// The Confluent error code, if the registry answered with one.
    pub fn error_code(&self) -> Option<u32> {
        match self {
            Self::Api { error_code, .. } => Some(*error_code),
            Self::Http(_) => None,
        }
    }
}

/// Compatibility rules of the Confluent API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

/// A registered version of a subject.
#[derive(Clone, Debug, Deserialize)]
pub struct RegisteredVersion {
    pub subject: String,
    pub id: u32,
    pub version: u32,
    pub schema: String,
}

/// What a compatibility check said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Nothing is registered under the subject yet: any valid schema may start it.
    NewSubject,
    Compatible,
    Incompatible {
        messages: Vec<String>,
    },
}

/// The rule paystream's contract subjects are registered under. Payment events are read
/// by several services that are released on their own schedules, and topics keep a month
/// of history: a new reader must read every old record (BACKWARD) and an old reader every
/// new record (FORWARD), against all versions, not just the last (TRANSITIVE).
pub const CONTRACT_COMPATIBILITY: Compatibility = Compatibility::FullTransitive;

/// One contract of the catalog: the subject it is registered under and its schema text.
#[derive(Clone, Debug)]
pub struct Contract {
    /// The record name, e.g. `PaymentInitiated`.
    pub name: &'static str,
    /// `<topic>-value`.
    pub subject: String,
    /// The `.avsc` text.
    pub schema: &'static str,
}

/// Every contract in `schemas/avro/`, with its subject.
pub fn catalog() -> Vec<Contract> {
    fn entry<E: Event>(name: &'static str) -> Contract {
        Contract { name, subject: E::subject(), schema: E::SCHEMA_JSON }
    }
    vec![
        entry::<PaymentInitiated>("PaymentInitiated"),
        entry::<ProviderCallbackReceived>("ProviderCallbackReceived"),
        entry::<PaymentResult>("PaymentResult"),
        entry::<ChargeCommand>("ChargeCommand"),
        entry::<DispatchOutcome>("DispatchOutcome"),
        entry::<TimerEvent>("TimerEvent"),
        entry::<ProviderRequest>("ProviderRequest"),
        entry::<ReconciliationEvent>("ReconciliationEvent"),
        entry::<PaymentView>("PaymentView"),
        entry::<PaymentTimelineEvent>("PaymentTimelineEvent"),
        entry::<PaymentCancelRequested>("PaymentCancelRequested"),
        entry::<PayOrder>("PayOrder"),
        entry::<OrderPaid>("OrderPaid"),
        entry::<OrderPaymentFailed>("OrderPaymentFailed"),
    ]
}

/// A client for the registry's Confluent REST API.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    /// Base URL without a trailing slash (for Apicurio it ends in `/apis/ccompat/v7`).
    base_url: String,
}

#[derive(Deserialize)]
struct ApiError {
    error_code: u32,
    message: String,
}

impl RegistryClient {
    pub fn new(base_url: &str) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder().timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)).build()?;
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned() })
    }

    /// The global compatibility rule.
    pub async fn global_compatibility(&self) -> Result<Compatibility, RegistryError> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(rename = "compatibilityLevel")]
            level: Compatibility,
        }
        let config: Config = self.send(self.http.get(self.url("/config"))).await?;
        Ok(config.level)
    }

    /// Sets the global rule (`subject` = None) or a subject's rule.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<(), RegistryError> {
        let path = subject.map_or_else(|| "/config".to_owned(), |s| format!("/config/{s}"));
        let _: serde_json::Value =
            self.send(self.http.put(self.url(&path)).json(&json!({ "compatibility": level }))).await?;
        Ok(())
    }

    /// The rule that applies to `subject`: its own, else the global one.
    pub async fn compatibility(&self, subject: &str) -> Result<Compatibility, RegistryError> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(rename = "compatibilityLevel")]
            level: Compatibility,
        }
        let url = self.url(&format!("/config/{subject}?defaultToGlobal=true"));
        match self.send::<Config>(self.http.get(url)).await {
            Ok(config) => Ok(config.level),
            Err(e) if e.error_code().is_some_and(|c| c / 100 == 404) => self.global_compatibility().await,
            Err(e) => Err(e),
        }
    }

    /// Registers `schema` under `subject` and makes `level` the subject's rule (first the
    /// rule, so an existing subject is checked under it; a new subject takes it after its
    /// first version, because the registry keeps no rule for a subject that does not exist).
    pub async fn register_with_rule(
        &self,
        subject: &str,
        schema: &str,
        level: Compatibility,
    ) -> Result<u32, RegistryError> {
        let exists = self.latest(subject).await?.is_some();
        if exists {
            self.set_compatibility(Some(subject), level).await?;
        }
        let id = self.register(subject, schema).await?;
        if !exists {
            self.set_compatibility(Some(subject), level).await?;
        }
        Ok(id)
    }

    /// Registers `schema` under `subject`; the same schema again returns the same id.
    /// An incompatible schema fails with error code 409.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let body = json!({ "schema": schema, "schemaType": "AVRO" });
        let url = self.url(&format!("/subjects/{subject}/versions"));
        let registered: Registered = self.send(self.http.post(url).json(&body)).await?;
        Ok(registered.id)
    }

    /// The latest version of `subject`, or None if the subject does not exist.
    pub async fn latest(&self, subject: &str) -> Result<Option<RegisteredVersion>, RegistryError> {
        let url = self.url(&format!("/subjects/{subject}/versions/latest"));
        match self.send(self.http.get(url)).await {
            Ok(version) => Ok(Some(version)),
            Err(e) if e.error_code() == Some(error_code::SUBJECT_NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The schema text registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct ById {
            schema: String,
        }
        let by_id: ById = self.send(self.http.get(self.url(&format!("/schemas/ids/{id}")))).await?;
        Ok(by_id.schema)
    }

    /// Checks `schema` against the latest version of `subject` under the subject's rule.
    pub async fn check(&self, subject: &str, schema: &str) -> Result<CheckOutcome, RegistryError> {
        #[derive(Deserialize)]
        struct Verdict {
            is_compatible: bool,
            #[serde(default)]
            messages: Vec<String>,
        }
        if self.latest(subject).await?.is_none() {
            return Ok(CheckOutcome::NewSubject);
        }
        let url = self.url(&format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"));
        let body = json!({ "schema": schema, "schemaType": "AVRO" });
        let verdict: Verdict = self.send(self.http.post(url).json(&body)).await?;
        Ok(if verdict.is_compatible {
            CheckOutcome::Compatible
        } else {
            CheckOutcome::Incompatible { messages: verdict.messages }
        })
    }

    /// Deletes a subject for good (soft delete, then permanent), e.g. after a test.
    pub async fn delete_subject(&self, subject: &str) -> Result<(), RegistryError> {
        for suffix in ["", "?permanent=true"] {
            let url = self.url(&format!("/subjects/{subject}{suffix}"));
            match self.send::<serde_json::Value>(self.http.delete(url)).await {
                Ok(_) => {}
                Err(e) if e.error_code() == Some(error_code::SUBJECT_NOT_FOUND) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, RegistryError> {
        let response = request.header(reqwest::header::ACCEPT, CONTENT_TYPE).send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let text = response.text().await.unwrap_or_default();
        let (error_code, message) = match serde_json::from_str::<ApiError>(&text) {
            Ok(api) => (api.error_code, api.message),
            Err(_) => (0, text.chars().take(500).collect()),
        };
        Err(RegistryError::Api { status: status.as_u16(), error_code, message })
    }
}
