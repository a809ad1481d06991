//! Seed 004's Kafka door: the orders service commands a payment with [`PayOrder`] on
//! `pay.order` and hears back [`OrderPaid`] or [`OrderPaymentFailed`], all keyed by the order id.
//!
//! The ids that make the door exactly-once are derived here, once: an order's payment id
//! ([`PayOrder::payment_id_for`]) and its answer's event id ([`OrderPaid::id_for`],
//! [`OrderPaymentFailed::id_for`]) are UUIDv5 of the order id, so a command sent twice, or an
//! answer written twice, carries the same ids.

use apache_avro::types::Value;
use apache_avro::Schema;
use std::sync::OnceLock;
use uuid::Uuid;

use super::{nullable, topics};
use crate::event::{avro, parse_contract, ContractError, Event, RecordReader};
use crate::money::{Amount, AmountError};
use crate::time::Timestamp;

/// `events`' `contract!`, with the contract's path relative to this file (`include_str!` reads
/// relative to the file that invokes it).
macro_rules! contract_here {
    ($name:literal, $topic:expr) => {
        const SCHEMA_JSON: &'static str = include_str!(concat!("../../avro/", $name, ".avsc"));
        const TOPIC: &'static str = $topic;

        fn schema() -> &'static Schema {
            static SCHEMA: OnceLock<Schema> = OnceLock::new();
            SCHEMA.get_or_init(|| parse_contract($name, Self::SCHEMA_JSON))
        }
    };
}

/// The amount a command carried, as Avro `decimal` bytes at scale 2, not yet judged.
///
/// A command with an amount outside the bounds (zero, negative, too large, too many bytes) has
/// an order id and deserves an answer (`OrderPaymentFailed`, `INVALID_AMOUNT`), not the DLQ, so
/// decoding keeps the bytes and the inbox judges them with [`CommandAmount::amount`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandAmount {
    /// Big-endian two's-complement unscaled value, as written.
    bytes: Vec<u8>,
}

impl CommandAmount {
    /// The bytes as a writer sent them (tests write invalid amounts with this).
    pub fn from_avro_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// The amount, or why it is not one.
    pub fn amount(&self) -> Result<Amount, AmountError> {
        Amount::from_avro_bytes(&self.bytes)
    }

    /// The bytes, as they travel.
    pub fn avro_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<Amount> for CommandAmount {
    fn from(amount: Amount) -> Self {
        Self { bytes: amount.to_avro_bytes() }
    }
}

/// The orders service asks to pay an order (`PayOrder.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayOrder {
    pub command_id: Uuid,
    pub order_id: String,
    pub user_id: Uuid,
    /// `None`: the user's wallet in [`PayOrder::currency`].
    pub wallet_id: Option<Uuid>,
    pub amount: CommandAmount,
    pub currency: String,
    pub description: String,
    pub ordered_at: Timestamp,
}

impl PayOrder {
    /// The longest order id accepted, in characters. A longer one (or an empty one) cannot be
    /// recorded in the inbox and is dead-lettered.
    pub const ORDER_ID_CHARS_MAX: usize = 200;
    /// The namespace of order payment ids (UUIDv5 of the order id).
    pub const PAYMENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x9b0e_5f3c_27a4_4d61_8e19_c4a7_02d3_5b86);

    /// The payment an order is paid with: the same order always gives the same paymentId, so
    /// a second command for it meets the first one's payment (and the HTTP door's idempotency
    /// on paymentId) instead of opening another.
    pub fn payment_id_for(order_id: &str) -> Uuid {
        Uuid::new_v5(&Self::PAYMENT_ID_NAMESPACE, order_id.as_bytes())
    }
}

impl Event for PayOrder {
    contract_here!("PayOrder", topics::PAY_ORDER);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("commandId", avro::uuid(self.command_id)),
            ("orderId", avro::string(&self.order_id)),
            ("userId", avro::uuid(self.user_id)),
            ("walletId", nullable(self.wallet_id.map(avro::uuid))),
            ("amount", Value::Decimal(apache_avro::Decimal::from(self.amount.avro_bytes().to_vec()))),
            ("currency", avro::string(&self.currency)),
            ("description", avro::string(&self.description)),
            ("orderedAt", avro::timestamp(self.ordered_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let amount = CommandAmount::from_avro_bytes(raw_decimal(&value, "amount")?);
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            command_id: r.uuid("commandId")?,
            order_id: r.string("orderId")?,
            user_id: r.uuid("userId")?,
            wallet_id: nullable_uuid(&mut r, "walletId")?,
            amount,
            currency: r.string("currency")?,
            description: r.string("description")?,
            ordered_at: r.timestamp("orderedAt")?,
        })
    }
}

/// The namespace of the answers' event ids (UUIDv5 of the order id and the answer).
const ORDER_EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x41c8_6d2e_f0b3_4a97_9d5e_1b6a_73c0_e428);

/// An order's payment completed (`OrderPaid.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderPaid {
    pub event_id: Uuid,
    pub order_id: String,
    pub command_id: Uuid,
    pub payment_id: Uuid,
    pub wallet_id: Uuid,
    pub amount: Amount,
    pub currency: String,
    pub paid_at: Timestamp,
}

impl OrderPaid {
    /// The event id of an order's `OrderPaid`: one order, one id, however often it is written.
    pub fn id_for(order_id: &str) -> Uuid {
        Uuid::new_v5(&ORDER_EVENT_NAMESPACE, format!("{order_id}/paid").as_bytes())
    }
}

impl Event for OrderPaid {
    contract_here!("OrderPaid", topics::ORDER_PAID);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("eventId", avro::uuid(self.event_id)),
            ("orderId", avro::string(&self.order_id)),
            ("commandId", avro::uuid(self.command_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("walletId", avro::uuid(self.wallet_id)),
            ("amount", avro::amount(self.amount)),
            ("currency", avro::string(&self.currency)),
            ("paidAt", avro::timestamp(self.paid_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        Ok(Self {
            event_id: r.uuid("eventId")?,
            order_id: r.string("orderId")?,
            command_id: r.uuid("commandId")?,
            payment_id: r.uuid("paymentId")?,
            wallet_id: r.uuid("walletId")?,
            amount: r.amount("amount")?,
            currency: r.string("currency")?,
            paid_at: r.timestamp("paidAt")?,
        })
    }
}

avro_enum!(
    /// Why an order could not be paid (`OrderPaymentFailed.reason`).
    OrderFailureReason {
        Unknown => "UNKNOWN",
        InsufficientFunds => "INSUFFICIENT_FUNDS",
        UnknownWallet => "UNKNOWN_WALLET",
        WalletNotOwned => "WALLET_NOT_OWNED",
        CurrencyMismatch => "CURRENCY_MISMATCH",
        InvalidAmount => "INVALID_AMOUNT",
        InvalidCommand => "INVALID_COMMAND",
        PaymentIdTaken => "PAYMENT_ID_TAKEN",
        PaymentFailed => "PAYMENT_FAILED",
        PaymentTimedOut => "PAYMENT_TIMED_OUT",
        PaymentCanceled => "PAYMENT_CANCELED",
    }
);

/// An order could not be paid (`OrderPaymentFailed.avsc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderPaymentFailed {
    pub event_id: Uuid,
    pub order_id: String,
    pub command_id: Uuid,
    pub payment_id: Uuid,
    /// `None` when the command's amount was not a valid amount.
    pub amount: Option<Amount>,
    pub reason: OrderFailureReason,
    pub detail: String,
    pub failed_at: Timestamp,
}

impl OrderPaymentFailed {
    /// The event id of an order's `OrderPaymentFailed`: one order, one id.
    pub fn id_for(order_id: &str) -> Uuid {
        Uuid::new_v5(&ORDER_EVENT_NAMESPACE, format!("{order_id}/failed").as_bytes())
    }
}

impl Event for OrderPaymentFailed {
    contract_here!("OrderPaymentFailed", topics::ORDER_PAYMENT_FAILED);

    fn to_avro(&self) -> Value {
        avro::record(vec![
            ("eventId", avro::uuid(self.event_id)),
            ("orderId", avro::string(&self.order_id)),
            ("commandId", avro::uuid(self.command_id)),
            ("paymentId", avro::uuid(self.payment_id)),
            ("amount", nullable(self.amount.map(avro::amount))),
            ("reason", self.reason.to_avro()),
            ("detail", avro::string(&self.detail)),
            ("failedAt", avro::timestamp(self.failed_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, ContractError> {
        let mut r = RecordReader::new(value)?;
        let event_id = r.uuid("eventId")?;
        let order_id = r.string("orderId")?;
        let command_id = r.uuid("commandId")?;
        let payment_id = r.uuid("paymentId")?;
        let amount = match r.union("amount")? {
            (_, Value::Null) => None,
            (_, value) => Some(
                Amount::from_avro_bytes(&decimal_bytes("amount", value)?)
                    .map_err(|source| ContractError::Amount { field: "amount", source })?,
            ),
        };
        Ok(Self {
            event_id,
            order_id,
            command_id,
            payment_id,
            amount,
            reason: OrderFailureReason::from_symbol(&r.symbol("reason")?),
            detail: r.string("detail")?,
            failed_at: r.timestamp("failedAt")?,
        })
    }
}

/// A nullable `uuid`.
fn nullable_uuid(r: &mut RecordReader, field: &'static str) -> Result<Option<Uuid>, ContractError> {
    match r.union(field)? {
        (_, Value::Null) => Ok(None),
        (_, Value::Uuid(uuid)) => Ok(Some(uuid)),
        (_, Value::String(text)) => {
            Uuid::parse_str(&text).map(Some).map_err(|_| ContractError::BadUuid { field, value: text })
        }
        (_, other) => Err(ContractError::WrongType { field, found: format!("{other:?}") }),
    }
}

/// The bytes of an Avro `decimal` value.
fn decimal_bytes(field: &'static str, value: Value) -> Result<Vec<u8>, ContractError> {
    match value {
        Value::Decimal(d) => {
            Vec::<u8>::try_from(d).map_err(|e| ContractError::WrongType { field, found: e.to_string() })
        }
        Value::Bytes(b) => Ok(b),
        other => Err(ContractError::WrongType { field, found: format!("{other:?}") }),
    }
}

/// The raw bytes of the record's `decimal` field `field`, not yet judged as an amount
/// ([`RecordReader::amount`] judges while it reads, which a command's amount must not).
fn raw_decimal(record: &Value, field: &'static str) -> Result<Vec<u8>, ContractError> {
    let Value::Record(fields) = record else {
        return Err(ContractError::NotARecord(format!("{record:?}").chars().take(40).collect()));
    };
    let (_, value) = fields.iter().find(|(name, _)| name == field).ok_or(ContractError::Missing(field))?;
    decimal_bytes(field, value.clone())
}

#[cfg(test)]
mod tests {
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    use super::*;
    use crate::time;

    /// Through Avro bytes and back (not `Value::resolve`, which misjudges decimals' precision).
    fn through_bytes<E: Event>(event: &E) -> E {
        let writer = GenericDatumWriter::builder(E::schema()).build().unwrap();
        let bytes = writer.write_value_to_vec(event.to_avro()).expect("encodes with its own schema");
        let reader = GenericDatumReader::builder(E::schema()).build().unwrap();
        E::from_avro(reader.read_value(&mut bytes.as_slice()).expect("decodes")).expect("valid event")
    }

    fn round_trip<E: Event + PartialEq + std::fmt::Debug>(event: &E) {
        assert_eq!(&through_bytes(event), event);
    }

    #[test]
    fn each_order_contract_round_trips() {
        let order_id = "order-42".to_owned();
        let now = time::from_micros(time::to_micros(time::now())).unwrap();
        let amount = Amount::from_minor(12_345).unwrap();
        for wallet_id in [None, Some(Uuid::new_v4())] {
            round_trip(&PayOrder {
                command_id: Uuid::new_v4(),
                order_id: order_id.clone(),
                user_id: Uuid::new_v4(),
                wallet_id,
                amount: amount.into(),
                currency: "RUB".into(),
                description: "Заказ 42".into(),
                ordered_at: now,
            });
        }
        round_trip(&OrderPaid {
            event_id: OrderPaid::id_for(&order_id),
            order_id: order_id.clone(),
            command_id: Uuid::new_v4(),
            payment_id: PayOrder::payment_id_for(&order_id),
            wallet_id: Uuid::new_v4(),
            amount,
            currency: "RUB".into(),
            paid_at: now,
        });
        for (amount, reason) in
            [(Some(amount), OrderFailureReason::InsufficientFunds), (None, OrderFailureReason::InvalidAmount)]
        {
            round_trip(&OrderPaymentFailed {
                event_id: OrderPaymentFailed::id_for(&order_id),
                order_id: order_id.clone(),
                command_id: Uuid::new_v4(),
                payment_id: PayOrder::payment_id_for(&order_id),
                amount,
                reason,
                detail: "because".into(),
                failed_at: now,
            });
        }
    }

    #[test]
    fn an_invalid_amount_decodes_and_is_judged_later() {
        for bytes in [vec![0x00], vec![0xFF], vec![0x17, 0x48, 0x76, 0xE8, 0x00]] {
            let command = PayOrder {
                command_id: Uuid::new_v4(),
                order_id: "o".into(),
                user_id: Uuid::new_v4(),
                wallet_id: None,
                amount: CommandAmount::from_avro_bytes(bytes),
                currency: "RUB".into(),
                description: String::new(),
                ordered_at: time::from_micros(0).unwrap(),
            };
            let read = through_bytes(&command);
            assert!(read.amount.amount().is_err(), "{:?}", read.amount);
        }
    }

    #[test]
    fn ids_are_deterministic_per_order_and_distinct_per_answer() {
        assert_eq!(PayOrder::payment_id_for("a"), PayOrder::payment_id_for("a"));
        assert_ne!(PayOrder::payment_id_for("a"), PayOrder::payment_id_for("b"));
        assert_eq!(PayOrder::payment_id_for("a").get_version_num(), 5);
        assert_ne!(OrderPaid::id_for("a"), OrderPaymentFailed::id_for("a"));
        assert_ne!(OrderPaid::id_for("a"), PayOrder::payment_id_for("a"));
        assert_eq!(OrderPaymentFailed::id_for("a"), OrderPaymentFailed::id_for("a"));
    }

    #[test]
    fn an_unknown_failure_reason_reads_as_unknown() {
        assert_eq!(OrderFailureReason::from_symbol("CHARGEBACK"), OrderFailureReason::Unknown);
        assert_eq!(
            OrderFailureReason::from_symbol("INSUFFICIENT_FUNDS"),
            OrderFailureReason::InsufficientFunds
        );
        let schema: serde_json::Value =
            serde_json::from_str(OrderPaymentFailed::SCHEMA_JSON).expect("the contract is JSON");
        let symbols = &schema["fields"][5]["type"]["symbols"];
        let listed: Vec<&str> = symbols.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(
            listed,
            OrderFailureReason::SYMBOLS,
            "the Rust enum lists the contract's symbols in order"
        );
    }
}
