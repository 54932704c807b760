//! Logs and traces.
//!
//! - **Logs:** JSON lines by default (for log shippers), human-readable with
//!   `HERALD_LOG_FORMAT=pretty`, filtered by `RUST_LOG`. A line logged while handling a request
//!   or a delivery carries that work's `trace_id` (in the span it was logged in).
//! - **Traces:** every service runs an OpenTelemetry tracer fed by its `tracing` spans. Spans
//!   are exported over OTLP/HTTP when [`TraceExport::Otlp`] is configured; otherwise they are
//!   dropped, but the W3C trace context still propagates, so a caller's `traceparent` reaches
//!   Teams either way. The context travels in HTTP headers ([`http_trace_context`],
//!   [`inject_http`]) and AMQP headers (`amqp::headers::{trace_context, set_trace_context}`).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, fmt, prelude::*};

use crate::{
    config::{LogFormat, TraceExport},
    error::Chain,
};

mod span_fields;

use span_fields::JsonSpanFields;

/// The running tracer; [`shutdown`](Telemetry::shutdown) flushes the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter; call it last, before exiting.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(error = %Chain(&error), "flushing traces at shutdown failed");
        }
    }
}

/// Installs logging to stdout (a service's output is its log) and the tracer of `service`
/// (its `service.name`, unless `OTEL_SERVICE_NAME` says otherwise). Later calls (tests starting
/// several services in one process) install nothing.
pub fn init(
    service: &'static str,
    format: LogFormat,
    filter: &str,
    traces: &TraceExport,
) -> Result<Telemetry, String> {
    let provider = tracer_provider(service, traces)?;
    // Only Herald's own spans become trace spans: libraries' internal spans would be noise.
    // Each option turned off here cost every job's spans work on each poll of their futures:
    // making the OpenTelemetry context current (nothing reads `Context::current()`; the
    // propagators take a span's context from the span), timing busy and idle stretches, and
    // naming the thread. Their attributes are not worth a tenth of a job's CPU time.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("herald"))
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target("herald", tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(spans);
    let logs = log_layer(format, filter, std::io::stdout);
    let _ = registry.with(logs).try_init();
    Ok(Telemetry { provider })
}

/// Logging to stderr and no tracer: for commands whose stdout is their answer.
pub fn init_for_command(format: LogFormat, filter: &str) {
    let logs = log_layer(format, filter, std::io::stderr);
    let _ = tracing_subscriber::registry().with(logs).try_init();
}

fn log_layer<S, W>(format: LogFormat, filter: &str, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'a> fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .fmt_fields(JsonSpanFields)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(writer).with_filter(filter).boxed(),
    }
}

fn tracer_provider(
    service: &'static str,
    traces: &TraceExport,
) -> Result<SdkTracerProvider, String> {
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    // The default detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is the
    // name when neither gives one.
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service);
    }
    let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
    if let TraceExport::Otlp { traces_url } = traces {
        // Headers, timeout and batching still come from the standard OTEL_* variables.
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url.as_str())
            .build()
            .map_err(|error| format!("OTLP exporter for {traces_url}: {}", Chain(&error)))?;
        provider = provider.with_batch_exporter(exporter);
    }
    Ok(provider.build())
}

/// The W3C trace context of an HTTP request (an empty context when it carries none).
pub fn http_trace_context(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HttpHeaders(headers))
}

/// The value for the `trace_id` field of a span about to continue `parent`: the parent's trace
/// id, or `None` when it carries none (the span starts a trace, whose id
/// [`continue_trace`] records). Given at creation, the id costs the logging layer nothing more;
/// recorded afterwards it would format the span's fields a second time.
pub fn trace_id_field(parent: &Context) -> Option<tracing::field::DisplayValue<TraceId>> {
    let span_context = parent.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| tracing::field::display(span_context.trace_id()))
}

/// Makes `span` (created with [`trace_id_field`] of `parent` as its `trace_id`) a child of
/// `parent`, or the root of a new trace when `parent` is empty, recording that new trace's id.
pub fn continue_trace(span: &Span, parent: Context) {
    let new_trace = !parent.span().span_context().is_valid();
    // Fails only without the tracer installed (a test process): then nothing is traced.
    let _ = span.set_parent(parent);
    if new_trace {
        let span_context = span.context().span().span_context().clone();
        if span_context.is_valid() {
            span.record("trace_id", tracing::field::display(span_context.trace_id()));
        }
    }
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into `headers`.
pub fn inject_http(headers: &mut HeaderMap) {
    TraceContextPropagator::new()
        .inject_context(&Span::current().context(), &mut HttpHeadersMut(headers));
}

/// The current span's trace context as `(name, value)` pairs, for carriers other than HTTP.
pub fn current_trace_context() -> Vec<(String, String)> {
    let mut fields = FieldsMut(Vec::new());
    TraceContextPropagator::new().inject_context(&Span::current().context(), &mut fields);
    fields.0
}

/// A parent context from `(name, value)` pairs read off a carrier.
pub fn trace_context_from<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Context {
    let fields: Vec<(String, String)> = fields
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    TraceContextPropagator::new().extract(&Fields(&fields))
}

struct HttpHeaders<'a>(&'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HttpHeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HttpHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct FieldsMut(Vec<(String, String)>);

impl Injector for FieldsMut {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

struct Fields<'a>(&'a [(String, String)]);

impl Extractor for Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_trace_context_is_read_from_http_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let parent = TraceContextPropagator::new().extract(&HttpHeaders(&headers));
        let span_context = parent.span().span_context().clone();
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(span_context.is_remote() && span_context.is_sampled());
        // And written back out unchanged (a non-recording parent keeps its ids).
        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&parent, &mut HttpHeadersMut(&mut out));
        assert_eq!(out["traceparent"], headers["traceparent"]);
    }
}
