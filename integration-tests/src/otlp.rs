//! An OTLP/HTTP trace receiver for the tests that check the spans a real
//! `kiln worker` exports (no collector can be installed here): an axum
//! server on 127.0.0.1 that decodes `ExportTraceServiceRequest`s (protobuf,
//! `POST /v1/traces`) with `opentelemetry-proto` and keeps every span,
//! flattened.
//!
//! Test helpers: a failure here is the test's failure, so they panic with
//! a message instead of returning errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its resource's `service.name`.
    pub service: String,
    /// Its resource's attributes.
    pub resource: HashMap<String, String>,
    /// The span name.
    pub name: String,
    /// Its `SpanKind`, as the protobuf number.
    pub kind: i32,
    /// The trace id, lowercase hex.
    pub trace_id: String,
    /// The span id, lowercase hex.
    pub span_id: String,
    /// The parent's span id, lowercase hex (empty for a root).
    pub parent_span_id: String,
    /// Its attributes, each value rendered as a string.
    pub attributes: HashMap<String, String>,
}

fn flatten(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver (protobuf, `POST /v1/traces`) on 127.0.0.1.
pub struct Receiver {
    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` is set to.
    pub endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    /// Starts it on a free port of 127.0.0.1, on the test's runtime.
    pub async fn start() -> Self {
        use axum::body::Bytes;
        use axum::http::StatusCode;
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let sink = sink.clone();
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (StatusCode::BAD_REQUEST, Vec::new());
                    };
                    let mut got = sink.lock().unwrap_or_else(PoisonError::into_inner);
                    for rs in request.resource_spans {
                        let resource =
                            flatten(&rs.resource.map(|r| r.attributes).unwrap_or_default());
                        let service = resource.get("service.name").cloned().unwrap_or_default();
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                got.push(Span {
                                    service: service.clone(),
                                    resource: resource.clone(),
                                    name: s.name.clone(),
                                    kind: s.kind,
                                    trace_id: hex(&s.trace_id),
                                    span_id: hex(&s.span_id),
                                    parent_span_id: hex(&s.parent_span_id),
                                    attributes: flatten(&s.attributes),
                                });
                            }
                        }
                    }
                    // An empty ExportTraceServiceResponse.
                    (StatusCode::OK, Vec::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, spans }
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits (at most 30 s) until `pred` holds for the spans received, and
    /// returns them.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never received {what}; got {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
