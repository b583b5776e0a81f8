//! Outbound HTTP grants (docs/SANDBOX.md, "Outbound HTTP"): the
//! `http-probe` fixture asks for URLs of loopback servers these tests start,
//! under manifests and caps each test writes, and the tests check what the
//! guest got, what the host recorded and audited, and that the job's
//! deadline and budgets hold. One test runs the `enrich` example in a real
//! `kiln worker` on the local RabbitMQ (a `TestQueue` of its own), with the
//! library's OTLP receiver, to check the client span's place in the trace.
//! Raw `wasi:sockets` stay denied under a grant for the same host and port.
//! `enrich-js` shows that a JavaScript `fetch()` gets the same grants (it is
//! built by `cargo xtask plugins --lang js`; without it that test skips).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kiln_integration_tests::broker::{Broker, TestQueue, URL, WorkerProc, job};
use kiln_integration_tests::otlp::Receiver;
use kiln_integration_tests::{artifact, audited, config, ctx, lang_plugins_dir, serial};
use kiln_sandbox::{Capability, JobFailure, Limits, Plugin, PluginErrorKind, Sandbox, SingleRun};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;

/// The `traceparent` header (or `None`) of each request `/people/{id}` got.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// Starts the loopback server every test talks to, and returns its address.
async fn server() -> SocketAddr {
    server_seeing().await.0
}

/// [`server`], and what it saw of the requests to `/people/{id}`.
async fn server_seeing() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/traceparent",
            get(|headers: HeaderMap| async move {
                headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned()
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "too late"
            }),
        )
        .route("/huge", get(|| async { "x".repeat(1 << 20) }))
        .route(
            "/redirect",
            get(move || async move {
                // To a host no grant names (127.0.0.2 is loopback too).
                let to = format!("http://127.0.0.2:{}/hello", addr.port());
                (StatusCode::FOUND, [(header::LOCATION, to)])
            }),
        )
        .route(
            "/people/{id}",
            get(
                move |UrlPath(id): UrlPath<String>, headers: HeaderMap| async move {
                    let traceparent = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    log.lock().unwrap().push(traceparent);
                    if id == "7" {
                        (StatusCode::OK, r#"{"name":"Ada","country":"UK"}"#).into_response()
                    } else {
                        StatusCode::NOT_FOUND.into_response()
                    }
                },
            ),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A sandbox whose caps allow `caps`, and `allow_private_outbound`.
fn sandbox_with(caps: &[String], allow_private: bool, limits: Limits) -> Sandbox {
    let mut config = config(limits);
    config.caps.outbound = caps.iter().map(|c| c.parse().unwrap()).collect();
    config.caps.allow_private_outbound = allow_private;
    config.caps.request_timeout_ms = Some(60_000);
    Sandbox::new(config).unwrap()
}

/// Copies `crate_name` into `dir` beside a manifest with `manifest` after its
/// identity, and returns the `.wasm`'s path.
fn with_manifest(
    dir: &Path,
    crate_name: &str,
    version: &str,
    manifest: &str,
) -> std::path::PathBuf {
    let from = artifact(crate_name);
    let wasm = dir.join(from.file_name().unwrap());
    std::fs::copy(&from, &wasm).unwrap();
    std::fs::write(
        wasm.with_extension("toml"),
        format!("name = \"{crate_name}\"\nversion = \"{version}\"\n{manifest}"),
    )
    .unwrap();
    wasm
}

/// `http-probe` loaded under `manifest` in `sandbox`.
async fn probe(sandbox: &Sandbox, manifest: &str) -> (Plugin, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = with_manifest(dir.path(), "http-probe", "1.0.0", manifest);
    let plugin = sandbox.load_file(&wasm).await.unwrap();
    (plugin, dir)
}

/// Runs the probe on `urls`, and returns the run, one JSON report per
/// request, and the `kiln::audit` lines logged meanwhile.
async fn probe_run(
    plugin: &Plugin,
    urls: &[String],
    config: &[(&str, &str)],
) -> (SingleRun, Vec<Value>, Vec<Value>) {
    let (run, audit) = audited(plugin.process(&ctx("http-1", config), &urls.join("\n"))).await;
    let reports = match &run.result {
        Ok(out) => out
            .output
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    (run, reports, audit)
}

fn grant(addr: SocketAddr) -> String {
    format!("http://127.0.0.1:{}", addr.port())
}

/// The common set-up: the loopback server, a sandbox whose caps allow any
/// loopback port, and `http-probe` granted that server, with `extra` after
/// the grant in its manifest. The last item keeps the sandbox and the
/// plugin's directory alive; hold it for the test.
async fn granted_probe(extra: &str) -> (SocketAddr, Plugin, (Sandbox, tempfile::TempDir)) {
    let addr = server().await;
    let sandbox = sandbox_with(&["http://127.0.0.1:*".into()], false, Limits::default());
    let (plugin, dir) = probe(
        &sandbox,
        &format!("[grants]\noutbound = [\"{}\"]\n{extra}", grant(addr)),
    )
    .await;
    (addr, plugin, (sandbox, dir))
}

#[tokio::test(flavor = "current_thread")]
async fn a_granted_request_returns_the_body() {
    let (addr, plugin, _held) = granted_probe("").await;
    assert_eq!(
        plugin
            .grants()
            .outbound
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [grant(addr)]
    );
    let (run, reports, audit) = probe_run(&plugin, &[format!("{}/hello", grant(addr))], &[]).await;
    assert_eq!(reports.len(), 1, "{run:?}");
    assert_eq!(reports[0]["status"], 200, "{reports:?}");
    assert_eq!(reports[0]["body"], "hello", "{reports:?}");
    assert!(run.denials.is_empty(), "{:?}", run.denials);
    assert!(audit.is_empty(), "{audit:?}");
    assert_eq!(run.http.len(), 1);
    assert_eq!(&*run.http[0].grant, grant(addr));
    assert_eq!(run.http[0].status, Some(200));
    assert_eq!(run.http[0].status_class(), "2xx");
}

#[tokio::test(flavor = "current_thread")]
async fn an_ungranted_port_and_host_are_denied_typed_audited_and_counted() {
    let (addr, plugin, _held) = granted_probe("").await;
    let other_port = format!("http://127.0.0.1:{}/hello", addr.port() + 1);
    let other_host = format!("http://127.0.0.2:{}/hello", addr.port());
    let (run, reports, audit) =
        probe_run(&plugin, &[other_port.clone(), other_host.clone()], &[]).await;
    assert_eq!(reports.len(), 2, "{run:?}");
    for r in &reports {
        assert_eq!(r["error"], "denied", "{reports:?}");
    }
    assert_eq!(run.denials.count(Capability::Http), 2);
    assert!(run.http.is_empty(), "{:?}", run.http);
    let details: Vec<_> = audit
        .iter()
        .map(|l| l["fields"]["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        details,
        [
            format!("http://127.0.0.1:{}: no outbound grant", addr.port() + 1),
            format!("http://127.0.0.2:{}: no outbound grant", addr.port()),
        ]
    );
    for line in &audit {
        let f = &line["fields"];
        assert_eq!(f["capability"], "http", "{f}");
        assert_eq!(f["plugin"], "http-probe", "{f}");
        assert_eq!(f["plugin_version"], "1.0.0", "{f}");
        assert_eq!(f["job_id"], "http-1", "{f}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_counts_denials_and_requests_per_plugin() {
    use kiln::metrics::{Exposition, JobMetrics};
    let addr = server().await;
    let sandbox = sandbox_with(&["http://127.0.0.1:*".into()], false, Limits::default());
    let dir = tempfile::tempdir().unwrap();
    with_manifest(
        dir.path(),
        "http-probe",
        "1.0.0",
        &format!("[grants]\noutbound = [\"{}\"]\n", grant(addr)),
    );
    let registry = std::sync::Arc::new(sandbox.load_dir(dir.path()).await.unwrap());
    let metrics = JobMetrics::new(&registry);
    let pipeline =
        kiln::pipeline::Pipeline::from_config(&kiln::config::KilnConfig::default(), registry)
            .with_metrics(metrics.clone());
    let exposition = Exposition::new(&metrics, pipeline.shared_registry().clone());
    let input = format!(
        "{g}/hello\\n{g}/redirect\\nhttp://127.0.0.2:{p}/hello",
        g = grant(addr),
        p = addr.port()
    );
    let body = format!(r#"{{"job_id":"m","plugin":"http-probe","input":"{input}"}}"#);
    let handled = pipeline
        .handle(body.as_bytes(), &kiln_protocol::Envelope::default(), 1)
        .await;
    assert_eq!(handled.error, None);
    let reply: Value = serde_json::from_slice(&handled.encoded).unwrap();
    assert_eq!(reply["http_requests"], 2, "{reply}");

    let text = exposition.render();
    let series = |prefix: &str| {
        let mut s: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        s.sort_unstable();
        s
    };
    assert!(
        series("kiln_capability_denials_total").contains(
            &"kiln_capability_denials_total{plugin=\"http-probe\",capability=\"http\"} 1"
                .to_owned()
        ),
        "{text}"
    );
    let g = grant(addr);
    assert_eq!(
        series("kiln_plugin_http_requests_total"),
        [
            format!(
                "kiln_plugin_http_requests_total{{plugin=\"http-probe\",grant=\"{g}\",status_class=\"2xx\"}} 1"
            ),
            format!(
                "kiln_plugin_http_requests_total{{plugin=\"http-probe\",grant=\"{g}\",status_class=\"3xx\"}} 1"
            ),
        ],
        "{text}"
    );
    assert!(
        text.contains("kiln_plugin_http_request_duration_seconds_count"),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_name_that_resolves_to_loopback_is_denied_unless_the_operator_allows_it() {
    let addr = server().await;
    let by_name = format!("http://localhost:{}", addr.port());
    let manifest = format!("[grants]\noutbound = [\"{by_name}\"]\n");
    let sandbox = sandbox_with(&["http://localhost:*".into()], false, Limits::default());
    let (plugin, _dir) = probe(&sandbox, &manifest).await;
    let (run, reports, audit) = probe_run(&plugin, &[format!("{by_name}/hello")], &[]).await;
    assert_eq!(reports[0]["error"], "denied", "{reports:?}");
    assert_eq!(run.denials.count(Capability::Http), 1);
    let detail = audit[0]["fields"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("resolves to the private address"),
        "{detail}"
    );

    // `allow_private_outbound` lets the same grant through.
    let sandbox = sandbox_with(&["http://localhost:*".into()], true, Limits::default());
    let (plugin, _dir) = probe(&sandbox, &manifest).await;
    let (run, reports, _) = probe_run(&plugin, &[format!("{by_name}/hello")], &[]).await;
    assert_eq!(reports[0]["status"], 200, "{reports:?}");
    assert!(run.denials.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_manifest_over_the_cap_is_refused_at_load_and_the_others_load() {
    let addr = server().await;
    let sandbox = sandbox_with(&["http://127.0.0.1:1".into()], false, Limits::default());
    let dir = tempfile::tempdir().unwrap();
    with_manifest(
        dir.path(),
        "http-probe",
        "1.0.0",
        &format!("[grants]\noutbound = [\"{}\"]\n", grant(addr)),
    );
    std::fs::copy(artifact("uppercase"), dir.path().join("uppercase.wasm")).unwrap();
    let registry = sandbox.load_dir(dir.path()).await.unwrap();
    assert_eq!(
        registry.plugins().map(|p| p.name()).collect::<Vec<_>>(),
        ["uppercase"]
    );
    let errors: Vec<_> = registry.errors().iter().map(|e| e.report()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    for needle in ["http-probe", &grant(addr), "sandbox.caps.outbound"] {
        assert!(errors[0].contains(needle), "{needle}: {}", errors[0]);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_to_a_server_that_never_answers_ends_at_the_job_deadline() {
    let _serial = serial().await;
    let addr = server().await;
    let deadline = Duration::from_millis(300);
    let limits = Limits {
        timeout_ms: 300,
        ..Limits::default()
    };
    let sandbox = sandbox_with(&["http://127.0.0.1:*".into()], false, limits);
    let (plugin, _dir) = probe(
        &sandbox,
        &format!(
            "[grants]\noutbound = [\"{}\"]\n[limits]\nrequest_timeout_ms = 60000\n",
            grant(addr)
        ),
    )
    .await;
    let started = Instant::now();
    let (run, _, _) = probe_run(&plugin, &[format!("{}/slow", grant(addr))], &[]).await;
    let took = started.elapsed();
    assert!(
        matches!(run.result, Err(JobFailure::Timeout { deadline_ms: 300 })),
        "{:?}",
        run.result
    );
    // The request would wait an hour (its own limit is a minute): the job
    // stops at its deadline, give or take scheduling on a loaded machine.
    assert!(took >= deadline, "{took:?}");
    assert!(took < deadline + Duration::from_millis(500), "{took:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_huge_body_is_cut_at_max_response_bytes() {
    let (addr, plugin, _held) = granted_probe("[limits]\nmax_response_bytes = 1000\n").await;
    let (_, reports, _) = probe_run(&plugin, &[format!("{}/huge", grant(addr))], &[]).await;
    assert_eq!(reports[0]["error"], "body", "{reports:?}");
    assert_eq!(reports[0]["read"], 1000, "{reports:?}");
    // The guest sees the host's error text (wasmtime-wasi-http 48 does not
    // map a body error to an error code for `http-error-code`).
    let message = reports[0]["message"].as_str().unwrap();
    assert!(
        message.contains("HttpResponseBodySize") || message.contains("body size exceeds limit"),
        "{message}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_redirect_to_an_ungranted_host_is_denied_on_the_second_hop() {
    let (addr, plugin, _held) = granted_probe("").await;
    let (run, reports, audit) = probe_run(
        &plugin,
        &[format!("{}/redirect", grant(addr))],
        &[("follow", "1")],
    )
    .await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    // The host handed the 302 to the guest as it was.
    assert_eq!(reports[0]["status"], 302, "{reports:?}");
    assert_eq!(
        reports[1]["url"],
        format!("http://127.0.0.2:{}/hello", addr.port())
    );
    assert_eq!(reports[1]["error"], "denied", "{reports:?}");
    assert_eq!(run.denials.count(Capability::Http), 1);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(run.http.len(), 1);
    assert_eq!(run.http[0].status_class(), "3xx");
}

#[tokio::test(flavor = "current_thread")]
async fn max_requests_is_enforced() {
    let (addr, plugin, _held) = granted_probe("[limits]\nmax_requests = 2\n").await;
    let url = format!("{}/hello", grant(addr));
    let (run, reports, audit) = probe_run(&plugin, &[url.clone(), url.clone(), url], &[]).await;
    let got: Vec<_> = reports
        .iter()
        .map(|r| {
            r.get("status")
                .cloned()
                .unwrap_or_else(|| r["error"].clone())
        })
        .collect();
    assert_eq!(
        got,
        [Value::from(200), Value::from(200), Value::from("denied")]
    );
    assert_eq!(run.http.len(), 2);
    let detail = audit[0]["fields"]["detail"].as_str().unwrap();
    assert!(detail.contains("max_requests (2) reached"), "{detail}");
    // The next job has its own budget.
    let (_, reports, _) = probe_run(&plugin, &[format!("{}/hello", grant(addr))], &[]).await;
    assert_eq!(reports[0]["status"], 200);
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_grant_every_request_is_denied() {
    let addr = server().await;
    let sandbox = sandbox_with(&["http://127.0.0.1:*".into()], false, Limits::default());
    // No manifest at all.
    let plugin = sandbox.load_file(&artifact("http-probe")).await.unwrap();
    let (run, reports, _) = probe_run(&plugin, &[format!("{}/hello", grant(addr))], &[]).await;
    assert_eq!(reports[0]["error"], "denied", "{reports:?}");
    assert_eq!(run.denials.count(Capability::Http), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn the_enrich_example_merges_a_fetched_field() {
    let addr = server().await;
    let sandbox = sandbox_with(&["http://127.0.0.1:*".into()], false, Limits::default());
    let dir = tempfile::tempdir().unwrap();
    let wasm = with_manifest(
        dir.path(),
        "enrich",
        "1.0.0",
        &format!(
            "[grants]\noutbound = [\"{g}\"]\n[config]\nurl = \"{g}/people\"\nfield = \"country\"\n",
            g = grant(addr)
        ),
    );
    let plugin = sandbox.load_file(&wasm).await.unwrap();
    enriches_record_7(&plugin, "e").await;
    let run = plugin.process(&ctx("e", &[]), r#"{"id":8}"#).await;
    let err = run.result.unwrap_err().to_string();
    assert!(err.contains("no record 8"), "{err}");
}

/// Runs an `enrich` plugin (Rust or JavaScript) as job `job_id` on record 7
/// of the loopback server, asserts the fetched field was merged in, and
/// returns the run.
async fn enriches_record_7(plugin: &Plugin, job_id: &str) -> SingleRun {
    let run = plugin
        .process(&ctx(job_id, &[]), r#"{"id":7,"text":"hi"}"#)
        .await;
    let out = run.result.as_ref().unwrap();
    let merged: Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(
        merged,
        serde_json::json!({"id": 7, "text": "hi", "country": "UK"})
    );
    run
}

/// A fixed trace context, standing in for the worker's OpenTelemetry one.
fn fixed_traceparent(span: &tracing::Span) -> Vec<(String, String)> {
    // The injector is handed the request's client span.
    let name = span.metadata().map_or("none", |m| m.name());
    vec![(
        "traceparent".to_owned(),
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01;{name}")
            .replace(";http.client", ""),
    )]
}

#[tokio::test(flavor = "current_thread")]
async fn the_trace_context_is_injected_into_the_outgoing_request() {
    kiln_sandbox::http::set_trace_injector(fixed_traceparent);
    let (addr, plugin, _held) = granted_probe("").await;
    // Spans must be enabled for the client span to exist.
    let (_, reports, _) = probe_run(&plugin, &[format!("{}/traceparent", grant(addr))], &[]).await;
    assert_eq!(
        reports[0]["body"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "{reports:?}"
    );
}

/// `enrich` in a real `kiln worker` on the local RabbitMQ, exporting spans
/// to the test's OTLP receiver: the reply carries the merged record and the
/// request count, the request's client span is a child of the job's span,
/// and the loopback server got a `traceparent` naming that client span.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_runs_enrich_end_to_end_with_the_client_span_parented() {
    let receiver = Receiver::start().await;
    let (addr, seen) = server_seeing().await;
    let q = TestQueue::new("http-enrich");
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    with_manifest(
        &plugins,
        "enrich",
        "1.0.0",
        &format!(
            "[grants]\noutbound = [\"{g}\"]\n[config]\nurl = \"{g}/people\"\nfield = \"country\"\n",
            g = grant(addr)
        ),
    );
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        "[sandbox.caps]\noutbound = [\"http://127.0.0.1:*\"]\n",
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str())];
    let worker = WorkerProc::start_with_args(
        URL,
        &q,
        &plugins,
        &cache,
        &env,
        &["--config-file", config.to_str().unwrap()],
    )
    .until_ready()
    .await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    broker
        .ask(
            &q,
            job("e2e-enrich", "enrich", r#"{"id":7,"text":"hi"}"#),
            &replies,
            "m-enrich",
        )
        .await;
    let got = replies.take(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let reply = got[0].json();
    assert_eq!(reply["http_requests"], 1, "{reply}");
    let output: Value = serde_json::from_str(reply["output"].as_str().unwrap()).unwrap();
    assert_eq!(
        output,
        serde_json::json!({"id": 7, "text": "hi", "country": "UK"})
    );
    let status = worker.stop().await;
    assert!(status.success(), "worker exited with {status}");

    // The batch is flushed at shutdown.
    let spans = receiver
        .wait_for("the job and client spans", |s| {
            s.iter()
                .any(|s| s.attributes.get("kiln.job_id").map(String::as_str) == Some("e2e-enrich"))
                && s.iter().any(|s| s.attributes.contains_key("kiln.grant"))
        })
        .await;
    let job_span = spans
        .iter()
        .find(|s| s.attributes.get("kiln.job_id").map(String::as_str) == Some("e2e-enrich"))
        .unwrap();
    let client: Vec<_> = spans
        .iter()
        .filter(|s| s.attributes.contains_key("kiln.grant"))
        .collect();
    assert_eq!(client.len(), 1, "{client:#?}");
    let client = client[0];
    assert_eq!(client.kind, SpanKind::Client as i32, "{client:#?}");
    assert_eq!(client.name, "GET");
    assert_eq!(client.trace_id, job_span.trace_id, "one trace");
    assert_eq!(
        client.parent_span_id, job_span.span_id,
        "the client span is a child of the job span: {spans:#?}"
    );
    let port = addr.port().to_string();
    for (key, want) in [
        ("http.request.method", "GET"),
        ("server.address", "127.0.0.1"),
        ("server.port", port.as_str()),
        ("url.scheme", "http"),
        ("url.path", "/people/7"),
        ("http.response.status_code", "200"),
        ("kiln.grant", grant(addr).as_str()),
    ] {
        assert_eq!(
            client.attributes.get(key).map(String::as_str),
            Some(want),
            "{key} in {client:#?}"
        );
    }
    // The server saw the client span's context.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Some(format!(
            "00-{}-{}-01",
            client.trace_id, client.span_id
        ))]
    );
}

/// Raw `wasi:sockets` stay denied whatever the grants: `hostile-snoop`
/// opens a TCP connection to 127.0.0.1:5672 under a manifest granting
/// exactly that host and port (and the operator allowing private
/// addresses), and the host still answers `access-denied`, audited as
/// `tcp`, not `http` (docs/SANDBOX.md, "Raw sockets stay denied").
#[tokio::test(flavor = "current_thread")]
async fn a_raw_tcp_connect_to_a_granted_host_and_port_is_still_denied() {
    let sandbox = sandbox_with(&["http://127.0.0.1:*".into()], true, Limits::default());
    let dir = tempfile::tempdir().unwrap();
    let wasm = with_manifest(
        dir.path(),
        "hostile-snoop",
        "1.0.0",
        "[grants]\noutbound = [\"http://127.0.0.1:5672\"]\n",
    );
    let plugin = sandbox.load_file(&wasm).await.unwrap();
    assert_eq!(plugin.grants().outbound.len(), 1);
    let run = plugin.process(&ctx("raw-1", &[]), "x").await;
    let report: Value = serde_json::from_str(&run.result.as_ref().unwrap().output).unwrap();
    // wasi-libc's EACCES for `access-denied` (as in tests/all/denials.rs).
    assert_eq!(
        report["tcp"], "error: Permission denied (os error 2)",
        "{report}"
    );
    assert_eq!(run.denials.count(Capability::Tcp), 1, "{:?}", run.denials);
    assert_eq!(run.denials.count(Capability::Http), 0, "{:?}", run.denials);
    assert!(run.http.is_empty(), "{:?}", run.http);
}

/// `enrich-js` (`plugins/js/enrich`, built by `cargo xtask plugins --lang js`
/// into the language plugins' directory) copied into `dir` beside
/// `manifest`; `None`, with a message, when it was not built, unless
/// `KILN_REQUIRE_LANG_PLUGINS=1` makes that a failure (as in
/// `tests/languages`).
fn enrich_js(dir: &Path, manifest: &str) -> Option<std::path::PathBuf> {
    let from = lang_plugins_dir().join("enrich-js.wasm");
    if !from.is_file() {
        assert!(
            std::env::var("KILN_REQUIRE_LANG_PLUGINS").as_deref() != Ok("1"),
            "KILN_REQUIRE_LANG_PLUGINS=1 but {} is missing; build it with `cargo xtask plugins --lang js`",
            from.display()
        );
        eprintln!(
            "SKIPPED {} not built; run `cargo xtask plugins --lang js` to test it",
            from.display()
        );
        return None;
    }
    let wasm = dir.join("enrich-js.wasm");
    std::fs::copy(&from, &wasm).unwrap();
    std::fs::write(
        dir.join("enrich-js.toml"),
        format!("name = \"enrich-js\"\nversion = \"1.0.0\"\n{manifest}"),
    )
    .unwrap();
    Some(wasm)
}

/// The manifest of `enrich-js` reading `/people` of `addr`, granted `grant`.
fn enrich_js_manifest(addr: SocketAddr, grant: &str) -> String {
    format!(
        "[grants]\noutbound = [\"{grant}\"]\n[config]\nurl = \"http://127.0.0.1:{}/people\"\nfield = \"country\"\n",
        addr.port()
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_javascript_fetch_is_allowed_by_a_grant_and_denied_without_one() {
    let addr = server().await;
    let mut config = config(Limits::default());
    config.caps.outbound = vec!["http://127.0.0.1:*".parse().unwrap()];
    // One compilation of the 12 MB component serves both loads.
    let cache = tempfile::tempdir().unwrap();
    config.cache.dir = Some(cache.path().to_owned());
    let sandbox = Sandbox::new(config).unwrap();

    // Granted: fetch() returns the body.
    let granted = tempfile::tempdir().unwrap();
    let Some(wasm) = enrich_js(granted.path(), &enrich_js_manifest(addr, &grant(addr))) else {
        return;
    };
    let plugin = sandbox.load_file(&wasm).await.unwrap();
    assert_eq!(plugin.name(), "enrich-js");
    let run = enriches_record_7(&plugin, "js-1").await;
    assert!(run.denials.is_empty(), "{:?}", run.denials);
    assert_eq!(run.http.len(), 1, "{:?}", run.http);
    assert_eq!(&*run.http[0].grant, grant(addr));
    assert_eq!(run.http[0].status, Some(200));
    // A 404 from the granted service is the plugin's own typed error.
    let run = plugin.process(&ctx("js-2", &[]), r#"{"id":8}"#).await;
    match run.result {
        Err(JobFailure::Plugin { kind, message }) => {
            assert_eq!(kind, PluginErrorKind::InvalidInput);
            assert_eq!(message, "no record 8");
        }
        other => panic!("{other:?}"),
    }

    // Granted another port only: denied.
    let denied = tempfile::tempdir().unwrap();
    let other = format!("http://127.0.0.1:{}", addr.port() + 1);
    let wasm = enrich_js(denied.path(), &enrich_js_manifest(addr, &other)).unwrap();
    let plugin = sandbox.load_file(&wasm).await.unwrap();
    let (run, audit) = audited(plugin.process(&ctx("js-3", &[]), r#"{"id":7}"#)).await;
    // fetch() rejected inside the guest with fetch's own typed error (a
    // `TypeError`: StarlingMonkey does not pass wasi:http's
    // `HTTP-request-denied` on), which the plugin caught and turned into
    // its typed failure. The request never left the host.
    match &run.result {
        Err(JobFailure::Plugin { kind, message }) => {
            assert_eq!(*kind, PluginErrorKind::InternalError);
            let url = format!("http://127.0.0.1:{}/people/7", addr.port());
            assert!(
                message.starts_with(&format!("fetch {url}: TypeError: ")),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(run.http.is_empty(), "{:?}", run.http);
    assert_eq!(run.denials.count(Capability::Http), 1);
    assert_eq!(audit.len(), 1, "{audit:?}");
    let f = &audit[0]["fields"];
    assert_eq!(f["capability"], "http", "{f}");
    assert_eq!(f["plugin"], "enrich-js", "{f}");
    assert_eq!(f["job_id"], "js-3", "{f}");
    assert_eq!(
        f["detail"],
        format!("http://127.0.0.1:{}: no outbound grant", addr.port())
    );
}
