//! Helpers for the broker tests: a worker process, a lapin client, and
//! `rabbitmqctl`.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A queue name no other test (or run) uses.
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
        .unwrap()
}

pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln-under-test"))
}

/// The plugins a test worker has by default.
pub const PLUGINS: [&str; 8] = [
    "uppercase",
    "reverse",
    "wordcount",
    "hostile-spin",
    "hostile-membomb",
    "hostile-panic",
    "hostile-hugeout",
    "hostile-fail",
];

/// A `kiln worker` process on its own queue and health port.
pub struct WorkerProc {
    child: Child,
    port: u16,
    pub connection_name: String,
    /// The plugins and cache directories the worker owns, if any.
    _dirs: Vec<tempfile::TempDir>,
}

impl WorkerProc {
    /// Starts a worker on `queue` and waits until it is ready.
    pub async fn spawn(queue: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_with(queue, &PLUGINS, env).await
    }

    /// Starts a worker with only `plugins` (crate names).
    pub async fn spawn_with(queue: &str, plugins: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_at(URL, queue, plugins, env).await
    }

    /// Starts a worker that reaches the broker at `url`.
    pub async fn spawn_at(url: &str, queue: &str, plugins: &[&str], env: &[(&str, &str)]) -> Self {
        let plugins = kiln_integration_tests::plugin_dir(plugins);
        let cache = tempfile::tempdir().unwrap();
        let mut worker = Self::start(url, queue, plugins.path(), cache.path(), env)
            .until_ready()
            .await;
        worker._dirs = vec![cache, plugins];
        worker
    }

    /// Waits (at most 60 s) until it is ready, and hands it back.
    pub async fn until_ready(self) -> Self {
        assert!(
            self.wait_ready(true, Duration::from_secs(60)).await,
            "worker never became ready"
        );
        self
    }

    /// Starts a worker process on `plugins` and `cache` (the caller's)
    /// without waiting for it (see `until_ready`). `OTEL_*` settings of the
    /// test's own environment are not passed on: only `env` sets them.
    pub fn start(
        url: &str,
        queue: &str,
        plugins: &Path,
        cache: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let connection_name = format!("{queue}-worker-{port}");
        let mut cmd = kiln();
        cmd.args([
            "worker",
            "--amqp-url",
            url,
            "--queue",
            queue,
            "--connection-name",
            &connection_name,
        ])
        .arg("--plugins")
        .arg(plugins)
        .arg("--cache")
        .arg(cache)
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .env("KILN__SANDBOX__LIMITS__MEMORY_BYTES", "33554432")
        .env("KILN__AMQP__RECONNECT_INITIAL_MS", "200")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        // Two job slots unless the test says otherwise.
        cmd.env("KILN__PIPELINE__CONCURRENCY", "2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().unwrap(),
            port,
            connection_name,
            _dirs: Vec::new(),
        }
    }

    /// The port of its HTTP endpoints (`/healthz`, `/readyz`, `/metrics`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/readyz` is 200.
    pub fn ready(&self) -> bool {
        self.answers_200("/readyz")
    }

    /// `/healthz` is 200.
    pub fn live(&self) -> bool {
        self.answers_200("/healthz")
    }

    fn answers_200(&self, path: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port())) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .is_err()
        {
            return false;
        }
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
    }

    /// Polls `/readyz` until it says `want`.
    pub async fn wait_ready(&self, want: bool, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.ready() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// SIGTERM, then waits (at most 60 s) for the exit status.
    pub async fn stop(mut self) -> ExitStatus {
        self.sigterm();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "worker did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One received message.
pub struct Received {
    pub body: Vec<u8>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    headers: Option<FieldTable>,
}

impl Received {
    /// The body, parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn job_id(&self) -> String {
        self.json()["job_id"].as_str().unwrap().to_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        match self.headers.as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::LongLongInt(n) => Some(n.to_string()),
            AMQPValue::LongInt(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn received(d: &lapin::message::Delivery) -> Received {
    Received {
        body: d.data.clone(),
        correlation_id: d
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        content_type: d
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        headers: d.properties.headers().clone(),
    }
}

/// A test's own connection.
pub struct Broker {
    _conn: Connection,
    channel: Channel,
}

/// A reply queue of the test's, consumed as replies arrive.
pub struct Replies {
    pub name: String,
    consumer: tokio::sync::Mutex<lapin::Consumer>,
}

impl Broker {
    pub async fn connect() -> Self {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            _conn: conn,
            channel,
        }
    }

    /// Closes the connection.
    #[allow(dead_code)] // Not every test binary closes its connections.
    pub async fn close(self) {
        let _ = self._conn.close(200, ShortString::from("done")).await;
    }

    /// A durable reply queue (deleted by `delete_all`'s caller pattern).
    pub async fn reply_queue(&self) -> Replies {
        let name = unique("replies");
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(
                ShortString::from(name.clone()),
                options,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = self
            .channel
            .basic_consume(
                ShortString::from(name.clone()),
                ShortString::from(name.clone()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Replies {
            name,
            consumer: tokio::sync::Mutex::new(consumer),
        }
    }

    pub async fn publish(
        &self,
        queue: &str,
        body: Vec<u8>,
        reply_to: Option<&str>,
        correlation: Option<&str>,
    ) {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(r) = reply_to {
            props = props.with_reply_to(ShortString::from(r.to_owned()));
        }
        if let Some(c) = correlation {
            props = props.with_correlation_id(ShortString::from(c.to_owned()));
        }
        self.publish_with(queue, body, props).await;
    }

    /// Publishes with `props` as given (message id, headers, ...) and
    /// waits for the confirm.
    pub async fn publish_with(&self, queue: &str, body: Vec<u8>, props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue.to_owned()),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Publishes many, with confirms awaited at the end.
    pub async fn publish_many(&self, queue: &str, jobs: &[(String, Vec<u8>)], reply_to: &str) {
        for (id, body) in jobs {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_reply_to(ShortString::from(reply_to.to_owned()))
                .with_correlation_id(ShortString::from(id.clone()));
            self.channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue.to_owned()),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
                .unwrap();
        }
        self.channel.wait_for_confirms().await.unwrap();
    }

    /// Takes up to `n` messages from `queue` within `timeout`.
    pub async fn drain(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let mut consumer = self
            .channel
            .basic_consume(
                ShortString::from(queue.to_owned()),
                ShortString::from(unique("drain")),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        take_from(&mut consumer, n, timeout).await
    }

    /// Deletes the jobs queue and every queue derived from it.
    pub async fn delete_all(&self, queue: &str) {
        for name in [
            queue.to_owned(),
            format!("{queue}.dead"),
            format!("{queue}.results"),
            format!("{queue}.retry.1"),
            format!("{queue}.retry.2"),
        ] {
            let _ = self
                .channel
                .queue_delete(ShortString::from(name), QueueDeleteOptions::default())
                .await;
        }
    }
}

impl Replies {
    /// Takes up to `n` replies within `timeout`.
    pub async fn take(&self, n: usize, timeout: Duration) -> Vec<Received> {
        take_from(&mut *self.consumer.lock().await, n, timeout).await
    }

    /// Takes replies until every id in `ids` not answered in `already` is.
    pub async fn take_until_ids(
        &self,
        ids: &HashSet<String>,
        already: &[Received],
        timeout: Duration,
    ) -> Vec<Received> {
        let mut missing: HashSet<String> = ids.clone();
        for r in already {
            missing.remove(&r.job_id());
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + timeout;
        while !missing.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            for r in self.take(missing.len().min(1_000), left).await {
                missing.remove(&r.job_id());
                got.push(r);
            }
        }
        got
    }

    /// Collects replies until every job in `ids` is answered (counting
    /// `already`), and asserts that none is missing.
    pub async fn assert_all_answered(
        &self,
        ids: &HashSet<String>,
        already: &[Received],
        timeout: Duration,
    ) {
        let rest = self.take_until_ids(ids, already, timeout).await;
        let answered: HashSet<String> = already
            .iter()
            .chain(rest.iter())
            .map(Received::job_id)
            .collect();
        let missing: Vec<_> = ids.difference(&answered).take(5).collect();
        assert!(
            missing.is_empty(),
            "{} of {} jobs unanswered, e.g. {missing:?}",
            ids.len() - answered.len().min(ids.len()),
            ids.len()
        );
        assert_eq!(&answered, ids, "replies for jobs that were never sent");
    }
}

/// Takes (and acks) up to `n` messages from `consumer` within `timeout`.
async fn take_from(consumer: &mut lapin::Consumer, n: usize, timeout: Duration) -> Vec<Received> {
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + timeout;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                got.push(received(&d));
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
            _ => break,
        }
    }
    got
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
