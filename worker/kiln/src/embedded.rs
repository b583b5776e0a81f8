//! The embedded default: a JSONL file of job records pushed through the
//! same pipeline and outcome table as the broker consumer, with an
//! in-process queue and bounded concurrency. No broker needed.
//!
//! A reader task hands out jobs in small chunks to `concurrency` worker
//! tasks, and a writer task writes the replies as JSONL in completion order
//! (each carries its `job_id`). Chunks keep the cross-thread wake-ups to a
//! few per chunk instead of several per job: at tens of thousands of jobs a
//! second the scheduler, not wasm, would otherwise be the cost. Retryable
//! outcomes wait out the policy's backoff in a timer task, off the workers,
//! and come back through a retry queue; dead letters go to their own JSONL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::{Disposition, Envelope, Handled};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::pipeline::Pipeline;

/// Jobs handed to a worker at once. Small enough that a slow job delays few
/// others, large enough to amortize the hand-off.
const CHUNK: usize = 16;

/// A job waiting for its next attempt.
struct Pending {
    body: Vec<u8>,
    attempt: u32,
}

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

    fn record(&mut self, done: &Done) {
        self.jobs += 1;
        self.retries += u64::from(done.attempts.saturating_sub(1));
        let outcome = match done.handled.error {
            Some(kind) => kind.as_str(),
            None => done.handled.reply.status().as_str(),
        };
        *self.outcomes.entry(outcome.to_owned()).or_default() += 1;
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
    /// `n` more jobs answered.
    fn inc(&mut self, n: u64);
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
    let workers = concurrency.max(1);
    let (job_tx, job_rx) = async_channel::bounded::<Vec<Pending>>(workers * 2);
    let (retry_tx, retry_rx) = async_channel::unbounded::<Pending>();
    let (done_tx, mut done_rx) = mpsc::channel::<Vec<Done>>(workers * 4);
    let (total_tx, mut total_rx) = oneshot::channel::<std::io::Result<u64>>();
    let Io {
        jobs,
        mut replies,
        mut dead,
    } = io;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker(
            pipeline.clone(),
            job_rx.clone(),
            retry_rx.clone(),
            retry_tx.clone(),
            done_tx.clone(),
        ));
    }
    drop(done_tx);

    let reader = async move {
        let read = read_chunks(jobs, &job_tx).await;
        // The workers keep going while retries are pending; the writer
        // knows when everything is answered.
        let _ = total_tx.send(read);
    };

    let writer = async {
        let mut summary = Summary::default();
        let mut total: Option<u64> = None;
        while total.is_none_or(|t| summary.jobs < t) {
            let batch = tokio::select! {
                batch = done_rx.recv() => batch,
                read = &mut total_rx, if total.is_none() => {
                    total = Some(read.unwrap_or(Ok(0))?);
                    continue;
                }
            };
            // Workers only stop once everything is answered, so a closed
            // channel here means they are gone: stop rather than hang.
            let Some(batch) = batch else { break };
            for done in &batch {
                replies.write_all(&done.handled.encoded).await?;
                replies.write_all(b"\n").await?;
                summary.record(done);
                if matches!(done.handled.disposition, Disposition::ReplyAndDeadLetter) {
                    summary.dead_lettered += 1;
                    dead.write_all(&dead_letter(done)).await?;
                    dead.write_all(b"\n").await?;
                }
            }
            progress.inc(batch.len() as u64);
        }
        replies.flush().await?;
        dead.flush().await?;
        progress.finish();
        std::io::Result::Ok(summary)
    };

    let ((), written) = tokio::join!(reader, writer);
    tasks.abort_all();
    let mut summary = written?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Reads non-blank lines into chunks of [`CHUNK`]; returns how many jobs.
async fn read_chunks<R>(
    jobs: R,
    job_tx: &async_channel::Sender<Vec<Pending>>,
) -> std::io::Result<u64>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut lines = jobs.split(b'\n');
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut count = 0;
    while let Some(line) = lines.next_segment().await? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        count += 1;
        chunk.push(Pending {
            body: line,
            attempt: 1,
        });
        if chunk.len() == CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if job_tx.send(full).await.is_err() {
                break;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = job_tx.send(chunk).await;
    }
    Ok(count)
}

/// Takes chunks (and retries, first) until the run ends, answering each job
/// or scheduling its retry.
async fn worker(
    pipeline: Arc<Pipeline>,
    jobs: async_channel::Receiver<Vec<Pending>>,
    retries: async_channel::Receiver<Pending>,
    retry_tx: async_channel::Sender<Pending>,
    done_tx: mpsc::Sender<Vec<Done>>,
) {
    loop {
        let chunk = tokio::select! {
            biased;
            Ok(retry) = retries.recv() => vec![retry],
            Ok(chunk) = jobs.recv() => chunk,
            // Input is exhausted: wait for retries only.
            Ok(retry) = retries.recv(), if jobs.is_closed() && jobs.is_empty() => vec![retry],
            else => return,
        };
        let mut done = Vec::with_capacity(chunk.len());
        for Pending { body, attempt } in chunk {
            let handled = pipeline.handle(&body, &Envelope::default(), attempt).await;
            match handled.disposition {
                Disposition::Retry {
                    next_attempt,
                    delay,
                } => {
                    tracing::warn!(job_id = %handled.job_id, attempt, ?delay, error = ?handled.error, "job will be retried");
                    let retry_tx = retry_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = retry_tx
                            .send(Pending {
                                body,
                                attempt: next_attempt,
                            })
                            .await;
                    });
                }
                Disposition::Reply | Disposition::ReplyAndDeadLetter => done.push(Done {
                    handled,
                    attempts: attempt,
                    body,
                }),
            }
        }
        if !done.is_empty() && done_tx.send(done).await.is_err() {
            return;
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
    fn inc(&mut self, n: u64) {
        self.done += n;
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
    fn inc(&mut self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

/// No progress output at all.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn inc(&mut self, _: u64) {}
    fn finish(&mut self) {}
}
