//! Traces, metrics and probes of a real `kiln worker` (and `kiln enqueue`)
//! against the local RabbitMQ (127.0.0.1:5672, guest/guest; `.ci/run`
//! starts it). No collector can be installed here, so the trace tests run
//! the library's OTLP/HTTP receiver (`kiln_integration_tests::otlp`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_integration_tests::broker::{
    self, Broker, Replies, TestQueue, URL, WorkerProc, job, sample,
};
use kiln_integration_tests::kiln;
use kiln_integration_tests::otlp::Receiver;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A jobs queue of this binary's.
fn queue(name: &str) -> TestQueue {
    TestQueue::new(&format!("obs-{name}"))
}

/// `GET path` on the worker's HTTP port: (status, content type, body).
fn get(worker: &WorkerProc, path: &str) -> Option<(u16, String, String)> {
    let response = worker.get(path)?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Some((status, content_type, body.to_owned()))
}

/// SIGTERM, then waits for a successful exit.
async fn stop(worker: WorkerProc) {
    let status = worker.stop().await;
    assert!(status.success(), "worker exited with {status}");
}

/// Publishes a job answered on `replies`, with `message_id` as its message
/// and correlation id, and `headers`.
async fn publish(
    broker: &Broker,
    queue: &str,
    replies: &Replies,
    body: Vec<u8>,
    message_id: &str,
    headers: FieldTable,
) {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id.to_owned()))
        .with_correlation_id(ShortString::from(message_id.to_owned()))
        .with_reply_to(ShortString::from(replies.name.clone()))
        .with_headers(headers);
    broker.publish_with(queue, body, props).await;
}

// ---------------------------------------------------------------- traces

fn traceparent(trace_id: &str, span_id: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(
            format!("00-{trace_id}-{span_id}-01").into_bytes(),
        )),
    );
    headers.insert(
        "tracestate".into(),
        AMQPValue::LongString(LongString::from(b"producer=test".to_vec())),
    );
    headers
}

/// Splits a `traceparent` into (trace id, span id).
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    assert_eq!(parts[0], "00");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn job_spans_continue_the_producer_trace_and_are_flushed_on_sigterm() {
    let receiver = Receiver::start().await;
    let q = queue("traces");
    // A ten-minute batch delay: spans can only arrive through the flush at
    // shutdown.
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
    ];
    let worker = WorkerProc::spawn_with(&q, &["uppercase"], &otel).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;

    // 1. A producer of our own: a job carrying a traceparent.
    let producer_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let producer_span = "00f067aa0ba902b7";
    publish(
        &broker,
        &q,
        &replies,
        job("j-direct", "uppercase", "hello"),
        "m-direct",
        traceparent(producer_trace, producer_span),
    )
    .await;
    let got = replies.take(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["output"], "HELLO");
    let reply_parent = got[0].header("traceparent").expect("reply traceparent");
    let (reply_trace, reply_span) = parse_traceparent(&reply_parent);
    assert_eq!(reply_trace, producer_trace, "the reply continues the trace");
    assert_ne!(reply_span, producer_span);
    assert_eq!(
        got[0].header("tracestate").as_deref(),
        Some("producer=test")
    );

    // 2. `kiln enqueue`, which starts and injects its own spans, and flushes
    // them when it exits.
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        [job("j-enq", "uppercase", "world"), b"\n".to_vec()].concat(),
    )
    .unwrap();
    let status = kiln()
        .args(["enqueue", "--amqp-url", URL, "--queue", &q])
        .arg(&jobs)
        .env("RUST_LOG", "error")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        .env("OTEL_SERVICE_NAME", "kiln-enqueue-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let spans = receiver
        .wait_for("enqueue's publish span", |s| {
            s.iter()
                .any(|s| s.service == "kiln-enqueue-test" && s.name.starts_with("publish"))
        })
        .await;
    let publish = spans
        .iter()
        .find(|s| s.service == "kiln-enqueue-test" && s.name == format!("publish {q}"))
        .unwrap_or_else(|| panic!("no publish span in {spans:#?}"));
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(publish.attributes["messaging.system"], "rabbitmq");
    assert_eq!(publish.attributes["messaging.destination.name"], q.name());
    assert_eq!(publish.attributes["messaging.message.id"], "j-enq");
    assert_eq!(publish.attributes["kiln.job_id"], "j-enq");
    let root = spans
        .iter()
        .find(|s| s.service == "kiln-enqueue-test" && s.name == format!("enqueue {q}"))
        .unwrap_or_else(|| panic!("no enqueue span in {spans:#?}"));
    assert_eq!(publish.parent_span_id, root.span_id);
    assert_eq!(publish.trace_id, root.trace_id);

    let done = broker.drain(&q.results(), 1, Duration::from_secs(30)).await;
    assert_eq!(done.len(), 1, "the enqueued job was answered");

    // Nothing from the worker yet: its batch only leaves on shutdown.
    assert!(
        receiver.spans().iter().all(|s| s.service != "kiln"),
        "worker spans exported before shutdown: {:#?}",
        receiver.spans()
    );
    stop(worker).await;
    let spans = receiver
        .wait_for("the worker's job spans", |s| {
            s.iter()
                .filter(|s| s.service == "kiln" && s.name.starts_with("process"))
                .count()
                >= 2
        })
        .await;

    let job_span = |job_id: &str| {
        spans
            .iter()
            .find(|s| {
                s.service == "kiln"
                    && s.attributes.get("kiln.job_id").map(String::as_str) == Some(job_id)
            })
            .unwrap_or_else(|| panic!("no job span for {job_id} in {spans:#?}"))
            .clone()
    };
    let direct = job_span("j-direct");
    assert_eq!(direct.name, format!("process {q}"));
    assert_eq!(direct.kind, SpanKind::Consumer as i32);
    assert_eq!(
        direct.trace_id, producer_trace,
        "same trace as the producer"
    );
    assert_eq!(
        direct.parent_span_id, producer_span,
        "child of the producer span"
    );
    assert_eq!(direct.span_id, reply_span, "the reply carries the job span");
    assert_eq!(direct.resource["deployment.environment"], "test");
    assert_eq!(
        direct.resource["service.name"], "kiln",
        "the default service name"
    );
    for (key, want) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.operation", "process"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", q.name()),
        ("messaging.rabbitmq.destination.routing_key", q.name()),
        ("messaging.message.id", "m-direct"),
        ("messaging.message.conversation_id", "m-direct"),
        ("kiln.plugin", "uppercase"),
        ("kiln.job_id", "j-direct"),
        ("kiln.outcome", "ok"),
        ("kiln.attempt", "1"),
    ] {
        assert_eq!(
            direct.attributes.get(key).map(String::as_str),
            Some(want),
            "{key} in {direct:#?}"
        );
    }
    semver::Version::parse(&direct.attributes["kiln.plugin_version"]).unwrap();

    let enqueued = job_span("j-enq");
    assert_eq!(enqueued.trace_id, publish.trace_id);
    assert_eq!(
        enqueued.parent_span_id, publish.span_id,
        "child of enqueue's publish span"
    );
}

/// With export on, a JSON log line written in a job's span (here its
/// dead-letter warning) carries the trace and span ids of the exported job
/// span; the worker's start line, outside any span, carries none.
#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_in_a_job_span_carry_its_trace_and_span_ids() {
    let receiver = Receiver::start().await;
    let q = queue("logids");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("RUST_LOG", ""),
    ];
    let worker = WorkerProc::spawn_with(&q, &["uppercase"], &env).await;
    let broker = Broker::connect().await;
    broker
        .publish(&q, job("ids-1", "no-such-plugin-d4", "x"), None, None)
        .await;
    let dead = broker.drain(&q.dead(), 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    let (status, log) = worker.stop_with_log().await;
    assert!(status.success(), "{log}");
    let spans = receiver
        .wait_for("the job span", |s| {
            s.iter()
                .any(|s| s.attributes.get("kiln.job_id").map(String::as_str) == Some("ids-1"))
        })
        .await;
    let span = spans
        .iter()
        .find(|s| s.attributes.get("kiln.job_id").map(String::as_str) == Some("ids-1"))
        .unwrap();
    let lines = broker::log_lines(&log, "job dead-lettered");
    assert_eq!(lines.len(), 1, "{log}");
    assert_eq!(lines[0]["fields"]["job_id"], "ids-1", "{log}");
    assert_eq!(lines[0]["trace_id"], span.trace_id.as_str(), "{log}");
    assert_eq!(lines[0]["span_id"], span.span_id.as_str(), "{log}");
    let start = broker::log_lines(&log, "worker starting");
    assert_eq!(start.len(), 1, "{log}");
    assert!(start[0].get("trace_id").is_none(), "{log}");
}

/// An exporter that cannot reach its endpoint says so at `warn`, naming
/// the endpoint, once a minute at most: several failed exports (jobs
/// spread over seconds, batches sent every 100 ms) make one line, and the
/// exit line counts the failures it did not log.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_export_is_logged_rate_limited() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let q = queue("exportfail");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", ""),
    ];
    let worker = WorkerProc::spawn_with(&q, &["uppercase"], &env).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    for i in 0..10 {
        let id = format!("x{i}");
        broker
            .ask(&q, job(&id, "uppercase", "x"), &replies, &id)
            .await;
        assert_eq!(replies.take(1, Duration::from_secs(20)).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, log) = worker.stop_with_log().await;
    assert!(status.success(), "{log}");
    let failed = broker::log_lines(
        &log,
        "OTLP trace export failed, spans dropped (logged at most once a minute)",
    );
    assert_eq!(failed.len(), 1, "{log}");
    assert_eq!(failed[0]["level"], "WARN", "{log}");
    assert_eq!(
        failed[0]["fields"]["endpoint"],
        format!("{endpoint}/v1/traces"),
        "{log}"
    );
    assert!(
        failed[0]["fields"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{log}"
    );
    let untold = broker::log_lines(&log, "OTLP trace export failures not logged before exit");
    assert_eq!(untold.len(), 1, "{log}");
    let suppressed = untold[0]["fields"]["suppressed"].as_u64().unwrap_or(0);
    // Several batches failed (one every 100 ms at most while jobs ran),
    // and only the first made a line.
    assert!(suppressed >= 2, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_replies_carry_no_trace_headers() {
    let q = queue("notrace");
    // An empty endpoint counts as unset.
    let worker =
        WorkerProc::spawn_with(&q, &["uppercase"], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    publish(
        &broker,
        &q,
        &replies,
        job("j", "uppercase", "x"),
        "m",
        traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
    )
    .await;
    let got = replies.take(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("traceparent"), None);
    stop(worker).await;
}

// --------------------------------------------------------------- metrics

fn check_samples(text: &str, expected: &[(&str, f64)]) {
    for (series, want) in expected {
        assert_eq!(sample(text, series), Some(*want), "{series} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_outcomes_retries_and_dead_letters() {
    let q = queue("metrics");
    let plugins =
        kiln_integration_tests::plugin_dir(&["uppercase", "hostile-panic", "hostile-spin"]);
    let cache = tempfile::tempdir().unwrap();
    let env = [
        ("KILN__SANDBOX__LIMITS__TIMEOUT_MS", "50"),
        ("KILN__PIPELINE__INITIAL_BACKOFF_MS", "100"),
    ];
    let worker = WorkerProc::start(URL, &q, plugins.path(), cache.path(), &env)
        .until_ready()
        .await;
    let (status, _, body) = get(&worker, "/readyz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ready"));
    let (status, _, body) = get(&worker, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));

    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let jobs = [
        job("ok-1", "uppercase", "a"),
        job("ok-2", "uppercase", "b"),
        job("ok-3", "uppercase", "c"),
        // A trap: answered, not retried.
        job("trap", "hostile-panic", "x"),
        // Not loaded: answered and dead-lettered, counted as `unknown`.
        job("unknown", "no-such-plugin-a1b2", "x"),
        // Times out three times: two retries, then answered and dead-lettered.
        job("spin", "hostile-spin", "x"),
    ];
    for (i, body) in jobs.into_iter().enumerate() {
        publish(
            &broker,
            &q,
            &replies,
            body,
            &format!("m-{i}"),
            FieldTable::default(),
        )
        .await;
    }
    let got = replies.take(6, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 6, "one reply per job");
    // The last ack follows the last reply's confirm: wait for it.
    let started = Instant::now();
    let text = loop {
        let (status, content_type, text) = get(&worker, "/metrics").unwrap();
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        if sample(&text, "kiln_jobs_acked_total") == Some(8.0)
            || started.elapsed() > Duration::from_secs(10)
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    check_samples(
        &text,
        &[
            (
                "kiln_jobs_total{plugin=\"uppercase\",version=\"1.0.0\",outcome=\"ok\"}",
                3.0,
            ),
            (
                "kiln_jobs_total{plugin=\"hostile-panic\",version=\"1.0.0\",outcome=\"trap\"}",
                1.0,
            ),
            (
                "kiln_jobs_total{plugin=\"unknown\",version=\"\",outcome=\"unknown-plugin\"}",
                1.0,
            ),
            (
                "kiln_jobs_total{plugin=\"hostile-spin\",version=\"1.0.0\",outcome=\"timeout\"}",
                3.0,
            ),
        ],
    );
    check_samples(
        &text,
        &[
            (
                "kiln_retries_total{plugin=\"hostile-spin\",kind=\"timeout\"}",
                2.0,
            ),
            (
                "kiln_dead_lettered_total{plugin=\"hostile-spin\",kind=\"timeout\"}",
                1.0,
            ),
            // Not loaded: its name makes no series.
            (
                "kiln_dead_lettered_total{plugin=\"unknown\",kind=\"unknown-plugin\"}",
                1.0,
            ),
            ("kiln_jobs_acked_total", 8.0),
            ("kiln_amqp_reconnects_total", 0.0),
            ("kiln_jobs_in_flight", 0.0),
            ("kiln_plugins_loaded", 3.0),
            ("kiln_plugin_cache_hits_total", 0.0),
            ("kiln_plugin_cache_misses_total", 3.0),
            (
                "kiln_job_duration_seconds_count{plugin=\"uppercase\",version=\"1.0.0\"}",
                3.0,
            ),
            (
                "kiln_job_duration_seconds_count{plugin=\"hostile-spin\",version=\"1.0.0\"}",
                3.0,
            ),
            (
                "kiln_job_fuel_consumed_count{plugin=\"uppercase\",version=\"1.0.0\"}",
                3.0,
            ),
            (
                "kiln_plugin_instantiation_seconds_count{plugin=\"uppercase\",version=\"1.0.0\"}",
                3.0,
            ),
        ],
    );
    assert_eq!(
        sample(
            &text,
            "kiln_job_duration_seconds_count{plugin=\"unknown\",version=\"\"}"
        ),
        None
    );
    // Each of the three spins hit its 50 ms deadline.
    let spin_seconds = sample(
        &text,
        "kiln_job_duration_seconds_sum{plugin=\"hostile-spin\",version=\"1.0.0\"}",
    )
    .unwrap();
    assert!(spin_seconds >= 0.15, "{spin_seconds}");
    assert!(
        sample(
            &text,
            "kiln_job_fuel_consumed_sum{plugin=\"uppercase\",version=\"1.0.0\"}"
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        sample(
            &text,
            "kiln_job_duration_seconds_bucket{le=\"+Inf\",plugin=\"uppercase\",version=\"1.0.0\"}"
        ),
        Some(3.0)
    );
    for (family, kind) in [
        ("kiln_jobs", "counter"),
        ("kiln_job_duration_seconds", "histogram"),
        ("kiln_job_fuel_consumed", "histogram"),
        ("kiln_plugin_instantiation_seconds", "histogram"),
        ("kiln_jobs_in_flight", "gauge"),
        ("kiln_retries", "counter"),
        ("kiln_dead_lettered", "counter"),
        ("kiln_amqp_reconnects", "counter"),
        ("kiln_plugins_loaded", "gauge"),
        ("kiln_plugin_cache_hits", "counter"),
        ("kiln_plugin_cache_misses", "counter"),
        ("kiln_build_info", "gauge"),
    ] {
        let line = format!("# TYPE {family} {kind}");
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("kiln_build_info{version=") && l.ends_with(" 1"))
    );
    // No series per unknown plugin name.
    assert!(!text.contains("no-such-plugin"), "{text}");
    stop(worker).await;

    // The same plugins and cache again: every plugin is a cache hit.
    let worker = WorkerProc::start(URL, &q, plugins.path(), cache.path(), &env)
        .until_ready()
        .await;
    let (_, _, text) = get(&worker, "/metrics").unwrap();
    check_samples(
        &text,
        &[
            ("kiln_plugin_cache_hits_total", 3.0),
            ("kiln_plugin_cache_misses_total", 0.0),
        ],
    );
    // Before any job, every counter of each loaded plugin exists at 0, so
    // that `increase()` sees its first event; HELP lines end in one period.
    for plugin in ["uppercase", "hostile-panic", "hostile-spin"] {
        for outcome in ["ok", "trap", "timeout", "fuel-exhausted", "internal"] {
            let series = format!(
                "kiln_jobs_total{{plugin=\"{plugin}\",version=\"1.0.0\",outcome=\"{outcome}\"}}"
            );
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        for capability in ["tcp", "udp", "dns"] {
            let series = format!(
                "kiln_capability_denials_total{{plugin=\"{plugin}\",capability=\"{capability}\"}}"
            );
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
        }
    }
    for result in ["loaded", "removed", "failed"] {
        let series = format!("kiln_plugin_reloads_total{{result=\"{result}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
    }
    for line in text.lines().filter(|l| l.starts_with("# HELP")) {
        assert!(!line.ends_with(".."), "{line}");
    }
    // The standard process metrics, read from /proc.
    assert!(
        sample(&text, "process_resident_memory_bytes").unwrap() > 1e6,
        "{text}"
    );
    assert!(sample(&text, "process_open_fds").unwrap() >= 3.0, "{text}");
    assert!(
        text.lines()
            .any(|l| l == "# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    stop(worker).await;
}

// ------------------------------------------------------------------ logs

/// `GET /readyz` on 127.0.0.1:`port` answers 200.
fn ready_at(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// A reply whose requester's queue is gone is logged by the worker with
/// its job id, routing key and size, and its body reaches no log line,
/// even at `debug` (lapin's own event for it, which prints the body's
/// bytes, is silenced).
#[tokio::test(flavor = "multi_thread")]
async fn an_unroutable_reply_is_logged_without_its_body() {
    let q = queue("unroutable");
    let plugins = kiln_integration_tests::plugin_dir(&["uppercase"]);
    let cache = tempfile::tempdir().unwrap();
    let logs = tempfile::NamedTempFile::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = kiln()
        .args(["worker", "--amqp-url", URL, "--queue", &q])
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--cache")
        .arg(cache.path())
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "debug")
        .env("KILN__LOG__FORMAT", "json")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logs.reopen().unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ready_at(port) {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let broker = Broker::connect().await;
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from("unroutable-1"))
        .with_reply_to(ShortString::from("obs-no-such-reply-queue-7f3e"));
    broker
        .publish_with(
            &q,
            job("unroutable-1", "uppercase", "zebra-quartz-secret"),
            props,
        )
        .await;
    let started = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(logs.path()).unwrap();
        if text.contains("reply unroutable") || started.elapsed() > Duration::from_secs(30) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("reply unroutable"))
        .unwrap_or_else(|| panic!("no unroutable line in\n{text}"));
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    let fields = &line["fields"];
    assert_eq!(fields["job_id"], "unroutable-1", "{line}");
    assert_eq!(fields["reply_to"], "obs-no-such-reply-queue-7f3e", "{line}");
    assert!(fields["reply_bytes"].as_u64().unwrap_or(0) > 0, "{line}");
    // The reply's output, in any case, and raw bytes reach no line.
    assert!(!text.contains("ZEBRA-QUARTZ-SECRET"), "{text}");
    assert!(!text.contains("data: ["), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_wants_plugins_and_healthz_only_a_live_process() {
    let q = queue("noplugins");
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let worker = WorkerProc::start(URL, &q, plugins.path(), cache.path(), &[]);
    let started = Instant::now();
    let health = loop {
        if let Some(answer) = get(&worker, "/healthz") {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/healthz never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((health.0, health.2.as_str()), (200, "ok"));
    // Connected and consuming, but with nothing to run jobs with.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, body) = get(&worker, "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("no plugin loaded"), "{body}");
    stop(worker).await;
}
