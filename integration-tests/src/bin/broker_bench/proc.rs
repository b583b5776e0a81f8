//! Child processes: the systems under test run in process groups of their
//! own (so that Celery's pool processes go with their parent), with their
//! output in a log file, and are always stopped: SIGTERM to the group,
//! then SIGKILL after a grace period, and SIGKILL on drop.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A child process leading its own process group.
pub(crate) struct Group {
    child: Option<Child>,
    what: String,
    log: PathBuf,
}

impl Group {
    /// Spawns `cmd` in a new process group, stdout and stderr to `log`.
    pub(crate) fn spawn(mut cmd: Command, what: &str, log: &Path) -> Result<Group> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what}: {cmd:?}"))?;
        Ok(Group {
            child: Some(child),
            what: what.to_owned(),
            log: log.to_owned(),
        })
    }

    /// `Ok` while the process runs; `Err` with its exit status and the end
    /// of its log once it has exited.
    pub(crate) fn alive(&mut self) -> std::result::Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Err(format!("{} was stopped", self.what));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); end of {}:\n{}",
                self.what,
                self.log.display(),
                tail(&self.log, 15)
            )),
            Err(e) => Err(format!("{}: {e}", self.what)),
        }
    }

    /// The CPU time (user + system) the leader has used so far, read from
    /// `/proc/<pid>/stat`; `None` off Linux or once it has exited.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        cpu_of(self.child.as_ref()?.id())
    }

    /// SIGTERM to the group, up to `grace` for the leader to exit, then
    /// SIGKILL to the group.
    pub(crate) async fn stop(mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id();
        signal_group(pgid, "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Whatever is left of the group (pool processes too) goes now.
        signal_group(pgid, "KILL");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), "KILL");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGname to the process group `pgid` (which this harness created).
fn signal_group(pgid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `cmd` to completion, killed after `timeout`, and returns its output.
pub(crate) async fn run(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {desc}"))?;
    let pgid = child.id();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(timeout, waiter).await {
        Ok(joined) => Ok(joined?.with_context(|| format!("running {desc}"))?),
        Err(_) => {
            signal_group(pgid, "KILL");
            bail!("{desc} did not finish within {timeout:?}; killed")
        }
    }
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The CPU time (user + system) process `pid` has used so far, read from
/// `/proc/<pid>/stat`; `None` off Linux or once it has exited.
pub(crate) fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields 14 and 15 (utime, stime) counted from the one after the
    // command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // In USER_HZ, which is 100 on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The CPU time used so far by every Erlang VM on this machine
/// (`beam.smp`: the local RabbitMQ), summed; `None` when there is none.
pub(crate) fn broker_cpu() -> Option<Duration> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "beam.smp"
            && let Some(cpu) = cpu_of(pid)
        {
            total = Some(total.unwrap_or(Duration::ZERO) + cpu);
        }
    }
    total
}
