//! The codec against the real Schema Registry: events are framed with the id the registry
//! gave their contract and decode back unchanged; bad bytes and an unreachable registry are
//! typed errors (dead-letter or retry), never a panic.

mod common;

use common::*;
use paystream_schemas::codec::DecodeError;
use paystream_schemas::events::{PaymentInitiated, PaymentResult, PaymentResultStatus};
use paystream_schemas::wire::{self, WireError};
use paystream_schemas::{Event, EventCodec};
use proptest::prelude::*;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn events_are_framed_with_their_registered_id_and_decode_unchanged() {
    let (_, registry, codec) = registry().await;
    let event = payment_initiated();
    let bytes = codec.encode(&event).await.expect("encode");

    let framed = wire::parse(&bytes).unwrap();
    let latest = registry.latest(&PaymentInitiated::subject()).await.unwrap().expect("subject registered");
    assert_eq!(framed.schema_id, latest.id, "framed with the id of the registered contract");
    assert_eq!(codec.decode::<PaymentInitiated>(&bytes).await.unwrap(), event);

    let payment_id = Uuid::new_v4();
    let result = PaymentResult {
        payment_result_id: PaymentResult::id_for(payment_id, PaymentResultStatus::FailedTimeout),
        payment_id,
        wallet_id: event.wallet_id,
        amount: event.amount,
        status: PaymentResultStatus::FailedTimeout,
        reason: "no callback within 30 s".into(),
        decided_at: event.initiated_at,
    };
    let bytes = codec.encode(&result).await.unwrap();
    assert_eq!(codec.decode::<PaymentResult>(&bytes).await.unwrap(), result);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bytes_are_typed_errors_for_the_dead_letter_topic() {
    let (_, _, codec) = registry().await;
    let good = codec.encode(&payment_initiated()).await.unwrap();

    let error = codec.decode::<PaymentInitiated>(b"{\"paymentId\":1}").await.unwrap_err();
    assert!(matches!(error, DecodeError::Wire(WireError::WrongMagicByte(b'{'))), "{error}");
    let error = codec.decode::<PaymentInitiated>(&good[..3]).await.unwrap_err();
    assert!(matches!(error, DecodeError::Wire(WireError::Truncated(3))), "{error}");
    let error = codec.decode::<PaymentInitiated>(&[]).await.unwrap_err();
    assert!(matches!(error, DecodeError::Wire(WireError::Empty)), "{error}");

    // An id the registry never gave out.
    let unknown = wire::frame(987_654_321, &good[wire::HEADER_LEN..]);
    let error = codec.decode::<PaymentInitiated>(&unknown).await.unwrap_err();
    assert!(matches!(error, DecodeError::UnknownSchemaId(987_654_321)), "{error}");
    assert!(!error.is_retriable());
    assert_eq!(error.kind(), "unknown-schema-id");

    // A body cut short, and a body of another event under this contract's id.
    let error = codec.decode::<PaymentInitiated>(&good[..good.len() - 10]).await.unwrap_err();
    assert!(matches!(error, DecodeError::Body { .. }), "{error}");
    let other = codec.encode(&payment_initiated()).await.unwrap();
    let result_id = wire::parse(&codec_result_bytes(&codec).await).unwrap().schema_id;
    let mislabelled = wire::frame(result_id, &other[wire::HEADER_LEN..]);
    let error = codec.decode::<PaymentResult>(&mislabelled).await.unwrap_err();
    assert!(!error.is_retriable(), "{error}");
}

async fn codec_result_bytes(codec: &EventCodec) -> Vec<u8> {
    let payment_id = Uuid::new_v4();
    let result = PaymentResult {
        payment_result_id: PaymentResult::id_for(payment_id, PaymentResultStatus::Completed),
        payment_id,
        wallet_id: Uuid::new_v4(),
        amount: "1.00".parse().unwrap(),
        status: PaymentResultStatus::Completed,
        reason: String::new(),
        decided_at: paystream_schemas::time::now(),
    };
    codec.encode(&result).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_is_retriable_not_poison() {
    let (_, _, codec) = registry().await;
    let good = codec.encode(&payment_initiated()).await.unwrap();
    // Nothing listens on port 1; the same bytes must be retried later, not dead-lettered.
    let away = EventCodec::new("http://127.0.0.1:1/apis/ccompat/v7").unwrap();
    let error = away.decode::<PaymentInitiated>(&good).await.unwrap_err();
    assert!(matches!(error, DecodeError::RegistryUnavailable(_)), "{error}");
    assert!(error.is_retriable());
    // And encoding fails with an error rather than producing unframed bytes.
    assert!(away.encode(&payment_initiated()).await.is_err());
}

/// One runtime, codec and schema id for every property case: building them per case
/// would measure the registry's connection set-up, not the decoder.
fn shared() -> &'static (tokio::runtime::Runtime, EventCodec, u32) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, EventCodec, u32)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (codec, id) = runtime.block_on(async {
            let (_, registry, codec) = registry().await;
            codec.encode(&payment_initiated()).await.expect("contract registered");
            let id = registry.latest(&PaymentInitiated::subject()).await.unwrap().expect("registered").id;
            (codec, id)
        });
        (runtime, codec, id)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Any body under a real schema id decodes or fails with a typed, non-retriable error:
    /// no panic, no unbounded allocation (the codec caps allocations at 1 MiB).
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let (runtime, codec, id) = shared();
        let framed = wire::frame(*id, &body);
        match runtime.block_on(codec.decode::<PaymentInitiated>(&framed)) {
            Ok(event) => prop_assert!(event.amount.minor() > 0),
            Err(error) => prop_assert!(!error.is_retriable(), "{}", error),
        }
    }

    /// Mutating one byte of a valid record never panics either.
    #[test]
    fn corrupted_records_never_panic(index in 0usize..200, byte in any::<u8>()) {
        let (runtime, codec, _) = shared();
        let mut bytes = runtime.block_on(codec.encode(&payment_initiated())).unwrap();
        let at = index % bytes.len();
        bytes[at] = byte;
        if let Err(error) = runtime.block_on(codec.decode::<PaymentInitiated>(&bytes)) {
            prop_assert!(!error.is_retriable() || matches!(error, DecodeError::UnknownSchemaId(_)), "{}", error);
        }
    }
}

/// Every branch of a union comes back as itself through the registry's resolution (apache-avro
/// resolves a union value to the first branch it fits, so branches of one shape would collapse).
#[tokio::test(flavor = "multi_thread")]
async fn every_provider_request_action_decodes_as_itself() {
    use paystream_schemas::events::{ProviderAction, ProviderRequest};
    let (_, _, codec) = registry().await;
    let event = payment_initiated();
    for action in [
        ProviderAction::StatusQuery { reason: "timer".into() },
        ProviderAction::Void { reason: "timer".into() },
        ProviderAction::Refund { amount: event.amount, currency: "RUB".into(), reason: "late".into() },
    ] {
        let request = ProviderRequest {
            request_id: Uuid::new_v4(),
            payment_id: event.payment_id,
            action,
            issued_at: event.initiated_at,
        };
        let bytes = codec.encode(&request).await.expect("encode");
        assert_eq!(codec.decode::<ProviderRequest>(&bytes).await.unwrap(), request);
    }
}
