//! Logging and tracing setup (human or JSON logs, OpenTelemetry export) and W3C trace context.
//!
//! Operation spans (`publish`, `fan_out.batch`, ...) are at DEBUG level: with the default log
//! filter and no OTLP endpoint no layer wants them, so their call sites cost one cached check.
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the OpenTelemetry layer has its own filter
//! (`PGPUSH_TRACE_FILTER`), independent of `RUST_LOG`.

use tracing::Span;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, layer::SubscriberExt, util::SubscriberInitExt,
};

/// Log filter when `RUST_LOG` is unset.
const DEFAULT_LOG_FILTER: &str = "info,tokio_postgres=warn";
/// Span filter of the OpenTelemetry layer when `PGPUSH_TRACE_FILTER` is unset.
#[cfg(feature = "otel")]
const DEFAULT_TRACE_FILTER: &str = "info,pgpush_edge=debug,pgpush_pg=debug,tokio_postgres=warn";
/// Most producer links one fan-out span carries (a batch may hold thousands of events).
const MAX_LINKS: usize = 128;

/// What [`init`] set up; [`Telemetry::shutdown`] flushes spans not exported yet.
#[derive(Debug, Default)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otel")]
        return self.provider.is_some();
        #[cfg(not(feature = "otel"))]
        false
    }

    /// Exports what is buffered and stops the exporter. Call from outside the runtime's worker
    /// threads while the runtime still runs (the export task lives on it).
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("pgpush: flushing traces failed: {error}");
        }
    }
}

/// Installs the global subscriber: logs to stderr (human, or JSON lines with
/// `PGPUSH_LOG_FORMAT=json`) filtered by `RUST_LOG`, and OpenTelemetry export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Must run inside a
/// Tokio runtime context (the exporter's batch task is spawned on it).
pub fn init() -> Telemetry {
    let log_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let json = std::env::var("PGPUSH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed()
    };
    let mut layers = vec![logs];
    let telemetry = exporter(&mut layers);
    let _ = tracing_subscriber::registry().with(layers).try_init();
    telemetry
}

#[cfg(feature = "otel")]
fn exporter(layers: &mut Vec<Box<dyn Layer<Registry> + Send + Sync>>) -> Telemetry {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_sdk::{
        Resource, runtime::Tokio, trace::span_processor_with_async_runtime::BatchSpanProcessor,
    };

    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    if !configured {
        return Telemetry::default();
    }
    // HTTP/protobuf to `<endpoint>/v1/traces`; headers, timeout and compression from the
    // standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("pgpush: OpenTelemetry export disabled: {error}");
            return Telemetry::default();
        }
    };
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("pgpush");
    }
    // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default: parent-based
    // always-on); batching from OTEL_BSP_*.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .with_resource(resource.build())
        .build();
    let filter = EnvFilter::try_from_env("PGPUSH_TRACE_FILTER")
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_TRACE_FILTER));
    layers.push(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("pgpush"))
            .with_filter(filter)
            .boxed(),
    );
    Telemetry {
        provider: Some(provider),
    }
}

#[cfg(not(feature = "otel"))]
fn exporter(_layers: &mut Vec<Box<dyn Layer<Registry> + Send + Sync>>) -> Telemetry {
    Telemetry::default()
}

/// True for a W3C `traceparent` this node can carry: version 00 (or a later version's first 55
/// characters followed by `-`), lowercase hex, non-zero trace and span ids.
pub(crate) fn valid_traceparent(value: &str) -> bool {
    parse_traceparent(value).is_some()
}

/// (trace id, span id, flags) of a valid `traceparent`.
fn parse_traceparent(value: &str) -> Option<(&str, &str, u8)> {
    let bytes = value.as_bytes();
    let version = value.get(0..2)?;
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let well_formed = bytes.len() >= 55
        && (bytes.len() == 55 || (version != "00" && bytes[55] == b'-'))
        && bytes[2] == b'-'
        && bytes[35] == b'-'
        && bytes[52] == b'-'
        && lower_hex(version)
        && version != "ff";
    if !well_formed {
        return None;
    }
    let (trace_id, span_id, flags) = (value.get(3..35)?, value.get(36..52)?, value.get(53..55)?);
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (lower_hex(trace_id)
        && lower_hex(span_id)
        && lower_hex(flags)
        && nonzero(trace_id)
        && nonzero(span_id))
    .then(|| Some((trace_id, span_id, u8::from_str_radix(flags, 16).ok()?)))
    .flatten()
}

/// Makes `span` a child of the remote `traceparent` (ignored when invalid or not exporting).
pub(crate) fn set_remote_parent(span: &Span, traceparent: Option<&str>) {
    #[cfg(feature = "otel")]
    if let Some(context) = traceparent.and_then(span_context) {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent = opentelemetry::Context::new().with_remote_span_context(context);
        let _ = span.set_parent(parent);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

/// The `traceparent` of `span` when it is exported, to store with a durable event.
pub(crate) fn traceparent(span: &Span) -> Option<String> {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let context = span.context();
        let context = context.span().span_context().clone();
        context.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                context.trace_id(),
                context.span_id(),
                context.trace_flags().to_u8()
            )
        })
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        None
    }
}

/// Links `span` to each distinct producer context among `traceparents` (at most [`MAX_LINKS`]).
pub(crate) fn link_producers<'a>(span: &Span, traceparents: impl Iterator<Item = &'a str>) {
    #[cfg(feature = "otel")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if span.is_disabled() {
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for context in traceparents.filter_map(span_context) {
            if seen.len() == MAX_LINKS {
                break;
            }
            if seen.insert((context.trace_id(), context.span_id())) {
                span.add_link(context);
            }
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparents.count(), MAX_LINKS);
}

#[cfg(feature = "otel")]
fn span_context(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let (trace_id, span_id, flags) = parse_traceparent(traceparent)?;
    Some(SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_w3c_examples() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        // A later version may append fields.
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?}");
        }
    }
}
