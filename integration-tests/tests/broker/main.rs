//! `kiln worker` and `kiln enqueue` against the real local RabbitMQ
//! (127.0.0.1:5672, guest/guest; `.ci/run` starts it). Every test uses its
//! own uniquely named queues, behind a `TestQueue` that deletes them when
//! the test ends, whether it passed or not.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::time::Duration;

use kiln_integration_tests::broker::{
    self, Broker, Received, Replies, TestQueue, WorkerProc, job, queue_exists, unique,
};
use kiln_integration_tests::{kiln, stdout_of};

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_with_correlation_ids_and_batches() {
    let q = TestQueue::new("roundtrip");
    let worker = WorkerProc::spawn(&q, &[]).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    for i in 0..50 {
        let body = job(&format!("j{i}"), "uppercase", &format!("hello {i}"));
        broker.ask(&q, body, &replies, &format!("c-{i}")).await;
    }
    let batch = serde_json::json!({"job_id": "b", "plugin": "wordcount", "inputs": ["a b", "c"]});
    let batch = serde_json::to_vec(&batch).unwrap();
    broker.ask(&q, batch, &replies, "c-batch").await;

    let got = replies.take(51, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 51);
    for r in &got {
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let body = r.json();
        let correlation = r.correlation_id.as_deref().unwrap();
        if correlation == "c-batch" {
            assert_eq!(body["status"], "ok");
            assert_eq!(body["results"][0]["output"], "2");
        } else {
            let i = correlation.strip_prefix("c-").unwrap();
            assert_eq!(body["job_id"], format!("j{i}"));
            assert_eq!(body["output"], format!("HELLO {i}"));
        }
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_reply_to_goes_to_the_results_queue() {
    let q = TestQueue::new("results");
    let worker = WorkerProc::spawn(&q, &[]).await;
    let broker = Broker::connect().await;
    broker
        .publish(&q, job("r1", "reverse", "abc"), None, Some("c1"))
        .await;
    let got = broker.drain(&q.results(), 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["output"], "cba");
    assert_eq!(got[0].correlation_id.as_deref(), Some("c1"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_end_to_end_and_malformed_messages_dead_lettered_with_reason() {
    let q = TestQueue::new("errors");
    let worker = WorkerProc::spawn(&q, &[]).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let huge = serde_json::json!({
        "job_id": "h", "plugin": "hostile-hugeout", "input": "x", "config": {"bytes": "9000000"}
    });
    // (body, correlation, error kind, dead-lettered)
    #[rustfmt::skip]
    let cases: Vec<(Vec<u8>, &str, &str, bool)> = vec![
        (b"\xff\xfe".to_vec(), "utf8", "bad-request", true),
        (b"not json".to_vec(), "json", "bad-request", true),
        (job("u", "no-such-plugin", "x"), "unknown", "unknown-plugin", true),
        (br#"{"job_id":"v","plugin":"uppercase","version":"^9","input":"x"}"#.to_vec(), "version", "version-mismatch", true),
        (job("e", "reverse", ""), "invalid", "invalid-input", false),
        (job("m", "hostile-membomb", "x"), "bomb", "memory-limit", false),
        (job("p", "hostile-panic", "x"), "panic", "trap", false),
        (fail_job("uf", "unsupported-format"), "unsupported", "unsupported-format", false),
        (fail_job("ie", "internal-error"), "plugin-internal", "internal-error", false),
        (job("big", "uppercase", &"x".repeat(5 << 20)), "big", "payload-too-large", true),
        (serde_json::to_vec(&huge).unwrap(), "huge", "output-too-large", false),
    ];
    for (body, correlation, _, _) in &cases {
        broker.ask(&q, body.clone(), &replies, correlation).await;
    }
    let got = replies.take(cases.len(), Duration::from_secs(30)).await;
    assert_eq!(got.len(), cases.len());
    for (_, correlation, kind, _) in &cases {
        let body = reply_to(&got, correlation).json();
        assert_eq!(body["status"], "error", "{correlation}");
        assert_eq!(body["error"]["kind"], *kind, "{correlation}: {body}");
    }
    let expected_dead: HashSet<&str> = cases.iter().filter(|c| c.3).map(|c| c.2).collect();
    assert_eq!(
        expected_dead.len(),
        4,
        "bad-request twice, unknown-plugin, version-mismatch, payload-too-large"
    );
    let dead = broker.drain(&q.dead(), 5, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 5);
    let kinds: HashSet<String> = dead
        .iter()
        .map(|d| d.header("x-kiln-error-kind").unwrap())
        .collect();
    assert_eq!(
        kinds,
        expected_dead.iter().map(|s| (*s).to_owned()).collect()
    );
    assert!(
        dead.iter()
            .all(|d| !d.header("x-kiln-error-message").unwrap().is_empty())
    );
    worker.stop().await;
}

/// A job for `hostile-fail`, which returns the plugin error `kind`.
fn fail_job(id: &str, kind: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "job_id": id, "plugin": "hostile-fail", "input": "x", "config": {"kind": kind}
    }))
    .unwrap()
}

/// The reply in `got` with `correlation`.
fn reply_to<'a>(got: &'a [Received], correlation: &str) -> &'a Received {
    got.iter()
        .find(|r| r.correlation_id.as_deref() == Some(correlation))
        .unwrap_or_else(|| panic!("no reply with correlation id {correlation}"))
}

/// Takes the one dead letter of `q` and checks that it gave up after
/// three attempts, with the error `kind`.
async fn one_dead_letter(broker: &Broker, q: &TestQueue, kind: &str) -> Received {
    let mut dead = broker.drain(&q.dead(), 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    let dead = dead.remove(0);
    assert_eq!(dead.header("x-kiln-attempt").as_deref(), Some("3"));
    assert_eq!(dead.header("x-kiln-error-kind").as_deref(), Some(kind));
    dead
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_instance_pool_is_internal_retried_then_dead_lettered() {
    let q = TestQueue::new("pool");
    // One instance in the pool, held by a spinning job for 4 s.
    let (worker, broker) = broker::spinning(
        &q,
        &["hostile-spin", "uppercase"],
        &[
            ("KILN__SANDBOX__POOL__MAX_INSTANCES", "1"),
            ("KILN__SANDBOX__LIMITS__TIMEOUT_MS", "4000"),
            // Enough fuel to spin until the deadline.
            ("KILN__SANDBOX__LIMITS__FUEL", "1000000000000"),
            ("KILN__PIPELINE__INITIAL_BACKOFF_MS", "100"),
        ],
    )
    .await;
    let replies = broker.reply_queue().await;
    let crowded = job("crowded", "uppercase", "x");
    broker.ask(&q, crowded, &replies, "c-crowded").await;
    // Three attempts, 100 ms and 400 ms apart, all while the spinner runs.
    let got = replies.take(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let body = got[0].json();
    assert_eq!(body["job_id"], "crowded");
    assert_eq!(body["error"]["kind"], "internal", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pool")),
        "{body}"
    );
    let dead = one_dead_letter(&broker, &q, "internal").await;
    assert_eq!(dead.job_id(), "crowded");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_retry_with_backoff_then_dead_letter() {
    let q = TestQueue::new("retry");
    let worker = WorkerProc::spawn(
        &q,
        &[
            ("KILN__SANDBOX__LIMITS__TIMEOUT_MS", "50"),
            ("KILN__PIPELINE__INITIAL_BACKOFF_MS", "200"),
        ],
    )
    .await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let started = std::time::Instant::now();
    let spin = job("spin", "hostile-spin", "x");
    broker.ask(&q, spin, &replies, "c-spin").await;
    broker
        .ask(&q, job("fine", "uppercase", "x"), &replies, "c-fine")
        .await;
    let got = replies.take(2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "one reply per job: retries are silent");
    assert_eq!(reply_to(&got, "c-spin").json()["error"]["kind"], "timeout");
    // Three attempts with 200 ms then 800 ms between them.
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    one_dead_letter(&broker, &q, "timeout").await;
    worker.stop().await;
}

/// A worker busy with a stream of uppercase jobs whose replies come back on
/// a reply queue. Its fields drop in order: the worker before its queues.
struct Busy {
    worker: WorkerProc,
    replies: Replies,
    _broker: Broker,
    /// Every job of the stream.
    ids: HashSet<String>,
    /// The replies taken by [`Busy::start`].
    first: Vec<Received>,
    q: TestQueue,
}

impl Busy {
    /// Starts a worker on a fresh queue `name`, publishes `n` jobs (confirms
    /// awaited at the end) and takes the first `answered` replies.
    async fn start(name: &str, n: usize, answered: usize) -> Self {
        let q = TestQueue::new(name);
        let broker = Broker::connect().await;
        let replies = broker.reply_queue().await;
        let worker = WorkerProc::spawn(&q, &[]).await;
        let jobs: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let id = format!("s{i}");
                let body = job(&id, "uppercase", &"x".repeat(200));
                (id, body)
            })
            .collect();
        broker.publish_many(&q, &jobs, &replies.name).await;
        let first = replies.take(answered, Duration::from_secs(60)).await;
        Self {
            worker,
            ids: jobs.into_iter().map(|(id, _)| id).collect(),
            first,
            replies,
            _broker: broker,
            q,
        }
    }

    /// Asserts that every job of the stream is answered, once.
    async fn assert_none_lost(&self) {
        self.replies
            .assert_all_answered(&self.ids, &self.first, Duration::from_secs(120))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let mut busy = Busy::start("kill9", 10_000, 2_000).await;
    busy.worker.kill9();
    busy.worker = WorkerProc::spawn(&busy.q, &[]).await;
    busy.assert_none_lost().await;
    busy.worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_busy_finishes_in_flight_and_exits_0() {
    let mut busy = Busy::start("sigterm", 3_000, 300).await;
    let status = busy.worker.stop().await;
    assert_eq!(status.code(), Some(0));
    // Nothing was lost: a new worker answers the rest.
    busy.worker = WorkerProc::spawn(&busy.q, &[]).await;
    busy.assert_none_lost().await;
    busy.worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_worker_is_live_but_not_ready() {
    let q = TestQueue::new("drain");
    let (worker, _broker) = broker::spinning(
        &q,
        &broker::PLUGINS,
        &[
            ("KILN__SANDBOX__LIMITS__TIMEOUT_MS", "3000"),
            ("KILN__SANDBOX__LIMITS__FUEL", "1000000000000"),
        ],
    )
    .await;
    // Stop the worker while the spinner runs.
    let stopped_at = std::time::Instant::now();
    worker.sigterm();
    assert!(
        worker.wait_ready(false, Duration::from_secs(2)).await,
        "/readyz stayed 200 while draining"
    );
    assert!(worker.live(), "/healthz must stay 200 while draining");
    let status = worker.exited().await;
    assert_eq!(status.code(), Some(0));
    // It waited for the in-flight job (its 3 s deadline), not the 30 s
    // shutdown timeout.
    let waited = stopped_at.elapsed();
    assert!(
        waited > Duration::from_secs(1) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_requeues_in_flight_jobs_and_exits_non_zero() {
    let q = TestQueue::new("sigterm2");
    let (worker, broker) = broker::spinning(
        &q,
        &broker::PLUGINS,
        &[
            // The spinner would run 30 s, and the drain would wait for it.
            ("KILN__SANDBOX__LIMITS__TIMEOUT_MS", "30000"),
            ("KILN__SANDBOX__LIMITS__FUEL", "100000000000000"),
            ("KILN__AMQP__SHUTDOWN_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    // Stop the worker twice while the spinner runs.
    let stopped_at = std::time::Instant::now();
    worker.sigterm();
    assert!(
        worker.wait_ready(false, Duration::from_secs(5)).await,
        "/readyz stayed 200 after the first SIGTERM"
    );
    assert!(worker.live(), "the first SIGTERM must drain, not exit");
    let status = worker.stop().await;
    let waited = stopped_at.elapsed();
    assert_ne!(status.code(), Some(0), "{status:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // Nothing lost: the job is back on its queue, redelivered.
    let got = broker.drain(&q, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the in-flight job was not requeued");
    assert_eq!(got[0].json()["job_id"], "spin");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_logs_its_settings_and_state_changes_at_info_by_default() {
    let q = TestQueue::new("logs");
    let worker = WorkerProc::spawn_with(
        &q,
        &["uppercase"],
        &[("RUST_LOG", ""), ("KILN__AMQP__PREFETCH", "7")],
    )
    .await;
    let port = worker.port();
    let (status, log) = worker.stop_with_log().await;
    assert_eq!(status.code(), Some(0), "{log}");
    let start = log
        .lines()
        .find(|l| l.contains("worker starting"))
        .unwrap_or_else(|| panic!("no start line in {log}"));
    for field in [
        format!("queue\":\"{}", q.name()),
        "shards\":1".to_owned(),
        "prefetch\":7".to_owned(),
        "concurrency\":2".to_owned(),
        "plugins\":\"uppercase@".to_owned(),
        "cache\":".to_owned(),
        format!("http\":\"127.0.0.1:{port}"),
    ] {
        assert!(start.contains(&field), "{field} not in {start}");
    }
    let mut at = 0;
    for state in [
        "\"connected\"",
        "\"ready\"",
        "\"draining\"",
        "\"drained\"",
        "\"worker stopped, exit\"",
    ] {
        let found = log[at..]
            .find(state)
            .unwrap_or_else(|| panic!("{state} missing or out of order in {log}"));
        at += found;
    }
}

/// A dead letter is logged at `warn` with its job id and kind, which the
/// default filter shows.
#[tokio::test(flavor = "multi_thread")]
async fn the_dead_letter_log_line_carries_the_job_id() {
    let q = TestQueue::new("deadlog");
    let worker = WorkerProc::spawn_with(&q, &["uppercase"], &[("RUST_LOG", "")]).await;
    let broker = Broker::connect().await;
    broker
        .publish(&q, job("dl-7", "no-such-plugin-c3", "x"), None, None)
        .await;
    let dead = broker.drain(&q.dead(), 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    let (status, log) = worker.stop_with_log().await;
    assert_eq!(status.code(), Some(0), "{log}");
    let lines = broker::log_lines(&log, "job dead-lettered");
    assert_eq!(lines.len(), 1, "{log}");
    let fields = &lines[0]["fields"];
    assert_eq!(fields["job_id"], "dl-7", "{log}");
    assert_eq!(fields["kind"], "unknown-plugin", "{log}");
    assert_eq!(lines[0]["level"], "WARN", "{log}");
}

/// `kiln enqueue` stamps each job with its publish time, and the worker
/// observes how long each waited in `kiln_job_queue_wait_seconds`; a job
/// without a timestamp is not observed.
#[tokio::test(flavor = "multi_thread")]
async fn enqueued_jobs_are_timestamped_and_their_queue_wait_observed() {
    let q = TestQueue::new("queuewait");
    let worker = WorkerProc::spawn_with(&q, &["uppercase"], &[]).await;
    let count = "kiln_job_queue_wait_seconds_count{plugin=\"uppercase\"}";
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    broker
        .ask(&q, job("no-stamp", "uppercase", "x"), &replies, "no-stamp")
        .await;
    assert_eq!(replies.take(1, Duration::from_secs(20)).await.len(), 1);
    assert_eq!(
        broker::metric(&worker, count),
        None,
        "no timestamp, no wait"
    );

    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"job_id":"w{i}","plugin":"uppercase","input":"x"}}"#))
        .collect();
    std::fs::write(&jobs, lines.join("\n")).unwrap();
    let out = dir.path().join("replies.jsonl");
    let status = broker::enqueue(&q, &jobs, &out).status().unwrap();
    assert!(status.success());
    assert_eq!(broker::metric(&worker, count), Some(5.0));
    // Taken at once: each waited well under half a minute (a wait read
    // from a timestamp in the wrong unit would not).
    let quick = "kiln_job_queue_wait_seconds_bucket{le=\"30.0\",plugin=\"uppercase\"}";
    assert_eq!(broker::metric(&worker, quick), Some(5.0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_closed_by_the_broker_reconnects_and_loses_nothing() {
    let busy = Busy::start("closeconn", 5_000, 500).await;
    broker::close_connection(&busy.worker.connection_name);
    // Not ready while disconnected, ready again after the reconnect.
    assert!(
        busy.worker.wait_ready(false, Duration::from_secs(10)).await,
        "readyz stayed true during the outage"
    );
    assert!(
        busy.worker.wait_ready(true, Duration::from_secs(30)).await,
        "worker did not come back"
    );
    busy.assert_none_lost().await;
    busy.worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_wait_end_to_end_and_resumed_after_sigkill() {
    let q = TestQueue::new("enqueue");
    let worker = WorkerProc::spawn(&q, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                r#"{{"job_id":"e{i}","plugin":"uppercase","input":"{}"}}"#,
                "y".repeat(200)
            )
        })
        .collect();
    std::fs::write(&jobs, lines.join("\n")).unwrap();
    let out = dir.path().join("replies.jsonl");

    // First run: killed halfway through.
    let mut first = broker::enqueue(&q, &jobs, &out).spawn().unwrap();
    let killed_at = broker::wait_for_lines(&out, 3_000, Duration::from_secs(60)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(killed_at < 10_000, "the first run should not have finished");

    // Re-run: exactly one row per job, none lost, none twice.
    let status = broker::enqueue(&q, &jobs, &out).status().unwrap();
    assert!(status.success());
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let unique_ids: HashSet<&str> = rows.iter().map(|r| r["job_id"].as_str().unwrap()).collect();
    assert_eq!(rows.len(), 10_000);
    assert_eq!(unique_ids.len(), 10_000);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_exhaustion_end_to_end() {
    let q = TestQueue::new("fuel");
    let worker = WorkerProc::spawn(&q, &[("KILN__SANDBOX__LIMITS__FUEL", "1000000")]).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    broker
        .ask(&q, job("f", "hostile-spin", "x"), &replies, "f")
        .await;
    let got = replies.take(1, Duration::from_secs(20)).await;
    let body = got[0].json();
    assert_eq!(body["error"]["kind"], "fuel-exhausted");
    assert_eq!(body["error"]["source"], "host");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_and_replay_after_a_fix() {
    let q = TestQueue::new("dlq");
    // The first worker lacks `reverse`: its jobs are dead-lettered.
    let worker = WorkerProc::spawn_with(&q, &["uppercase"], &[]).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    broker
        .publish_many(
            &q,
            &[
                ("r1".into(), job("r1", "reverse", "abc")),
                ("r2".into(), job("r2", "reverse", "xyz")),
            ],
            &replies.name,
        )
        .await;
    let first = replies.take(2, Duration::from_secs(20)).await;
    assert!(
        first
            .iter()
            .all(|r| String::from_utf8_lossy(&r.body).contains("unknown-plugin"))
    );
    worker.stop().await;

    let list = |args: &[&str]| {
        stdout_of(
            kiln()
                .args(["dlq", "--amqp-url", broker::URL, "--queue", &q])
                .args(args),
        )
    };
    let listed: Vec<serde_json::Value> = list(&["list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|l| l["kind"] == "unknown-plugin"
            && l["plugin"] == "reverse"
            && l["attempts"] == 1)
    );
    // Listing is idempotent: the letters are still there.
    assert_eq!(list(&["list", "--json"]).lines().count(), 2);

    // The fix is deployed: replay one, then the rest.
    let worker = WorkerProc::spawn_with(&q, &["uppercase", "reverse"], &[]).await;
    assert!(list(&["replay", "--job-id", "r1"]).contains("replayed r1"));
    assert!(list(&["replay", "--all", "--plugin", "reverse"]).contains("replayed r2"));
    assert_eq!(
        list(&["replay", "--all"]).lines().count(),
        0,
        "nothing left to replay"
    );
    let got = replies.take(2, Duration::from_secs(20)).await;
    let outputs: HashSet<String> = got
        .iter()
        .map(|r| r.json()["output"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outputs, HashSet::from(["cba".to_owned(), "zyx".to_owned()]));
    worker.stop().await;
}

/// Many tasks on several threads publish on one `Publisher`, half of them
/// `mandatory` to a queue that does not exist. Every routable message is
/// stored once and every unroutable one is returned once, with its own
/// body. lapin hands a returned message to whichever confirm it completes
/// next, often another publish's (a publisher that took the confirm's
/// returned message for its own got 362 to 442 of 4,000 wrong here), so
/// returns are counted, not attributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_on_one_channel_are_each_confirmed_and_returns_counted() {
    use kiln_broker::Publisher;
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::ShortString;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let conn = Connection::connect(broker::URL, ConnectionProperties::default())
        .await
        .unwrap();
    let admin = conn.create_channel().await.unwrap();
    // Deleted below, where the count is checked; the guard is for a failure.
    let present = TestQueue::new("confirms");
    let missing = unique("confirms-missing");
    broker::declare(&admin, &present, QueueDeclareOptions::default())
        .await
        .unwrap();
    let publisher = Publisher::start(conn.create_channel().await.unwrap())
        .await
        .unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4_000_u32 {
        let publisher = publisher.clone();
        let to = if i % 2 == 0 { present.name() } else { &missing }.to_owned();
        tasks.spawn(async move {
            let body = i.to_string().into_bytes();
            publisher
                .publish(&to, body, BasicProperties::default(), true)
                .await
                .unwrap()
        });
    }
    let mut returned = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Some(r) = done.unwrap() {
            assert_eq!(r.routing_key, missing);
            returned.push(String::from_utf8(r.body).unwrap().parse::<u32>().unwrap());
        }
    }
    let stored = admin
        .queue_delete(
            ShortString::from(present.name()),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    returned.sort_unstable();
    let odd: Vec<u32> = (0..4_000).filter(|i| i % 2 == 1).collect();
    assert_eq!(returned, odd, "every unroutable publish is returned once");
    assert_eq!(stored, 2_000, "every routable publish is stored once");
}

/// A test that panics with its `TestQueue` alive leaves none of its queues
/// behind: the guard deletes them while the test unwinds, here on a
/// current-thread runtime, whose one thread `Drop` must not need.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_test_leaves_no_queues_behind() {
    let (names_tx, names_rx) = tokio::sync::oneshot::channel();
    let failed = tokio::spawn(async move {
        let q = TestQueue::new("guard");
        let replies = q.durable_reply_queue().await;
        // Every queue a worker declares, as it declares them; the worker is
        // still running when the test fails (it goes first: declared later).
        let _worker = WorkerProc::spawn_with(&q, &["uppercase"], &[]).await;
        let names = q.all();
        let declared = [
            q.name().to_owned(),
            q.results(),
            q.dead(),
            format!("{q}.retry.1"),
            format!("{q}.retry.2"),
            replies,
        ];
        for name in &declared {
            assert!(names.contains(name), "{name} not in {names:?}");
            assert!(queue_exists(name).await, "{name} was not declared");
        }
        names_tx.send(names).unwrap();
        panic!("a test fails with its queues declared");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    let names = names_rx.await.unwrap();
    for name in &names {
        assert!(!queue_exists(name).await, "{name} was left behind");
    }
}

#[test]
fn kiln_run_verbose_shows_the_plugins_log_lines() {
    let plugins = kiln_integration_tests::plugin_dir(&["hostile-logflood"]);
    let cache = tempfile::tempdir().unwrap();
    let run = |verbose: bool| {
        let mut cmd = kiln();
        cmd.args([
            "run",
            "hostile-logflood",
            "--input",
            "x",
            "--config",
            "lines=2",
        ])
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--cache")
        .arg(cache.path())
        .env_remove("RUST_LOG");
        if verbose {
            cmd.arg("-v");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let quiet = run(false);
    assert!(!quiet.contains("flood          1"), "{quiet}");
    let verbose = run(true);
    assert!(verbose.contains("flood          1"), "{verbose}");
}

/// The `arguments` column of `rabbitmqctl list_queues` for `queue`, or
/// `None` when there is no such queue.
fn queue_arguments(queue: &str) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "arguments",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "rabbitmqctl list_queues");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (name, arguments) = l.trim().split_once(char::is_whitespace)?;
        (name == queue).then(|| arguments.trim().to_owned())
    })
}

/// The names of the queues whose name starts with `prefix`.
fn queues_named(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "--no-table-headers", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The topology Kiln declares for the test's jobs queue `q`.
fn topology_of(q: &TestQueue) -> kiln_broker::Topology {
    let config = kiln_broker::AmqpConfig {
        queue: q.name().to_owned(),
        ..kiln_broker::AmqpConfig::default()
    };
    kiln_broker::Topology::new(&config, &kiln_protocol::RetryPolicy::default())
}

async fn connection() -> lapin::Connection {
    lapin::Connection::connect(broker::URL, lapin::ConnectionProperties::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_results_queue_is_bounded_and_drops_its_oldest_reply() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{FieldTable, ShortString};

    let q = TestQueue::new("bounded");
    let conn = connection().await;
    topology_of(&q).declare(&conn).await.unwrap();
    let arguments = queue_arguments(&q.results()).expect("results queue declared");
    for wanted in [
        r#"{"x-message-ttl",86400000}"#,
        r#"{"x-max-length",100000}"#,
        r#"{"x-overflow","drop-head"}"#,
    ] {
        assert!(arguments.contains(wanted), "{wanted} not in {arguments}");
    }
    // The broker holds it to those arguments: without them, 406.
    let channel = conn.create_channel().await.unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    let unbounded = channel
        .queue_declare(
            ShortString::from(q.results()),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await;
    assert!(unbounded.is_err(), "redeclared without its bounds");
    // And a second declare (a second worker, enqueue, dlq) agrees.
    topology_of(&q).declare(&conn).await.unwrap();
    let _ = conn.close(200, ShortString::from("done")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_results_queue_of_an_older_kiln_is_used_as_it_is() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable, ShortString};

    let q = TestQueue::new("oldresults");
    // What an older Kiln declared: a quorum queue without bounds.
    let conn = connection().await;
    let channel = conn.create_channel().await.unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            ShortString::from(q.results()),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await
        .unwrap();
    // The declare shared by the worker, enqueue and dlq carries on...
    topology_of(&q).declare(&conn).await.unwrap();
    let arguments = queue_arguments(&q.results()).unwrap();
    assert!(!arguments.contains("x-max-length"), "{arguments}");
    // ...and so does a worker: it consumes and answers to that queue.
    let worker = WorkerProc::spawn(&q, &[]).await;
    let broker = Broker::connect().await;
    broker
        .publish(&q, job("o1", "reverse", "abc"), None, Some("c1"))
        .await;
    let got = broker.drain(&q.results(), 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["output"], "cba");
    worker.stop().await;
    let _ = conn.close(200, ShortString::from("done")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_enqueue_reply_queue_expires() {
    let q = TestQueue::new("expires");
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(&jobs, r#"{"job_id":"x1","plugin":"uppercase","input":"a"}"#).unwrap();
    let out = dir.path().join("replies.jsonl");
    // No worker: the run gives up waiting and leaves its reply queue.
    let status = kiln()
        .args([
            "enqueue",
            "--amqp-url",
            broker::URL,
            "--queue",
            &q,
            "--wait",
        ])
        .args(["--idle-timeout", "1", "--reply-expiry", "15"])
        .arg(&jobs)
        .arg("--out")
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "no worker, no reply");
    let prefix = format!("{q}.replies.");
    let left = queues_named(&prefix);
    assert_eq!(left.len(), 1, "{left:?}");
    let reply_queue = q.also(left[0].clone());
    let arguments = queue_arguments(&reply_queue).unwrap();
    assert!(arguments.contains(r#"{"x-expires",15000}"#), "{arguments}");
    // Unused, it goes away by itself (watched with rabbitmqctl: a passive
    // declare would count as a use and restart the expiry).
    let started = std::time::Instant::now();
    while !queues_named(&reply_queue).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{reply_queue} did not expire"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `kiln dlq --queue q ARGS`, asserts that it succeeded, and returns
/// its stdout and stderr.
fn dlq_cli(q: &TestQueue, args: &[&str]) -> (String, String) {
    let out = kiln()
        .args(["dlq", "--amqp-url", broker::URL, "--queue", q])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kiln dlq {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_job_whose_reply_queue_is_gone_answers_to_results() {
    let q = TestQueue::new("replaygone");
    let gone = q.durable_reply_queue().await;
    // The first worker lacks `reverse`: its jobs are dead-lettered.
    let worker = WorkerProc::spawn_with(&q, &["uppercase"], &[]).await;
    let broker = Broker::connect().await;
    for (id, input) in [("g1", "abc"), ("g2", "xyz")] {
        broker
            .publish(&q, job(id, "reverse", input), Some(&gone), Some(id))
            .await;
    }
    let first = broker.drain(&gone, 2, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 2, "both answered unknown-plugin");
    worker.stop().await;
    // The run that waited for them is over: its reply queue is deleted.
    broker::delete_queue(&gone).await;

    let worker = WorkerProc::spawn_with(&q, &["uppercase", "reverse"], &[]).await;
    let (stdout, stderr) = dlq_cli(&q, &["replay", "--job-id", "g1"]);
    assert!(stdout.contains("replayed g1"), "{stdout}");
    let told = format!(
        "job g1: its reply queue {gone} is gone, the reply goes to {}",
        q.results()
    );
    assert!(stderr.contains(&told), "{stderr}");
    let got = broker.drain(&q.results(), 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["output"], "cba");

    // --reply-to sends the reply where it says.
    let mine = q.durable_reply_queue().await;
    let (stdout, stderr) = dlq_cli(&q, &["replay", "--all", "--reply-to", &mine]);
    assert!(stdout.contains("replayed g2"), "{stdout}");
    assert!(!stderr.contains("is gone"), "{stderr}");
    let got = broker.drain(&mine, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["output"], "zyx");
    worker.stop().await;
}

mod shards;
