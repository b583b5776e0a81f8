//! Helpers for the tests that run Kiln against the local RabbitMQ
//! (127.0.0.1:5672, guest/guest): a test's queues behind a guard that
//! deletes them ([`TestQueue`]), `kiln worker` processes ([`WorkerProc`]),
//! a test's own AMQP client ([`Broker`]), `kiln enqueue`, and
//! `rabbitmqctl`.
//!
//! Test helpers: a failure here is the test's failure, so they panic with
//! a message instead of returning errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod queues;
mod worker;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};

pub use client::{Broker, Received, Replies};
pub use queues::{TestQueue, delete_queue, queue_exists};
pub use worker::{PLUGINS, WorkerProc};

use crate::kiln;

/// The local broker, as the worker and the tests reach it.
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A name no other test (or run) uses, for a queue or a consumer tag; see
/// [`TestQueue`] for a jobs queue that is deleted after the test.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("kiln-test-{name}-{}-{nanos}", std::process::id())
}

/// A job for `plugin` with one `input`.
pub fn job(id: &str, plugin: &str, input: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"job_id": id, "plugin": plugin, "input": input}))
        .expect("a job serializes")
}

/// Declares `queue` with `options` on `channel`.
pub async fn declare(
    channel: &Channel,
    queue: &str,
    options: QueueDeclareOptions,
) -> lapin::Result<()> {
    channel
        .queue_declare(
            ShortString::from(queue.to_owned()),
            options,
            FieldTable::default(),
        )
        .await
        .map(drop)
}

/// Consumes `queue` on `channel`, under a consumer tag of its own.
pub async fn consume(channel: &Channel, queue: &str) -> lapin::Result<Consumer> {
    channel
        .basic_consume(
            ShortString::from(queue.to_owned()),
            ShortString::from(unique("consumer")),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Runs `rabbitmqctl ARGS -q` and asserts that it succeeded.
pub fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .arg("-q")
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// Closes one connection by its client-provided name, as an operator would.
pub fn close_connection(name: &str) {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let pid = listing
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {name} in {listing}"))
        .to_owned();
    let status = Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "test closes the connection"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `kiln enqueue --wait` of `jobs` into `out`.
pub fn enqueue(queue: &str, jobs: &Path, out: &Path) -> Command {
    let mut cmd = kiln();
    cmd.args([
        "enqueue",
        "--amqp-url",
        URL,
        "--queue",
        queue,
        "--wait",
        "--idle-timeout",
        "60",
    ])
    .arg(jobs)
    .arg("--out")
    .arg(out)
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    cmd
}

/// A worker on `queue` with `plugins` and `env`, running a `hostile-spin`
/// job (id `spin`, no reply queue) for half a second already: the setup of
/// the tests that stop or crowd a busy worker. `env` must give the spinner
/// the deadline and fuel it is to run for.
pub async fn spinning(queue: &str, plugins: &[&str], env: &[(&str, &str)]) -> (WorkerProc, Broker) {
    let worker = WorkerProc::spawn_with(queue, plugins, env).await;
    let broker = Broker::connect().await;
    broker
        .publish(queue, job("spin", "hostile-spin", "x"), None, None)
        .await;
    // Let the spinner start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (worker, broker)
}

/// The value of the sample line `series value` of an exposition, where
/// `series` is `name{labels}` as rendered.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the sample `series` on the worker's `/metrics`, if it has
/// one.
pub fn metric(worker: &WorkerProc, series: &str) -> Option<f64> {
    sample(&worker.get("/metrics")?, series)
}

/// The JSON log lines of `log` whose message is `message`.
pub fn log_lines(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

/// Waits until `path` has at least `n` lines; returns the count seen.
pub async fn wait_for_lines(path: &Path, n: usize, timeout: Duration) -> usize {
    let started = Instant::now();
    loop {
        let lines = std::fs::read_to_string(path)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= n || started.elapsed() > timeout {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
