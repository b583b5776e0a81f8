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
//!
//! With export on, a JSON log line written inside an exported span carries
//! that span's `trace_id` and `span_id` ([`WithTraceIds`]), and a failing
//! export is logged, at most once a minute ([`Reporting`]).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_broker::{NoTraceHeaders, TraceHeaders};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
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

/// Where the exporter sends spans, as `opentelemetry-otlp` resolves it:
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces`; a password redacted.
/// `env` reads a variable.
fn traces_endpoint(env: impl Fn(&str) -> Option<String>) -> String {
    let var = |name| env(name).filter(|v: &String| !v.is_empty());
    let url = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").unwrap_or_else(|| {
        let base = var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
        let path = if base.ends_with('/') {
            "v1/traces"
        } else {
            "/v1/traces"
        };
        format!("{base}{path}")
    });
    kiln_broker::redact(&url)
}

fn tracer_provider() -> Result<SdkTracerProvider, String> {
    // reqwest is built without a default crypto provider: use ring, as lapin does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = traces_endpoint(|name| std::env::var(name).ok());
    let exporter = Reporting::new(exporter, endpoint, EXPORT_FAILURE_LOG_INTERVAL);
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

/// A filter that drops [`SILENCED_TARGETS`] and lets everything else through
/// up to `default`.
fn silenced(default: LevelFilter) -> Targets {
    SILENCED_TARGETS
        .iter()
        .fold(Targets::new(), |t, target| {
            t.with_target(*target, LevelFilter::OFF)
        })
        .with_default(default)
}

/// Installs the global subscriber: logs, and the OpenTelemetry layer when
/// [`export_requested`].
pub fn init(log: &LogConfig) -> Telemetry {
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
    // reach a log line. `silenced` is a `Targets` rather than a closure: it
    // gives a level hint, so the combined filter's maximum level stays the
    // `EnvFilter`'s, and disabled call sites (lapin's debug and trace
    // records, through `tracing-log`) are rejected once, not per event.
    let filter = filter.and(silenced(LevelFilter::TRACE));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        fmt.json()
            .map_event_format(WithTraceIds)
            .with_filter(filter)
            .boxed()
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
        let targets = silenced(LevelFilter::WARN)
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

/// JSON log lines with the `trace_id` and `span_id` (lowercase hex, as in
/// `traceparent`) of the OpenTelemetry span current when they are written,
/// as top-level keys after the others, when there is one: with export on,
/// the innermost exported span the line was logged in (a job's `job` span).
/// The OpenTelemetry layer makes a span's context current while the span is
/// entered, so this reads a thread-local and costs nothing without export.
#[derive(Debug)]
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // One JSON object and a newline: the ids go before its closing brace.
        match line.rfind('}') {
            Some(end) => write!(
                writer,
                "{},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{}",
                &line[..end],
                &line[end..]
            ),
            None => writer.write_str(&line),
        }
    }
}

/// How often a failing trace export is logged, at most.
const EXPORT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The span exporter, logging its failures (the SDK, built without its
/// internal logs, would drop them silently): the first at `warn` at once,
/// then at most one line per `every`, each with the number of failures
/// not logged since the previous line (`suppressed`); `info` when an export
/// succeeds again; and at exit, the failures not logged yet.
#[derive(Debug)]
pub struct Reporting<E> {
    inner: E,
    endpoint: String,
    failures: Throttle,
}

impl<E> Reporting<E> {
    /// `inner`, which sends to `endpoint` (named in the log lines), with
    /// failures logged at most once per `every`.
    pub fn new(inner: E, endpoint: String, every: Duration) -> Self {
        Self {
            inner,
            endpoint,
            failures: Throttle::new(every),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                if let Some(suppressed) = self.failures.succeeded() {
                    tracing::info!(endpoint = %self.endpoint, suppressed, "OTLP trace export recovered");
                }
            }
            Err(error) => {
                if let Some(suppressed) = self.failures.failed(Instant::now()) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %error,
                        spans,
                        suppressed,
                        "OTLP trace export failed, spans dropped (logged at most once a minute)"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if let Some(suppressed) = self.failures.unreported() {
            tracing::warn!(
                endpoint = %self.endpoint,
                suppressed,
                "OTLP trace export failures not logged before exit"
            );
        }
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Decides which failures of a repeated operation are logged: the first,
/// then at most one per `every`.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    /// When the last failure was logged.
    logged_at: Option<Instant>,
    /// Failures since then, not logged.
    unreported: u64,
    /// Whether the last attempt failed.
    failing: bool,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A failure at `now`: `Some(failures not logged since the last line)`
    /// when this one is to be logged, `None` when it is only counted.
    fn failed(&self, now: Instant) -> Option<u64> {
        let mut state = self.state();
        state.failing = true;
        match state.logged_at {
            Some(at) if now.saturating_duration_since(at) < self.every => {
                state.unreported += 1;
                None
            }
            _ => {
                state.logged_at = Some(now);
                Some(std::mem::take(&mut state.unreported))
            }
        }
    }

    /// A success: `Some(failures not logged)` when it ends a run of
    /// failures.
    fn succeeded(&self) -> Option<u64> {
        let mut state = self.state();
        std::mem::take(&mut state.failing).then(|| std::mem::take(&mut state.unreported))
    }

    /// The failures not logged yet, if any (and they are now).
    fn unreported(&self) -> Option<u64> {
        let n = std::mem::take(&mut self.state().unreported);
        (n > 0).then_some(n)
    }
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
    use std::collections::HashMap;

    /// The silencing filter keeps the log filter's level hint (a closure
    /// would erase it, leaving every debug and trace call site of every
    /// library live, at a cost per event), and still drops the silenced
    /// targets at any level.
    #[test]
    fn silencing_keeps_the_level_hint_and_drops_the_silenced_targets() {
        use tracing_subscriber::layer::Filter;
        type S = tracing_subscriber::Registry;
        let filter = EnvFilter::new("info").and(silenced(LevelFilter::TRACE));
        assert_eq!(
            Filter::<S>::max_level_hint(&filter),
            Some(LevelFilter::INFO)
        );
        let targets = silenced(LevelFilter::TRACE);
        assert!(!targets.would_enable(SILENCED_TARGETS[0], &tracing::Level::ERROR));
        assert!(targets.would_enable("lapin::channel", &tracing::Level::TRACE));
    }

    /// A log line in an exported span carries its trace and span ids; one
    /// outside any span carries neither.
    #[test]
    fn json_lines_in_an_exported_span_carry_its_ids() {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let out = buffer.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .map_event_format(WithTraceIds)
                    .with_writer(move || out.clone()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("outside");
            let span = tracing::info_span!("job");
            let _entered = span.enter();
            tracing::warn!(job_id = "j1", "inside");
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let text = String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["fields"]["message"], "outside");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["fields"]["job_id"], "j1", "{text}");
        assert_eq!(lines[1]["trace_id"], trace_id.as_str(), "{text}");
        assert_eq!(lines[1]["span_id"], span_id.as_str(), "{text}");
        assert_eq!(trace_id.len(), 32);
    }

    /// The first failure is logged, then at most one per interval with the
    /// count of those not logged; a success ends the run of failures.
    #[test]
    fn export_failures_are_logged_once_per_interval() {
        let every = Duration::from_secs(60);
        let throttle = Throttle::new(every);
        let t0 = Instant::now();
        assert_eq!(throttle.failed(t0), Some(0));
        for s in 1..=10 {
            assert_eq!(throttle.failed(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(throttle.failed(t0 + every), Some(10));
        assert_eq!(throttle.failed(t0 + every + Duration::from_secs(1)), None);
        // Recovered: the one not logged is told with the recovery.
        assert_eq!(throttle.succeeded(), Some(1));
        assert_eq!(throttle.succeeded(), None);
        // A new failure within the interval is only counted, and told at exit.
        assert_eq!(throttle.failed(t0 + every + Duration::from_secs(2)), None);
        assert_eq!(throttle.unreported(), Some(1));
        assert_eq!(throttle.unreported(), None);
        assert_eq!(throttle.failed(t0 + every * 2), Some(0));
    }

    #[test]
    fn the_endpoint_named_in_logs_is_the_one_the_exporter_uses() {
        let endpoint = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            traces_endpoint(|name| vars.get(name).cloned())
        };
        let base = "OTEL_EXPORTER_OTLP_ENDPOINT";
        let traces = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
        assert_eq!(
            endpoint(&[(base, "http://u:secret@collector:4318/")]),
            "http://u:***@collector:4318/v1/traces"
        );
        assert_eq!(
            endpoint(&[(base, "http://collector:4318"), (traces, "")]),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            endpoint(&[
                (base, "http://collector:4318"),
                (traces, "http://other:1/x")
            ]),
            "http://other:1/x"
        );
    }

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
