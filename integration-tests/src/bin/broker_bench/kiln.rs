//! The Kiln system under test: `kiln worker` as a child process, consuming
//! the jobs queue it declares itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::QueueType;
use crate::proc::{self, Group};

/// What `kiln worker --help` says the binary accepts.
#[derive(Debug, Clone)]
pub(crate) struct Kiln {
    bin: PathBuf,
    plugins: PathBuf,
    prefetch_flag: bool,
    concurrency_flag: bool,
    queue_type_flag: bool,
    http_listen_flag: bool,
}

impl Kiln {
    /// Checks that `bin worker --help` works and that `plugins` holds
    /// `uppercase.wasm`; `Err` is the reason to skip Kiln.
    pub(crate) async fn probe(bin: &Path, plugins: &Path) -> Result<Kiln> {
        if !bin.is_file() {
            bail!(
                "{} not found (cargo build --release -p kiln)",
                bin.display()
            );
        }
        if !plugins.join("uppercase.wasm").is_file() {
            bail!(
                "{} has no uppercase.wasm (cargo xtask plugins)",
                plugins.display()
            );
        }
        let mut cmd = Command::new(bin);
        cmd.args(["worker", "--help"]);
        let out = proc::run(cmd, Duration::from_secs(30)).await?;
        let help = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "`{} worker --help` failed ({}): {}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
            );
        }
        for flag in ["--amqp-url", "--queue"] {
            if !help.contains(flag) {
                bail!("`kiln worker` has no {flag} flag");
            }
        }
        Ok(Kiln {
            bin: bin.to_owned(),
            plugins: plugins.to_owned(),
            prefetch_flag: help.contains("--prefetch"),
            concurrency_flag: help.contains("--concurrency"),
            queue_type_flag: help.contains("--queue-type"),
            http_listen_flag: help.contains("--http-listen"),
        })
    }

    /// How prefetch, concurrency and the queue type are passed, for the log.
    pub(crate) fn describe(&self) -> String {
        let how = |flag: bool, name: &str, env: &str| {
            if flag {
                format!("--{name}")
            } else {
                env.to_owned()
            }
        };
        format!(
            "{} ({}, {}, {})",
            self.bin.display(),
            how(self.prefetch_flag, "prefetch", "KILN__AMQP__PREFETCH"),
            how(
                self.concurrency_flag,
                "concurrency",
                "KILN__PIPELINE__CONCURRENCY"
            ),
            how(self.queue_type_flag, "queue-type", "KILN__AMQP__QUEUE_TYPE")
        )
    }

    /// Starts `kiln worker` on `queue`, its output in `log`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn(
        &self,
        cwd: &Path,
        url: &str,
        queue: &str,
        qt: QueueType,
        prefetch: u16,
        concurrency: u32,
        threads: Option<usize>,
        log_filter: &str,
        log: &Path,
        shards: usize,
    ) -> Result<Group> {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(cwd)
            .arg("worker")
            .arg("--amqp-url")
            .arg(url)
            .arg("--queue")
            .arg(queue)
            .arg("--plugins")
            .arg(&self.plugins)
            .env("RUST_LOG", log_filter);
        if let Some(threads) = threads {
            cmd.env("TOKIO_WORKER_THREADS", threads.to_string());
        }
        if self.prefetch_flag {
            cmd.arg("--prefetch").arg(prefetch.to_string());
        } else {
            cmd.env("KILN__AMQP__PREFETCH", prefetch.to_string());
        }
        if self.concurrency_flag {
            cmd.arg("--concurrency").arg(concurrency.to_string());
        } else {
            cmd.env("KILN__PIPELINE__CONCURRENCY", concurrency.to_string());
        }
        if self.http_listen_flag {
            // Health endpoints on loopback, any free port.
            cmd.arg("--http-listen").arg("127.0.0.1:0");
        }
        if self.queue_type_flag {
            cmd.arg("--queue-type").arg(qt.to_string());
        } else {
            cmd.env("KILN__AMQP__QUEUE_TYPE", qt.to_string());
        }
        if shards > 1 {
            cmd.env("KILN__AMQP__SHARDS", shards.to_string());
        }
        Group::spawn(cmd, "kiln worker", log)
    }
}
