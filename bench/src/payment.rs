//! The one payment both sides make: the same amount, kind and description, and an outbox
//! payload of the same size as the API's.

use paystream_schemas::events::PaymentInitiated;
use paystream_schemas::{time, Amount, EventCodec};
use uuid::Uuid;

/// The amount of every payment, as JSON and SQL write it; small, so no wallet runs dry.
pub const AMOUNT: &str = "0.01";
/// The amount in minor units (kopecks), for the event.
pub const AMOUNT_MINOR: i64 = 1;
/// One of the API's `PAYMENT_KINDS`.
pub const KIND: &str = "mobile";
/// The seeds' example description (Cyrillic, as real ones are: 2 bytes a character).
pub const DESCRIPTION: &str = "Оплата связи";
/// The wallets' currency.
pub const CURRENCY: &str = "RUB";

/// The request body of `POST /api/v1/payment` for `payment_id` on `wallet_id`.
/// `timestamp` is in the seeds' `yyyyMMdd-HH:mm:ss:SSSSSS` form.
pub fn request_body(payment_id: Uuid, wallet_id: Uuid, timestamp: &str) -> String {
    // Built by hand rather than through serde_json: the load generator shares the CPU with
    // the server, so it should do as little as it can. The constants need no escaping.
    format!(
        r#"{{"paymentId":"{payment_id}","wallet":"{wallet_id}","amount":{AMOUNT},"kind":"{KIND}","description":"{DESCRIPTION}","timestamp":"{timestamp}"}}"#
    )
}

/// A `PaymentInitiated` exactly as the API encodes it for `wallet_id`: the registered
/// contract in the Confluent wire format. pgbench writes these bytes into the outbox, so
/// both sides write payloads of the same size.
pub async fn encoded_event(codec: &EventCodec, wallet_id: Uuid) -> anyhow::Result<Vec<u8>> {
    let now = time::now();
    let event = PaymentInitiated {
        event_id: Uuid::new_v4(),
        payment_id: Uuid::new_v4(),
        wallet_id,
        amount: Amount::from_minor(AMOUNT_MINOR)?,
        currency: CURRENCY.to_owned(),
        kind: KIND.to_owned(),
        description: DESCRIPTION.to_owned(),
        requested_at: now,
        initiated_at: now,
    };
    Ok(codec.encode(&event).await?)
}

/// A W3C `traceparent` of the shape and length the API generates when a request has none.
pub fn traceparent() -> String {
    let trace_id = Uuid::new_v4().simple().to_string();
    let span_id = &Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace_id}-{span_id}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_json_the_api_expects() {
        let (payment, wallet) = (Uuid::new_v4(), Uuid::new_v4());
        let body: serde_json::Value =
            serde_json::from_str(&request_body(payment, wallet, "20261128-04:11:13:123456")).unwrap();
        assert_eq!(body["paymentId"], payment.to_string());
        assert_eq!(body["wallet"], wallet.to_string());
        assert_eq!(body["amount"].to_string(), AMOUNT);
        assert_eq!(body["kind"], KIND);
        assert_eq!(body["description"], DESCRIPTION);
        assert_eq!(Amount::from_minor(AMOUNT_MINOR).unwrap().to_decimal().to_string(), AMOUNT);
    }

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let value = traceparent();
        assert_eq!(value.len(), 55);
        assert_eq!(value.split('-').map(str::len).collect::<Vec<_>>(), [2, 32, 16, 2]);
    }
}
