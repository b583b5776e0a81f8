//! Logs and traces: the `tracing` subscriber of every `kiln` command.
//!
//! Logs go to stderr, as text on a terminal and JSON lines otherwise (or as
//! `log.format` says), filtered by `RUST_LOG` or else `log.filter`.
//!
//! Traces are exported over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set to a non-empty value (and neither `OTEL_SDK_DISABLED=true` nor
//! `OTEL_TRACES_EXPORTER=none` says otherwise). The SDK reads the other
//! standard variables itself: `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (the service name defaults to `kiln` here),
//! `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT`,
//! `OTEL_BSP_*`. The OpenTelemetry layer has its own filter (the broker's
//! spans and warnings), independent of the log filter. With export off
//! there is no OpenTelemetry layer at all, and the broker's propagation
//! hook is [`NoTraceHeaders`].

use std::io::IsTerminal;
use std::sync::Arc;

use kiln_broker::{NoTraceHeaders, TraceHeaders};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogConfig, LogFormat};

/// The service name when neither `OTEL_SERVICE_NAME` nor a `service.name`
/// in `OTEL_RESOURCE_ATTRIBUTES` gives one.
pub const DEFAULT_SERVICE_NAME: &str = "kiln";

/// The installed subscriber's trace export, to flush at exit.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// The propagation hook for the broker: W3C trace context in AMQP
    /// headers when exporting, nothing otherwise.
    pub fn trace_headers(&self) -> Arc<dyn TraceHeaders> {
        if self.exporting() {
            Arc::new(W3cHeaders::default())
        } else {
            Arc::new(NoTraceHeaders)
        }
    }

    /// Exports every span still buffered and stops the exporter. Call it
    /// once, outside the async runtime (the exporter's HTTP client blocks).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("kiln: cannot flush traces: {error}");
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Whether the environment asks for trace export.
pub fn export_requested() -> bool {
    (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !env_is("OTEL_SDK_DISABLED", "true")
        && !env_is("OTEL_TRACES_EXPORTER", "none")
}

/// Whether the environment names the service (else it is [`DEFAULT_SERVICE_NAME`]).
fn service_named_by_env() -> bool {
    env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| {
            attrs.split(',').any(|kv| {
                kv.split_once('=')
                    .is_some_and(|(k, _)| k.trim() == "service.name")
            })
        })
}

fn tracer_provider() -> Result<SdkTracerProvider, String> {
    // reqwest is built without a default crypto provider: use ring, as lapin does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if !service_named_by_env() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    // The builder's default config reads OTEL_TRACES_SAMPLER and the span
    // limits; the batch processor reads OTEL_BSP_*.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Library targets whose events are dropped from logs and traces alike.
/// lapin warns "Server returned us a message" with the whole returned
/// message, body bytes included (1.7 KB of a job's output, and a second
/// `message` key that breaks JSON log pipelines); Kiln logs each returned
/// reply itself, with the job id, the routing key and the size only.
pub const SILENCED_TARGETS: &[&str] = &["lapin::returned_messages"];

/// Installs the global subscriber: logs, and the OpenTelemetry layer when
/// [`export_requested`].
pub fn init(log: &LogConfig) -> Telemetry {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    // `validate` checked `log.filter`; a bad `RUST_LOG` falls back to it.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let json = match log.format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    // Whatever `RUST_LOG` says, events that carry message bodies never
    // reach a log line.
    let filter = filter.and(tracing_subscriber::filter::filter_fn(|meta| {
        !SILENCED_TARGETS.contains(&meta.target())
    }));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };

    let mut export_error = None;
    let provider = if export_requested() {
        tracer_provider().map_err(|e| export_error = Some(e)).ok()
    } else {
        None
    };
    let traces = provider.as_ref().map(|p| {
        // The job and publish spans (kiln_broker), `kiln enqueue`'s root
        // span, and warnings and errors as span events.
        let targets = SILENCED_TARGETS
            .iter()
            .fold(Targets::new(), |t, target| {
                t.with_target(*target, LevelFilter::OFF)
            })
            .with_default(LevelFilter::WARN)
            .with_target("kiln_broker", LevelFilter::INFO)
            // Plugins' outgoing HTTP requests (kiln_sandbox::http).
            .with_target("kiln::http", LevelFilter::INFO)
            .with_target("kiln::cli", LevelFilter::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("kiln"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(targets)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if let Some(error) = export_error {
        tracing::error!(%error, "cannot start the OTLP trace exporter; traces are off");
    }
    Telemetry { provider }
}

/// The W3C trace context of `span` as HTTP headers (`traceparent`, and
/// `tracestate` when set): what a plugin's outgoing request carries.
pub fn w3c_http_headers(span: &tracing::Span) -> Vec<(String, String)> {
    struct Collect(Vec<(String, String)>);
    impl Injector for Collect {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }
    let mut out = Collect(Vec::new());
    TraceContextPropagator::new().inject_context(&span.context(), &mut out);
    out.0
}

/// W3C `traceparent`/`tracestate` in AMQP headers.
#[derive(Debug, Default)]
pub struct W3cHeaders {
    propagator: TraceContextPropagator,
}

struct Read<'a>(Option<&'a FieldTable>);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|t| t.inner().keys().map(ShortString::as_str).collect())
            .unwrap_or_default()
    }
}

struct Write<'a>(&'a mut FieldTable);

impl Injector for Write<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value.into_bytes())),
        );
    }
}

impl TraceHeaders for W3cHeaders {
    fn enabled(&self) -> bool {
        true
    }

    fn extract(&self, headers: Option<&FieldTable>, span: &tracing::Span) {
        let cx = self.propagator.extract(&Read(headers));
        if cx.span().span_context().is_valid() {
            // Fails only if the span already started, which it has not.
            let _ = span.set_parent(cx);
        }
    }

    fn inject(&self, span: &tracing::Span, headers: &mut FieldTable) {
        self.propagator
            .inject_context(&span.context(), &mut Write(headers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_a_remote_context() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(LongString::from(parent.as_bytes().to_vec())),
        );
        headers.insert(
            "tracestate".into(),
            AMQPValue::LongString(LongString::from(b"vendor=x".to_vec())),
        );
        let propagator = TraceContextPropagator::new();
        let cx = propagator.extract(&Read(Some(&headers)));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = FieldTable::default();
        propagator.inject_context(&cx, &mut Write(&mut out));
        assert_eq!(Read(Some(&out)).get("traceparent"), Some(parent));
        assert_eq!(Read(Some(&out)).get("tracestate"), Some("vendor=x"));
        // Garbage and absent headers give no parent.
        let mut bad = FieldTable::default();
        bad.insert("traceparent".into(), AMQPValue::LongLongInt(7));
        for h in [None, Some(&bad)] {
            let cx = propagator.extract(&Read(h));
            assert!(!cx.span().span_context().is_valid());
        }
    }
}
