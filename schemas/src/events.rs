//! The contracts: one Rust type per `.avsc` in `schemas/avro/`.
//!
//! Enums carry an `Unknown` variant that mirrors the contract's default symbol: a reader
//! built before a symbol was added reads it as `Unknown` instead of failing, and its
//! processor decides what an unknown status means (usually: dead-letter it).

use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::Schema;
use uuid::Uuid;

use crate::event::{avro, parse_contract, ContractError, Event, RecordReader};
use crate::money::Amount;
use crate::time::Timestamp;

/// Topic names of the payment flow (the stack crate creates them; a test keeps the two in step).
pub mod topics {
    pub const PAYMENTS_INITIATED: &str = "payments.initiated";
    pub const PAYMENTS_CALLBACKS: &str = "payments.callbacks";
    pub const PAYMENTS_PROVIDER_COMMANDS: &str = "payments.provider-commands";
    pub const PAYMENTS_DISPATCH_OUTCOMES: &str = "payments.dispatch-outcomes";
    pub const PAYMENTS_TIMERS: &str = "payments.timers";
    pub const PAYMENTS_RESULTS: &str = "payments.results";
    /// The saga's status queries, voids and refunds (a topic of its own: a verification
    /// must not wait behind charges stuck in `payments.provider-commands`).
    pub const PAYMENTS_PROVIDER_REQUESTS: &str = "payments.provider-requests";
    /// Discrepancies between the provider's ledger and paystream's, and what was done.
    pub const PAYMENTS_RECONCILIATION: &str = "payments.reconciliation";
    /// The read side's current view of every payment (compacted: the latest per key).
    pub const PAYMENTS_VIEW: &str = "payments.view";
    /// Every payment's history as the view applied it (upserted by paymentId and seq).
    pub const PAYMENTS_TIMELINE: &str = "payments.timeline";
    /// Owners' requests to cancel a payment, from the wallet outbox (co-partitioned with the
    /// saga's other inputs).
    pub const PAYMENTS_CANCEL_REQUESTS: &str = "payments.cancel-requests";
    /// Seed 004's Kafka door: the orders service's `PayOrder` commands, keyed by orderId.
    pub const PAY_ORDER: &str = "pay.order";
    /// `OrderPaid`, one per paid order, keyed by orderId (from the wallet outbox).
    pub const ORDER_PAID: &str = "order.paid";
    /// `OrderPaymentFailed`, one per order that could not be paid, keyed by orderId (from the
    /// wallet outbox).
    pub const ORDER_PAYMENT_FAILED: &str = "order.payment_failed";
}

/// Implements the contract half of [`Event`]: the embedded `.avsc`, its topic, the parsed schema.
macro_rules! contract {
    ($name:literal, $topic:expr) => {
        const SCHEMA_JSON: &'static str = include_str!(concat!("../avro/", $name, ".avsc"));
        const TOPIC: &'static str = $topic;

        fn schema() -> &'static Schema {
            static SCHEMA: OnceLock<Schema> = OnceLock::new();
            SCHEMA.get_or_init(|| parse_contract($name, Self::SCHEMA_JSON))
        }
    };
}

/// An Avro enum with a default symbol: the Rust enum, its symbols in contract order, and
/// the mapping both ways (an unknown symbol maps to the default).
macro_rules! avro_enum {
    ($(#[$doc:meta])* $name:ident { $default:ident => $default_symbol:literal $(, $variant:ident => $symbol:literal)* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $default,
            $($variant,)*
        }

        impl $name {
            /// The contract's symbols, in order.
            pub const SYMBOLS: &'static [&'static str] = &[$default_symbol $(, $symbol)*];

            pub fn symbol(self) -> &'static str {
                match self {
                    Self::$default => $default_symbol,
                    $(Self::$variant => $symbol,)*
                }
            }

            /// The variant of `symbol`; a symbol this build does not know is the default.
            pub fn from_symbol(symbol: &str) -> Self {
                match symbol {
                    $($symbol => Self::$variant,)*
                    _ => Self::$default,
                }
            }

            fn to_avro(self) -> Value {
                avro::symbol(Self::SYMBOLS, self.symbol())
            }
        }
    };
}

avro_enum!(
    /// The provider's verdict on a charge.
    ProviderStatus { Unknown => "UNKNOWN", Succeeded => "SUCCEEDED", Failed => "FAILED" }
);
avro_enum!(
    /// The final outcome of a payment.
    PaymentResultStatus {
        Unknown => "UNKNOWN",
        Completed => "COMPLETED",
        Failed => "FAILED",
        FailedTimeout => "FAILED_TIMEOUT",
        Canceled => "CANCELED",
    }
);
avro_enum!(
    /// What the dispatcher made of a charge command, or what the provider answered to a
    /// [`ProviderRequest`] (see `DispatchOutcome.avsc` for each symbol).
    DispatchResult {
        Unknown => "UNKNOWN",
        Accepted => "ACCEPTED",
        Rejected => "REJECTED",
        RetriesExhausted => "RETRIES_EXHAUSTED",
        Expired => "EXPIRED",
        Charged => "CHARGED",
        NotCharged => "NOT_CHARGED",
        Pending => "PENDING",
        Voided => "VOIDED",
        Refunded => "REFUNDED",
        Unanswered => "UNANSWERED",
    }
);

impl DispatchResult {
    /// Whether this answers a `ChargeCommand` (the other symbols answer a `ProviderRequest`).
    pub fn answers_a_charge(self) -> bool {
        matches!(self, Self::Accepted | Self::Rejected | Self::RetriesExhausted | Self::Expired)
    }
}

avro_enum!(
    /// What a timer is for.
    TimerKind {
        Unknown => "UNKNOWN",
        PaymentTimeout => "PAYMENT_TIMEOUT",
        CallbackRetention => "CALLBACK_RETENTION",
        VerifyRetry => "VERIFY_RETRY",
    }
);
avro_enum!(
    /// What disagreed between the provider's ledger and paystream's.
    Discrepancy { Unknown => "UNKNOWN", ChargedAfterFailure => "CHARGED_AFTER_FAILURE" }
);
avro_enum!(
    /// What the saga did about a discrepancy.
    Remedy { Unknown => "UNKNOWN", RefundRequested => "REFUND_REQUESTED" }
);

/// A nullable field's Avro value (`["null", T]`, null first).
fn nullable(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(value) => Value::Union(1, Box::new(value)),
    }
}

/// The non-null branch of a nullable field, if any.
fn non_null(r: &mut RecordReader, field: &'static str) -> Result<Option<Value>, ContractError> {
    match r.union(field)? {
        (_, Value::Null) => Ok(None),
        (_, value) => Ok(Some(value)),
    }
}

/// A nullable `timestamp-micros`.
fn optional_timestamp(r: &mut RecordReader, field: &'static str) -> Result<Option<Timestamp>, ContractError> {
    match non_null(r, field)? {
        None => Ok(None),
        Some(Value::TimestampMicros(micros) | Value::Long(micros)) => crate::time::from_micros(micros)
            .map(Some)
            .ok_or(ContractError::OutOfRange { field, value: micros.to_string() }),
        Some(other) => Err(ContractError::WrongType { field, found: format!("{other:?}") }),
    }
}

/// A nullable `string`.
fn optional_string(r: &mut RecordReader, field: &'static str) -> Result<Option<String>, ContractError> {
    match non_null(r, field)? {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(ContractError::WrongType { field, found: format!("{other:?}") }),
    }
}

/// A nullable `decimal` amount.
fn optional_amount(r: &mut RecordReader, field: &'static str) -> Result<Option<Amount>, ContractError> {
    let bytes = match non_null(r, field)? {
        None => return Ok(None),
        Some(Value::Decimal(d)) => {
            Vec::<u8>::try_from(d).map_err(|e| ContractError::WrongType { field, found: e.to_string() })?
        }
        Some(Value::Bytes(b)) => b,
        Some(other) => return Err(ContractError::WrongType { field, found: format!("{other:?}") }),
    };
    Amount::from_avro_bytes(&bytes).map(Some).map_err(|source| ContractError::Amount { field, source })
}

/// A nullable `uuid`.
fn optional_uuid(r: &mut RecordReader, field: &'static str) -> Result<Option<Uuid>, ContractError> {
    match non_null(r, field)? {
        None => Ok(None),
        Some(Value::Uuid(uuid)) => Ok(Some(uuid)),
        Some(Value::String(text)) => {
            Uuid::parse_str(&text).map(Some).map_err(|_| ContractError::BadUuid { field, value: text })
        }
        Some(other) => Err(ContractError::WrongType { field, found: format!("{other:?}") }),
    }
}

/// A payment was accepted and its amount reserved (`PaymentInitiated.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentInitiated {
    pub event_id: Uuid,
    pub payment_id: Uuid,
    pub wallet_id: Uuid,
    pub amount: Amount,
    pub currency: String,
    pub kind: String,
    pub description: String,
    pub requested_at: Timestamp,
    pub initiated_at: Timestamp,
}

impl Event for PaymentInitiated {
    contract!("PaymentInitiated", topics::PAYMENTS_INITIATED);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("eventId", avro::uuid(self.event_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("walletId", avro::uuid(self.wallet_id)),
            ("amount", avro::amount(self.amount)),
            ("currency", avro::string(&self.currency)),
            ("kind", avro::string(&self.kind)),
            ("description", avro::string(&self.description)),
            ("requestedAt", avro::timestamp(self.requested_at)),
            ("initiatedAt", avro::timestamp(self.initiated_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            event_id: r.uuid("eventId")?,
            payment_id: r.uuid("paymentId")?,
            wallet_id: r.uuid("walletId")?,
            amount: r.amount("amount")?,
            currency: r.string("currency")?,
            kind: r.string("kind")?,
            description: r.string("description")?,
            requested_at: r.timestamp("requestedAt")?,
            initiated_at: r.timestamp("initiatedAt")?,
        })
    }
}

/// The provider's signed callback, accepted (`ProviderCallbackReceived.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCallbackReceived {
    pub event_id: Uuid,
    pub payment_id: Uuid,
    pub provider_event_id: String,
    pub status: ProviderStatus,
    pub description: String,
    pub provider_timestamp: Timestamp,
    pub received_at: Timestamp,
}

impl Event for ProviderCallbackReceived {
    contract!("ProviderCallbackReceived", topics::PAYMENTS_CALLBACKS);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("eventId", avro::uuid(self.event_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("providerEventId", avro::string(&self.provider_event_id)),
            ("status", self.status.to_avro()),
            ("description", avro::string(&self.description)),
            ("providerTimestamp", avro::timestamp(self.provider_timestamp)),
            ("receivedAt", avro::timestamp(self.received_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            event_id: r.uuid("eventId")?,
            payment_id: r.uuid("paymentId")?,
            provider_event_id: r.string("providerEventId")?,
            status: ProviderStatus::from_symbol(&r.symbol("status")?),
            description: r.string("description")?,
            provider_timestamp: r.timestamp("providerTimestamp")?,
            received_at: r.timestamp("receivedAt")?,
        })
    }
}

/// The one final outcome of a payment (`PaymentResult.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentResult {
    pub payment_result_id: Uuid,
    pub payment_id: Uuid,
    pub wallet_id: Uuid,
    pub amount: Amount,
    pub status: PaymentResultStatus,
    pub reason: String,
    pub decided_at: Timestamp,
}

impl PaymentResult {
    /// The namespace of result ids (UUIDv5): the same payment and outcome always give the
    /// same id, so a replayed decision is recognised as the same result.
    pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_3a52_9c1d_4b7e_a0b2_7d55_c3e1_9a40);

    /// The deterministic id of the result `status` for `payment_id`.
    pub fn id_for(payment_id: Uuid, status: PaymentResultStatus) -> Uuid {
        let name = format!("{payment_id}/{}", status.symbol());
        Uuid::new_v5(&Self::ID_NAMESPACE, name.as_bytes())
    }
}

impl Event for PaymentResult {
    contract!("PaymentResult", topics::PAYMENTS_RESULTS);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("paymentResultId", avro::uuid(self.payment_result_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("walletId", avro::uuid(self.wallet_id)),
            ("amount", avro::amount(self.amount)),
            ("status", self.status.to_avro()),
            ("reason", avro::string(&self.reason)),
            ("decidedAt", avro::timestamp(self.decided_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            payment_result_id: r.uuid("paymentResultId")?,
            payment_id: r.uuid("paymentId")?,
            wallet_id: r.uuid("walletId")?,
            amount: r.amount("amount")?,
            status: PaymentResultStatus::from_symbol(&r.symbol("status")?),
            reason: r.string("reason")?,
            decided_at: r.timestamp("decidedAt")?,
        })
    }
}

/// The owner asked to cancel a payment (`PaymentCancelRequested.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentCancelRequested {
    pub event_id: Uuid,
    pub payment_id: Uuid,
    pub user_id: Uuid,
    pub reason: String,
    pub requested_at: Timestamp,
}

impl Event for PaymentCancelRequested {
    contract!("PaymentCancelRequested", topics::PAYMENTS_CANCEL_REQUESTS);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("eventId", avro::uuid(self.event_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("userId", avro::uuid(self.user_id)),
            ("reason", avro::string(&self.reason)),
            ("requestedAt", avro::timestamp(self.requested_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            event_id: r.uuid("eventId")?,
            payment_id: r.uuid("paymentId")?,
            user_id: r.uuid("userId")?,
            reason: r.string("reason")?,
            requested_at: r.timestamp("requestedAt")?,
        })
    }
}

/// The saga's request to charge (`ChargeCommand.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeCommand {
    pub command_id: Uuid,
    pub payment_id: Uuid,
    pub wallet_id: Uuid,
    pub amount: Amount,
    pub currency: String,
    pub description: String,
    pub issued_at: Timestamp,
    /// No attempt may start after this; `None` for commands written before the field existed.
    pub not_after: Option<Timestamp>,
}

impl ChargeCommand {
    /// Whether the command's deadline has passed at `now` (a command without one never expires).
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.not_after.is_some_and(|not_after| now > not_after)
    }
}

impl Event for ChargeCommand {
    contract!("ChargeCommand", topics::PAYMENTS_PROVIDER_COMMANDS);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("commandId", avro::uuid(self.command_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("walletId", avro::uuid(self.wallet_id)),
            ("amount", avro::amount(self.amount)),
            ("currency", avro::string(&self.currency)),
            ("description", avro::string(&self.description)),
            ("issuedAt", avro::timestamp(self.issued_at)),
            ("notAfter", nullable(self.not_after.map(avro::timestamp))),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            command_id: r.uuid("commandId")?,
            payment_id: r.uuid("paymentId")?,
            wallet_id: r.uuid("walletId")?,
            amount: r.amount("amount")?,
            currency: r.string("currency")?,
            description: r.string("description")?,
            issued_at: r.timestamp("issuedAt")?,
            not_after: optional_timestamp(&mut r, "notAfter")?,
        })
    }
}

/// What became of a charge command (`DispatchOutcome.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchOutcome {
    pub command_id: Uuid,
    pub payment_id: Uuid,
    pub outcome: DispatchResult,
    pub attempts: i32,
    pub detail: String,
    pub decided_at: Timestamp,
}

impl Event for DispatchOutcome {
    contract!("DispatchOutcome", topics::PAYMENTS_DISPATCH_OUTCOMES);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("commandId", avro::uuid(self.command_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("outcome", self.outcome.to_avro()),
            ("attempts", Value::Int(self.attempts)),
            ("detail", avro::string(&self.detail)),
            ("decidedAt", avro::timestamp(self.decided_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            command_id: r.uuid("commandId")?,
            payment_id: r.uuid("paymentId")?,
            outcome: DispatchResult::from_symbol(&r.symbol("outcome")?),
            attempts: r.int("attempts")?,
            detail: r.string("detail")?,
            decided_at: r.timestamp("decidedAt")?,
        })
    }
}

/// What happened to a timer: the two branches of `TimerEvent.event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerChange {
    /// The saga asked for the timer.
    Scheduled { scheduled_at: Timestamp },
    /// The timer processor found it due.
    Fired { fired_at: Timestamp },
}

/// A durable timer on `payments.timers` (`TimerEvent.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerEvent {
    pub timer_id: Uuid,
    pub payment_id: Uuid,
    pub kind: TimerKind,
    pub due_at: Timestamp,
    pub change: TimerChange,
}

impl Event for TimerEvent {
    contract!("TimerEvent", topics::PAYMENTS_TIMERS);

    fn to_avro(&self) -> Value {
        let change = match self.change {
            TimerChange::Scheduled { scheduled_at } => {
                Value::Union(0, Box::new(avro::record(vec![("scheduledAt", avro::timestamp(scheduled_at))])))
            }
            TimerChange::Fired { fired_at } => {
                Value::Union(1, Box::new(avro::record(vec![("firedAt", avro::timestamp(fired_at))])))
            }
        };
        avro::record(vec![
            ("timerId", avro::uuid(self.timer_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("kind", self.kind.to_avro()),
            ("dueAt", avro::timestamp(self.due_at)),
            ("event", change),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        let timer_id = r.uuid("timerId")?;
        let payment_id = r.uuid("paymentId")?;
        let kind = TimerKind::from_symbol(&r.symbol("kind")?);
        let due_at = r.timestamp("dueAt")?;
        let change = match r.union("event")? {
            (0, branch) => {
                TimerChange::Scheduled { scheduled_at: RecordReader::new(branch)?.timestamp("scheduledAt")? }
            }
            (1, branch) => TimerChange::Fired { fired_at: RecordReader::new(branch)?.timestamp("firedAt")? },
            (index, _) => {
                return Err(ContractError::OutOfRange {
                    field: "event",
                    value: format!("union branch {index}"),
                })
            }
        };
        Ok(Self { timer_id, payment_id, kind, due_at, change })
    }
}

/// What a [`ProviderRequest`] asks: the three branches of `ProviderRequest.action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderAction {
    /// `GET /v1/charges/{key}`: is there a successful charge?
    StatusQuery { reason: String },
    /// `POST /v1/charges/{key}/void`: make the key unchargeable for good.
    Void { reason: String },
    /// `POST /v1/charges/{key}/refund`: give the charge back.
    Refund { amount: Amount, currency: String, reason: String },
}

impl ProviderAction {
    /// A short name for logs and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::StatusQuery { .. } => "status",
            Self::Void { .. } => "void",
            Self::Refund { .. } => "refund",
        }
    }
}

/// The saga's request to verify or undo a charge (`ProviderRequest.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRequest {
    pub request_id: Uuid,
    pub payment_id: Uuid,
    pub action: ProviderAction,
    pub issued_at: Timestamp,
}

impl Event for ProviderRequest {
    contract!("ProviderRequest", topics::PAYMENTS_PROVIDER_REQUESTS);

    fn to_avro(&self) -> Value {
        let action = match &self.action {
            ProviderAction::StatusQuery { reason } => {
                Value::Union(0, Box::new(avro::record(vec![("queryReason", avro::string(reason))])))
            }
            ProviderAction::Void { reason } => {
                Value::Union(1, Box::new(avro::record(vec![("voidReason", avro::string(reason))])))
            }
            ProviderAction::Refund { amount, currency, reason } => Value::Union(
                2,
                Box::new(avro::record(vec![
                    ("amount", avro::amount(*amount)),
                    ("currency", avro::string(currency)),
                    ("refundReason", avro::string(reason)),
                ])),
            ),
        };
        avro::record(vec![
            ("requestId", avro::uuid(self.request_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("action", action),
            ("issuedAt", avro::timestamp(self.issued_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        let request_id = r.uuid("requestId")?;
        let payment_id = r.uuid("paymentId")?;
        let action = match r.union("action")? {
            (0, branch) => {
                ProviderAction::StatusQuery { reason: RecordReader::new(branch)?.string("queryReason")? }
            }
            (1, branch) => ProviderAction::Void { reason: RecordReader::new(branch)?.string("voidReason")? },
            (2, branch) => {
                let mut b = RecordReader::new(branch)?;
                ProviderAction::Refund {
                    amount: b.amount("amount")?,
                    currency: b.string("currency")?,
                    reason: b.string("refundReason")?,
                }
            }
            (index, _) => {
                return Err(ContractError::OutOfRange {
                    field: "action",
                    value: format!("union branch {index}"),
                })
            }
        };
        Ok(Self { request_id, payment_id, action, issued_at: r.timestamp("issuedAt")? })
    }
}

/// A discrepancy between the provider's ledger and paystream's, and its remedy
/// (`ReconciliationEvent.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconciliationEvent {
    pub event_id: Uuid,
    pub payment_id: Uuid,
    pub wallet_id: Uuid,
    pub amount: Amount,
    pub currency: String,
    pub discrepancy: Discrepancy,
    pub remedy: Remedy,
    pub published_status: PaymentResultStatus,
    pub refund_request_id: Option<Uuid>,
    pub evidence: String,
    pub detected_at: Timestamp,
}

impl ReconciliationEvent {
    /// The namespace of reconciliation event ids (UUIDv5 of payment and discrepancy).
    pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x2d7c_41e9_8b36_4f0a_b5d2_93e1_6c08_7fa4);

    /// The deterministic id of `discrepancy` for `payment_id`.
    pub fn id_for(payment_id: Uuid, discrepancy: Discrepancy) -> Uuid {
        Uuid::new_v5(&Self::ID_NAMESPACE, format!("{payment_id}/{}", discrepancy.symbol()).as_bytes())
    }
}

impl Event for ReconciliationEvent {
    contract!("ReconciliationEvent", topics::PAYMENTS_RECONCILIATION);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("eventId", avro::uuid(self.event_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("walletId", avro::uuid(self.wallet_id)),
            ("amount", avro::amount(self.amount)),
            ("currency", avro::string(&self.currency)),
            ("discrepancy", self.discrepancy.to_avro()),
            ("remedy", self.remedy.to_avro()),
            ("publishedStatus", avro::string(self.published_status.symbol())),
            ("refundRequestId", nullable(self.refund_request_id.map(avro::uuid))),
            ("evidence", avro::string(&self.evidence)),
            ("detectedAt", avro::timestamp(self.detected_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            event_id: r.uuid("eventId")?,
            payment_id: r.uuid("paymentId")?,
            wallet_id: r.uuid("walletId")?,
            amount: r.amount("amount")?,
            currency: r.string("currency")?,
            discrepancy: Discrepancy::from_symbol(&r.symbol("discrepancy")?),
            remedy: Remedy::from_symbol(&r.symbol("remedy")?),
            published_status: PaymentResultStatus::from_symbol(&r.string("publishedStatus")?),
            refund_request_id: optional_uuid(&mut r, "refundRequestId")?,
            evidence: r.string("evidence")?,
            detected_at: r.timestamp("detectedAt")?,
        })
    }
}

/// The read side's view of one payment (`PaymentView.avsc`), folded from the payment topics by
/// the payment view topology. Fields not known yet (a result before its PaymentInitiated) are
/// `None`; `status` is a string so that a state added later reaches old readers as itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentView {
    pub payment_id: Uuid,
    pub wallet_id: Option<Uuid>,
    pub amount: Option<Amount>,
    pub currency: Option<String>,
    pub kind: Option<String>,
    pub description: Option<String>,
    /// NEW, SENT, VERIFYING, VOIDING, REFUNDING, COMPLETED, FAILED, FAILED_TIMEOUT, RECONCILED.
    pub status: String,
    pub reason: Option<String>,
    /// PaymentInitiated's `initiatedAt`.
    pub created_at: Option<Timestamp>,
    /// The latest own time of the events applied (a replay writes the same value).
    pub updated_at: Timestamp,
    /// How many distinct events were applied.
    pub version: i64,
    pub result_id: Option<Uuid>,
    /// The W3C trace id (from a `traceparent` header) of the payment's events.
    pub trace_id: Option<String>,
}

impl Event for PaymentView {
    contract!("PaymentView", topics::PAYMENTS_VIEW);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("paymentId", avro::uuid(self.payment_id)),
            ("walletId", nullable(self.wallet_id.map(avro::uuid))),
            ("amount", nullable(self.amount.map(avro::amount))),
            ("currency", nullable(self.currency.as_deref().map(avro::string))),
            ("kind", nullable(self.kind.as_deref().map(avro::string))),
            ("description", nullable(self.description.as_deref().map(avro::string))),
            ("status", avro::string(&self.status)),
            ("reason", nullable(self.reason.as_deref().map(avro::string))),
            ("createdAt", nullable(self.created_at.map(avro::timestamp))),
            ("updatedAt", avro::timestamp(self.updated_at)),
            ("version", Value::Long(self.version)),
            ("resultId", nullable(self.result_id.map(avro::uuid))),
            ("traceId", nullable(self.trace_id.as_deref().map(avro::string))),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            payment_id: r.uuid("paymentId")?,
            wallet_id: optional_uuid(&mut r, "walletId")?,
            amount: optional_amount(&mut r, "amount")?,
            currency: optional_string(&mut r, "currency")?,
            kind: optional_string(&mut r, "kind")?,
            description: optional_string(&mut r, "description")?,
            status: r.string("status")?,
            reason: optional_string(&mut r, "reason")?,
            created_at: optional_timestamp(&mut r, "createdAt")?,
            updated_at: r.timestamp("updatedAt")?,
            version: r.long("version")?,
            result_id: optional_uuid(&mut r, "resultId")?,
            trace_id: optional_string(&mut r, "traceId")?,
        })
    }
}

/// One event of a payment's history (`PaymentTimelineEvent.avsc`); the read database upserts
/// it by (paymentId, seq).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentTimelineEvent {
    pub payment_id: Uuid,
    /// 1, 2, 3, ... per payment.
    pub seq: i32,
    /// INITIATED, DISPATCHED, PROVIDER_ANSWER, CALLBACK, TIMER, RECONCILIATION, RESULT.
    pub kind: String,
    pub detail: String,
    /// The event's own time.
    pub at: Timestamp,
    pub trace_id: Option<String>,
}

impl Event for PaymentTimelineEvent {
    contract!("PaymentTimelineEvent", topics::PAYMENTS_TIMELINE);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("paymentId", avro::uuid(self.payment_id)),
            ("seq", Value::Int(self.seq)),
            ("kind", avro::string(&self.kind)),
            ("detail", avro::string(&self.detail)),
            ("at", avro::timestamp(self.at)),
            ("traceId", nullable(self.trace_id.as_deref().map(avro::string))),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            payment_id: r.uuid("paymentId")?,
            seq: r.int("seq")?,
            kind: r.string("kind")?,
            detail: r.string("detail")?,
            at: r.timestamp("at")?,
            trace_id: optional_string(&mut r, "traceId")?,
        })
    }
}

// The Kafka door of seed 004 (PayOrder in, OrderPaid / OrderPaymentFailed out), in a file of its
// own; it uses this module's macros and helpers.
mod orders;
pub use orders::{CommandAmount, OrderFailureReason, OrderPaid, OrderPaymentFailed, PayOrder};
