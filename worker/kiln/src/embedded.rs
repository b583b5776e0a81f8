//! The embedded default: a JSONL file of job records pushed through the
//! same pipeline and outcome table as the broker consumer, with an
//! in-process queue and bounded concurrency. No broker needed.
//!
//! Replies are written as JSONL in completion order (each carries its
//! `job_id`). Retryable outcomes are retried after the policy's backoff
//! without holding a concurrency slot; dead letters go to their own JSONL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::{Disposition, Envelope};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

use crate::pipeline::{Handled, Pipeline};

/// One finished job, for the writer.
struct Done {
    handled: Handled,
    attempts: u32,
    /// The original record, kept for the dead-letter file.
    body: Vec<u8>,
}

/// Counts of what happened, for the summary.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    /// Jobs answered.
    pub jobs: u64,
    /// Replies by outcome: `ok`, `partial`, or the error kind.
    pub outcomes: BTreeMap<String, u64>,
    /// Jobs also written to the dead-letter file.
    pub dead_lettered: u64,
    /// Retries performed.
    pub retries: u64,
    /// Wall-clock seconds from the first read to the last write.
    pub seconds: f64,
}

impl Summary {
    /// Jobs answered per second.
    pub fn jobs_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.jobs as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Jobs whose reply is not `ok`.
    pub fn failed(&self) -> u64 {
        self.jobs - self.outcomes.get("ok").copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} jobs in {:.3} s ({:.0} jobs/s)",
            self.jobs,
            self.seconds,
            self.jobs_per_second()
        )?;
        for (outcome, n) in &self.outcomes {
            write!(f, ", {outcome}: {n}")?;
        }
        write!(
            f,
            ", retries: {}, dead-lettered: {}",
            self.retries, self.dead_lettered
        )
    }
}

/// Reports progress as jobs finish (a bar on a terminal, lines otherwise).
pub trait Progress: Send {
    /// One more job answered.
    fn inc(&mut self);
    /// All done.
    fn finish(&mut self);
}

/// Where the runner reads and writes.
pub struct Io<R, W, D> {
    /// The job records, one per line.
    pub jobs: R,
    /// Where replies go, one per line.
    pub replies: W,
    /// Where dead letters go, one per line.
    pub dead: D,
}

/// Runs every job of `jobs` through `pipeline`, `concurrency` at a time.
pub async fn run<R, W, D>(
    pipeline: Arc<Pipeline>,
    io: Io<R, W, D>,
    concurrency: usize,
    mut progress: impl Progress,
) -> std::io::Result<Summary>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
    D: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(concurrency.max(1) * 64);
    let Io {
        jobs,
        mut replies,
        mut dead,
    } = io;

    let reader = {
        let pipeline = pipeline.clone();
        let slots = slots.clone();
        async move {
            let mut lines = jobs.split(b'\n');
            while let Some(line) = lines.next_segment().await? {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (pipeline, slots, done_tx) = (pipeline.clone(), slots.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let done = attempt_until_final(&pipeline, &slots, permit, line).await;
                    // The writer only goes away when the run is over.
                    let _ = done_tx.send(done).await;
                });
            }
            std::io::Result::Ok(())
        }
    };

    let writer = async {
        let mut summary = Summary::default();
        while let Some(done) = done_rx.recv().await {
            replies.write_all(&done.handled.encoded).await?;
            replies.write_all(b"\n").await?;
            summary.jobs += 1;
            summary.retries += u64::from(done.attempts.saturating_sub(1));
            let outcome = match done.handled.error {
                Some(kind) => kind.as_str().to_owned(),
                None => done.handled.reply.status().as_str().to_owned(),
            };
            *summary.outcomes.entry(outcome).or_default() += 1;
            if matches!(done.handled.disposition, Disposition::ReplyAndDeadLetter) {
                summary.dead_lettered += 1;
                let record = dead_letter(&done);
                dead.write_all(&record).await?;
                dead.write_all(b"\n").await?;
            }
            progress.inc();
        }
        replies.flush().await?;
        dead.flush().await?;
        progress.finish();
        std::io::Result::Ok(summary)
    };

    let (read, written) = tokio::join!(reader, writer);
    read?;
    let mut summary = written?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Runs attempts until the outcome table says the job is answered. A retry
/// gives its slot back while it waits out the backoff.
async fn attempt_until_final(
    pipeline: &Pipeline,
    slots: &Arc<Semaphore>,
    mut permit: tokio::sync::OwnedSemaphorePermit,
    body: Vec<u8>,
) -> Done {
    let mut attempt = 1;
    loop {
        let handled = pipeline.handle(&body, &Envelope::default(), attempt).await;
        match handled.disposition {
            Disposition::Retry {
                next_attempt,
                delay,
            } => {
                tracing::warn!(job_id = %handled.job_id, attempt, ?delay, error = ?handled.error, "job will be retried");
                drop(permit);
                tokio::time::sleep(delay).await;
                permit = match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    // The semaphore is never closed; answer rather than hang.
                    Err(_) => {
                        return Done {
                            handled,
                            attempts: attempt,
                            body,
                        };
                    }
                };
                attempt = next_attempt;
            }
            Disposition::Reply | Disposition::ReplyAndDeadLetter => {
                drop(permit);
                return Done {
                    handled,
                    attempts: attempt,
                    body,
                };
            }
        }
    }
}

/// A dead-letter line: the original record, why, and after how many attempts.
fn dead_letter(done: &Done) -> Vec<u8> {
    let error = match &done.handled.reply.body {
        kiln_protocol::ReplyBody::Error(e) => serde_json::to_value(e).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    let record = serde_json::json!({
        "job_id": done.handled.job_id,
        "attempts": done.attempts,
        "error": error,
        "body": String::from_utf8_lossy(&done.body),
    });
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Plain-text progress for logs: a line every few seconds.
#[derive(Debug)]
pub struct PlainProgress {
    done: u64,
    started: Instant,
    last: Instant,
    every: Duration,
}

impl PlainProgress {
    /// A reporter that writes a line at most every `every`.
    pub fn new(every: Duration) -> Self {
        let now = Instant::now();
        Self {
            done: 0,
            started: now,
            last: now,
            every,
        }
    }
}

impl Progress for PlainProgress {
    fn inc(&mut self) {
        self.done += 1;
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64();
            eprintln!("kiln: {} jobs answered ({rate:.0} jobs/s)", self.done);
        }
    }
    fn finish(&mut self) {}
}

/// A progress bar for terminals.
#[derive(Debug)]
pub struct BarProgress(indicatif::ProgressBar);

impl BarProgress {
    /// A spinner with a count and rate (the total is not known up front).
    pub fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {pos} jobs answered ({per_sec}) {elapsed}",
        ) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }
}

impl Default for BarProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for BarProgress {
    fn inc(&mut self) {
        self.0.inc(1);
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

/// No progress output at all.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn inc(&mut self) {}
    fn finish(&mut self) {}
}
