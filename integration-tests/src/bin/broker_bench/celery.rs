//! Celery 5, what users would pick instead: a venv made by the harness, a
//! prefork worker of 2 processes running `tasks.upper`, and the Python
//! driver (`integration-tests/bench/celery/driver.py`) that sends the tasks
//! and times every result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::QueueType;
use crate::proc::{self, Group};

/// The venv and the bench's Python files.
#[derive(Debug, Clone)]
pub(crate) struct Celery {
    venv: PathBuf,
    dir: PathBuf,
    /// `celery.__version__` in the venv.
    pub version: String,
}

impl Celery {
    /// Uses the venv at `venv` if it has Celery and matplotlib, else
    /// creates it and installs `bench_dir/requirements.txt` (pinned).
    pub(crate) async fn setup(venv: &Path, bench_dir: &Path, log_dir: &Path) -> Result<Celery> {
        let python = venv.join("bin/python");
        if let Some(version) = installed(&python).await {
            return Ok(Celery {
                venv: venv.to_owned(),
                dir: bench_dir.join("celery"),
                version,
            });
        }
        eprintln!(
            "broker-bench: creating the venv {} (python3 -m venv, pip install -r {})",
            venv.display(),
            bench_dir.join("requirements.txt").display()
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "venv"]).arg(venv);
        check(
            proc::run(cmd, Duration::from_secs(120)).await?,
            "python3 -m venv",
        )?;
        let mut cmd = Command::new(venv.join("bin/pip"));
        cmd.args(["install", "--disable-pip-version-check", "-r"])
            .arg(bench_dir.join("requirements.txt"));
        let out = proc::run(cmd, Duration::from_secs(600)).await?;
        let _ = std::fs::write(log_dir.join("pip-install.log"), &out.stdout);
        check(out, "pip install")?;
        let version = installed(&python)
            .await
            .context("celery and matplotlib do not import after pip install")?;
        Ok(Celery {
            venv: venv.to_owned(),
            dir: bench_dir.join("celery"),
            version,
        })
    }

    /// The venv's Python.
    pub(crate) fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }

    /// Starts `celery -A tasks worker --pool=prefork --concurrency=2 -Q
    /// <queue>` with `worker_prefetch_multiplier = prefetch / 2`.
    pub(crate) fn spawn_worker(
        &self,
        url: &str,
        queue: &str,
        qt: QueueType,
        multiplier: u16,
        acks_late: bool,
        log: &Path,
    ) -> Result<Group> {
        let mut cmd = Command::new(self.venv.join("bin/celery"));
        cmd.current_dir(&self.dir)
            .args(["-A", "tasks", "worker", "--pool=prefork", "--concurrency=2"])
            .args(["--loglevel=WARNING", "--without-gossip", "--without-mingle"])
            .arg("--without-heartbeat")
            .arg("-Q")
            .arg(queue)
            .arg("-n")
            .arg(format!("{queue}@%h"))
            .envs(env(url, queue, qt, multiplier, acks_late));
        Group::spawn(cmd, "celery worker", log)
    }

    /// Runs the driver: sends `jobs` tasks, collects every result.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn drive(
        &self,
        url: &str,
        queue: &str,
        reply_queue: &str,
        qt: QueueType,
        jobs: usize,
        size: usize,
        tag: &str,
        stall: Duration,
        deadline: Duration,
        log: &Path,
    ) -> Result<DriverResult> {
        let mut cmd = Command::new(self.python());
        cmd.current_dir(&self.dir)
            .arg("driver.py")
            .args(["--jobs", &jobs.to_string(), "--size", &size.to_string()])
            .args(["--reply-queue", reply_queue, "--tag", tag])
            .args(["--stall", &stall.as_secs_f64().to_string()])
            .args(["--timeout", &deadline.as_secs_f64().to_string()])
            // The driver declares no jobs queue: the multiplier is the worker's.
            .envs(env(url, queue, qt, 1, true));
        // The driver stops itself at `deadline`; this is the backstop.
        let out = proc::run(cmd, deadline + Duration::from_secs(120)).await?;
        let _ = std::fs::write(log, &out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
            bail!(
                "the Celery driver printed no result ({}); end of {}:\n{}",
                out.status,
                log.display(),
                proc::tail(log, 15)
            );
        };
        serde_json::from_str(line).with_context(|| format!("the driver's result: {line}"))
    }
}

/// What the driver prints as its last line.
#[derive(Debug, Deserialize)]
pub(crate) struct DriverResult {
    pub received: u64,
    pub errors: u64,
    pub duplicates: u64,
    pub seconds: f64,
    pub publish_seconds: f64,
    pub latencies_us: Vec<u64>,
    #[serde(default)]
    pub notes: Vec<String>,
}

fn env(
    url: &str,
    queue: &str,
    qt: QueueType,
    multiplier: u16,
    acks_late: bool,
) -> Vec<(&'static str, String)> {
    vec![
        // No __pycache__ in the source tree.
        ("PYTHONDONTWRITEBYTECODE", "1".to_owned()),
        ("KILN_BENCH_BROKER", url.to_owned()),
        ("KILN_BENCH_QUEUE", queue.to_owned()),
        ("KILN_BENCH_QUEUE_TYPE", qt.to_string()),
        ("KILN_BENCH_PREFETCH_MULTIPLIER", multiplier.to_string()),
        (
            "KILN_BENCH_ACKS_LATE",
            if acks_late { "1" } else { "0" }.to_owned(),
        ),
    ]
}

/// Celery's version, when the venv has both celery and matplotlib.
async fn installed(python: &Path) -> Option<String> {
    if !python.is_file() {
        return None;
    }
    let mut cmd = Command::new(python);
    cmd.args(["-c", "import celery, matplotlib; print(celery.__version__)"]);
    let out = proc::run(cmd, Duration::from_secs(60)).await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn check(out: std::process::Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
