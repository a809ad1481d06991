//! One payment, one trace: the W3C trace context (`traceparent`) carried across Kafka headers and
//! HTTP headers, and the span each process opens for the work it does on a payment.
//!
//! Every hop reads the context its input carries ([`parent_from_pairs`], [`parent_from_http`]),
//! opens its span under it ([`record_span`], or an HTTP server span in the API's middleware), and
//! writes the context of that span onto what it sends on ([`outgoing`], [`inject_http`]). The
//! propagator is OpenTelemetry's [`TraceContextPropagator`], used directly (not through the global
//! one) so that reading and writing headers never depends on whether export is configured.
//!
//! Spans become OpenTelemetry spans only in a process whose subscriber has the
//! `tracing-opentelemetry` layer (the CLI's, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set). Without it a
//! span has no trace context, and [`outgoing`] passes the input's `traceparent` on unchanged, so the
//! header still travels from the API's outbox row to settlement.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header (and Kafka header, and outbox column) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Header pairs as an OpenTelemetry [`Extractor`]: Kafka headers, topology headers, any
/// `(name, bytes)` list. The last value of a repeated name wins, as `topology::record::header`.
struct Pairs<'a>(Vec<(&'a str, &'a [u8])>);

impl Extractor for Pairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }
}

/// HTTP headers as an [`Extractor`] (axum's and reqwest's `HeaderMap` are both `http`'s).
struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// An [`Injector`] that keeps only the `traceparent` the propagator writes.
#[derive(Default)]
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// An [`Injector`] into HTTP headers (an outgoing reqwest request's).
struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// The trace context carried by `headers` (Kafka or topology header pairs); an empty context
/// when they carry none or a malformed one (the span then starts a trace of its own).
pub fn parent_from_pairs<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Context {
    TraceContextPropagator::new().extract(&Pairs(headers.into_iter().collect()))
}

/// The trace context carried by a Kafka message's headers (`message.headers()`, borrowed or owned).
pub fn parent_from_kafka<H: rdkafka::message::Headers>(headers: Option<&H>) -> Context {
    parent_from_pairs(
        headers.into_iter().flat_map(|h| h.iter()).map(|h| (h.key, h.value.unwrap_or_default())),
    )
}

/// The trace context carried by HTTP request headers.
pub fn parent_from_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HttpHeaders(headers))
}

/// Makes `parent` the parent of `span` (before it is first entered). A `parent` without a valid
/// span context leaves `span` a root. Without the OpenTelemetry layer this does nothing.
pub fn set_parent(span: &Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Fails only when the span has already started; every caller sets it right after creating it.
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` of `span`, if it has an OpenTelemetry context (export is configured).
pub fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut injector = Traceparent::default();
    TraceContextPropagator::new().inject_context(&context, &mut injector);
    injector.0
}

/// What to write as `traceparent` on a record or row made under the current span: the current
/// span's context when it has one, else `incoming` passed on unchanged (when it is well formed), so
/// that a process without export does not cut the payment's trace in two.
pub fn outgoing(incoming: Option<&[u8]>) -> Option<String> {
    traceparent_of(&Span::current()).or_else(|| {
        let text = std::str::from_utf8(incoming?).ok()?;
        is_traceparent(text).then(|| text.to_owned())
    })
}

/// Writes the current span's trace context into `headers` (an outgoing HTTP request's).
pub fn inject_http(headers: &mut http::HeaderMap) {
    let context = Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HttpInjector(headers));
    }
}

/// Whether `value` is a W3C `traceparent` the propagator accepts (version 00, non-zero ids).
pub fn is_traceparent(value: &str) -> bool {
    let mut pairs = Pairs(Vec::new());
    pairs.0.push((TRACEPARENT, value.as_bytes()));
    TraceContextPropagator::new().extract(&pairs).span().span_context().is_valid()
}

/// The span of one Kafka record's processing by `processor` (`saga`, `dispatch`, `settle`), a child
/// of the context the record's headers carry. Named `<processor> <topic>` in the trace, tagged with
/// the payment (the record key: every payment topic is keyed by paymentId) and the record's place.
pub fn record_span(
    processor: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    payment_id: &str,
    parent: Context,
) -> Span {
    let span = tracing::info_span!(
        "process record",
        otel.name = %format_args!("{processor} {topic}"),
        otel.kind = "consumer",
        payment_id,
        messaging.system = "kafka",
        messaging.destination.name = topic,
        messaging.kafka.partition = partition,
        messaging.kafka.offset = offset,
    );
    set_parent(&span, parent);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_is_read_from_kafka_pairs_and_from_http_headers() {
        let pairs = [("eventType", b"PaymentInitiated".as_slice()), (TRACEPARENT, VALID.as_bytes())];
        let from_pairs = parent_from_pairs(pairs);
        let context = from_pairs.span().span_context().clone();
        assert!(context.is_valid() && context.is_remote() && context.is_sampled());
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");

        let mut http = http::HeaderMap::new();
        http.insert(TRACEPARENT, VALID.parse().unwrap());
        assert_eq!(parent_from_http(&http).span().span_context(), &context);
    }

    #[test]
    fn malformed_or_missing_context_gives_a_root() {
        for bad in ["", "00-x", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "not a header"] {
            assert!(
                !parent_from_pairs([(TRACEPARENT, bad.as_bytes())]).span().span_context().is_valid(),
                "{bad}"
            );
            assert!(!is_traceparent(bad), "{bad}");
        }
        assert!(!parent_from_pairs([]).span().span_context().is_valid());
        assert!(is_traceparent(VALID));
    }

    /// Without the OpenTelemetry layer (no export) a span has no context: the input's traceparent
    /// travels on unchanged, a malformed one is dropped, and nothing is injected into HTTP headers.
    #[test]
    fn without_export_the_incoming_traceparent_is_passed_on() {
        let span = record_span("saga", "payments.initiated", 0, 7, "p", parent_from_pairs([]));
        let _entered = span.enter();
        assert_eq!(outgoing(Some(VALID.as_bytes())).as_deref(), Some(VALID));
        assert_eq!(outgoing(Some(b"00-x")), None);
        assert_eq!(outgoing(None), None);
        let mut headers = http::HeaderMap::new();
        inject_http(&mut headers);
        assert!(headers.is_empty());
    }
    /// With the OpenTelemetry layer, a record's span continues the input's trace: the same trace
    /// id, a span id of its own, and that is what is written on; HTTP requests get the same.
    #[test]
    fn with_export_the_span_continues_the_input_s_trace() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;

        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let parent = parent_from_pairs([(TRACEPARENT, VALID.as_bytes())]);
            let span = record_span("saga", "payments.initiated", 0, 7, "p", parent);
            let entered = span.enter();
            let written = outgoing(Some(b"00-ignored")).expect("a traceparent of the span");
            let parts: Vec<&str> = written.split('-').collect();
            assert_eq!((parts[0], parts[1], parts[3]), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"));
            assert_ne!(parts[2], "00f067aa0ba902b7", "the record's own span is the parent of what it sends");
            let mut headers = http::HeaderMap::new();
            inject_http(&mut headers);
            assert_eq!(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()), Some(written.as_str()));

            drop(entered);
            // Outside any span, a record without a context starts a trace of its own.
            let root = record_span("settle", "payments.results", 0, 1, "p", parent_from_pairs([]));
            let root_traceparent = traceparent_of(&root).expect("a root has a context too");
            assert!(!root_traceparent.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        });
    }
}
