//! A `kiln worker` process of a test's: started on its own queue, health
//! port and plugins directory, stopped (or killed) by the test, and killed
//! when dropped.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::URL;
use crate::{kiln, plugin_dir};

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
    /// The client-provided name of its AMQP connection (see
    /// [`super::close_connection`]).
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
        let plugins = plugin_dir(plugins);
        let cache = tempfile::tempdir().unwrap();
        let mut worker = Self::start(url, queue, plugins.path(), cache.path(), env)
            .until_ready()
            .await;
        worker._dirs = vec![cache, plugins];
        worker
    }

    /// Waits (at most 60 s) until it is ready, and hands it back.
    pub async fn until_ready(self) -> Self {
        self.until_ready_within(Duration::from_secs(60)).await
    }

    /// Waits (at most `timeout`) until it is ready, and hands it back;
    /// fails at once if it exits first.
    pub async fn until_ready_within(mut self, timeout: Duration) -> Self {
        let started = Instant::now();
        while !self.ready() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("worker exited before it was ready ({status})");
            }
            assert!(started.elapsed() < timeout, "worker never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        Self::start_with_args(url, queue, plugins, cache, env, &[])
    }

    /// [`Self::start`] with more command-line arguments (before
    /// `worker`, e.g. `--config-file PATH`).
    pub fn start_with_args(
        url: &str,
        queue: &str,
        plugins: &Path,
        cache: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let connection_name = format!("{queue}-worker-{port}");
        let mut cmd = kiln();
        cmd.args(args)
            .args([
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
        // An empty `RUST_LOG` means the worker's own default filter, with
        // stderr kept for [`Self::stop_with_log`].
        if env.iter().any(|(k, v)| *k == "RUST_LOG" && v.is_empty()) {
            cmd.env_remove("RUST_LOG").stderr(Stdio::piped());
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
        self.get(path).is_some_and(|response| {
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
        })
    }

    /// The raw HTTP response to `GET path` on its HTTP port (what arrived
    /// within 5 s), or `None` when nothing did.
    pub fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port())).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        (!response.is_empty()).then_some(response)
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
    pub async fn stop(self) -> ExitStatus {
        self.sigterm();
        self.exited().await
    }

    /// SIGTERM, then waits for the exit status and what the worker wrote
    /// to stderr (empty unless it was started with an empty `RUST_LOG`).
    pub async fn stop_with_log(mut self) -> (ExitStatus, String) {
        let stderr = self.child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stderr) = stderr {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            }
            text
        });
        let status = self.stop().await;
        (status, reader.join().unwrap())
    }

    /// Waits (at most 60 s) for the exit status, sending no signal (a
    /// second SIGTERM would abort the drain).
    pub async fn exited(mut self) -> ExitStatus {
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
