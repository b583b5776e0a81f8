//! `kiln enqueue`: job records (a JSONL file, or a directory of text files)
//! published to the jobs queue with confirms ([`kiln_broker::enqueue`]),
//! each with the AMQP `timestamp` of its publish (the worker's
//! `kiln_job_queue_wait_seconds`); with `--wait`, every reply collected
//! into `--out`.
//!
//! A run is safe to interrupt and re-run: [`resume`] reads what the output
//! already answers (those jobs are not published again), and
//! [`reply_queue`] names the reply queue after the input, so a re-run
//! collects the replies that arrived while it was down.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kiln_broker::enqueue::{self, EnqueueOptions, OutgoingJob};
use kiln_broker::{Topology, TraceHeaders};

use super::BrokerArgs;
use crate::config::KilnConfig;

#[derive(Debug, Args)]
pub(super) struct EnqueueArgs {
    #[command(flatten)]
    pub(super) broker: BrokerArgs,
    /// A JSONL file of job records.
    #[arg(
        value_name = "FILE.jsonl",
        required_unless_present = "dir",
        conflicts_with = "dir"
    )]
    jobs: Option<PathBuf>,
    /// A directory of text files: one job per file, its name the job id.
    #[arg(long, value_name = "DIR", requires = "plugin")]
    dir: Option<PathBuf>,
    /// The plugin for --dir jobs.
    #[arg(long, value_name = "NAME")]
    plugin: Option<String>,
    /// Wait for every reply and write them to --out.
    #[arg(long, requires = "out")]
    wait: bool,
    /// Where --wait writes the replies as JSONL (appended to on a re-run).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Unconfirmed publishes allowed at once.
    #[arg(long, value_name = "N", default_value_t = 512)]
    window: usize,
    /// With --wait, give up after this many seconds without a reply.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_timeout: u64,
    /// With --wait, how long the reply queue survives unused (no run
    /// waiting on it): a re-run within this time still finds its replies.
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    reply_expiry: u64,
}

pub(super) async fn enqueue(
    args: EnqueueArgs,
    mut config: KilnConfig,
    trace: &dyn TraceHeaders,
) -> anyhow::Result<ExitCode> {
    use tracing::Instrument as _;

    args.broker.apply(&mut config);
    config.validate()?;
    let jobs = match (&args.jobs, &args.dir) {
        (Some(file), _) => jobs_from_file(file)?,
        (None, Some(dir)) => jobs_from_dir(dir, args.plugin.as_deref().unwrap_or_default())?,
        (None, None) => bail!("give a JSONL file or --dir DIR"),
    };
    let ids: HashSet<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
    if ids.len() != jobs.len() {
        bail!(
            "{} jobs but {} distinct job ids: job ids must be unique",
            jobs.len(),
            ids.len()
        );
    }
    let topology = Topology::new(&config.amqp, &config.pipeline.retry_policy());

    // Resume: what the output already answers is not published again.
    let answered = match args.out.as_deref().filter(|_| args.wait) {
        Some(out) => resume(out)?,
        None => HashSet::new(),
    };
    let reply_queue = args.wait.then(|| reply_queue(&topology.jobs, &jobs));
    let options = EnqueueOptions {
        url: config.amqp.url.clone(),
        window: args.window,
        reply_queue: reply_queue.clone(),
        reply_expires: Duration::from_secs(args.reply_expiry),
    };
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| indicatif::ProgressBar::new(jobs.len() as u64));
    // The root of the run's trace: each job's `publish` span is its child.
    let span = tracing::info_span!(
        "enqueue",
        otel.name = %format_args!("enqueue {}", topology.jobs),
        messaging.destination.name = %topology.jobs,
        kiln.jobs = jobs.len(),
    );
    let published = enqueue::publish_jobs(&options, &topology, &jobs, &answered, trace, || {
        if let Some(b) = &bar {
            b.inc(1);
        }
    })
    .instrument(span)
    .await
    .with_context(|| format!("cannot publish to {}", config.amqp.redacted_url()))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    eprintln!(
        "kiln: published {published} jobs to {} ({} already answered)",
        topology.jobs,
        answered.len()
    );
    let (Some(queue), Some(out)) = (reply_queue, args.out) else {
        return Ok(ExitCode::SUCCESS);
    };
    let waiting: HashSet<String> = ids.difference(&answered).cloned().collect();
    let wait = Wait {
        url: &config.amqp.url,
        queue: &queue,
        out: &out,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        progress: std::io::stderr().is_terminal(),
    };
    wait.collect(waiting).await
}

/// The jobs of a JSONL file, one per non-blank line.
fn jobs_from_file(file: &Path) -> anyhow::Result<Vec<OutgoingJob>> {
    Ok(std::fs::read(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| OutgoingJob::from_record(l.to_vec()))
        .collect())
}

/// One job per file of `dir` (in name order) for `plugin`: the file's name
/// is the job id, its text the input.
fn jobs_from_dir(dir: &Path, plugin: &str) -> anyhow::Result<Vec<OutgoingJob>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut jobs = Vec::with_capacity(files.len());
    for path in files {
        let input = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
        let job_id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let body = serde_json::to_vec(
            &serde_json::json!({"job_id": job_id, "plugin": plugin, "input": input}),
        )?;
        jobs.push(OutgoingJob {
            job_id,
            key: None,
            body,
        });
    }
    Ok(jobs)
}

/// The reply queue of a `--wait` run over `jobs` to `jobs_queue`:
/// `<jobs_queue>.replies.<hash>`, the hash of the job ids in order, so a
/// re-run over the same input finds the replies that arrived while it was
/// down, and another input never shares it.
fn reply_queue(jobs_queue: &str, jobs: &[OutgoingJob]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for j in jobs {
        h.update(j.job_id.as_bytes());
        // A separator: ids `ab`,`c` and `a`,`bc` hash apart.
        h.update([0]);
    }
    format!("{jobs_queue}.replies.{}", &hex::encode(h.finalize())[..16])
}

/// What a previous run's output already answers, and cuts a row left
/// incomplete by a kill (its job is waited for again). No file: nothing.
fn resume(out: &Path) -> anyhow::Result<HashSet<String>> {
    let text = match std::fs::read_to_string(out) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", out.display())),
    };
    let (answered, complete) = answered_in(&text);
    if complete < text.len() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .with_context(|| format!("cannot open {}", out.display()))?;
        file.set_len(complete as u64)
            .with_context(|| format!("cannot truncate {}", out.display()))?;
    }
    Ok(answered)
}

/// The job ids the complete rows of `text` (replies as JSONL) answer, and
/// the length of those rows: a last row without its newline was cut short
/// and does not count. Rows that are not replies are skipped.
fn answered_in(text: &str) -> (HashSet<String>, usize) {
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let ids = text[..complete]
        .lines()
        .filter_map(|line| serde_json::from_str::<kiln_protocol::Reply>(line).ok())
        .map(|reply| reply.job_id)
        .collect();
    (ids, complete)
}

/// Where and how long `--wait` collects replies.
struct Wait<'a> {
    url: &'a str,
    queue: &'a str,
    out: &'a Path,
    idle_timeout: Duration,
    /// Show a progress bar (stderr is a terminal).
    progress: bool,
}

/// The progress line of the `--wait` phase: replies in of `total` awaited,
/// how many of them failed (status not `ok`), and the time spent waiting.
fn wait_message(statuses: &BTreeMap<String, u64>, total: usize, elapsed: Duration) -> String {
    let answered: u64 = statuses.values().sum();
    let failed: u64 = statuses
        .iter()
        .filter(|(s, _)| s.as_str() != "ok")
        .map(|(_, n)| n)
        .sum();
    format!(
        "waiting: {answered}/{total} answered, {failed} failed, {}s",
        elapsed.as_secs()
    )
}

impl Wait<'_> {
    /// Appends the replies of `waiting` to the output, one row each, and
    /// says how it went: exit 1 if a job got no reply or failed.
    async fn collect(&self, waiting: HashSet<String>) -> anyhow::Result<ExitCode> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out)
            .with_context(|| format!("cannot open {}", self.out.display()))?;
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        let total = waiting.len();
        let started = std::time::Instant::now();
        let bar = self.progress.then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{wide_bar} {msg}") {
                bar.set_style(style);
            }
            bar.set_message(wait_message(&statuses, total, Duration::ZERO));
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        });
        let missing = enqueue::collect_replies(
            self.url,
            self.queue,
            waiting,
            self.idle_timeout,
            |_, body, reply| {
                // One write per row, so a kill cannot split a row.
                let mut row = Vec::with_capacity(body.len() + 1);
                row.extend_from_slice(body);
                row.push(b'\n');
                file.write_all(&row)?;
                let status = reply.map_or("unreadable", |r| r.status().as_str());
                *statuses.entry(status.to_owned()).or_default() += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                    b.set_message(wait_message(&statuses, total, started.elapsed()));
                }
                Ok(())
            },
        )
        .await
        .with_context(|| format!("cannot collect replies from {}", self.queue))?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        file.flush()?;
        let summary: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        eprintln!(
            "kiln: {} replies written to {} ({})",
            statuses.values().sum::<u64>(),
            self.out.display(),
            summary.join(", ")
        );
        if !missing.is_empty() {
            eprintln!(
                "kiln: {} jobs got no reply within {} s; re-run to keep waiting",
                missing.len(),
                self.idle_timeout.as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
        let failed = statuses
            .iter()
            .filter(|(s, _)| s.as_str() != "ok")
            .map(|(_, n)| n)
            .sum::<u64>();
        Ok(super::exit_code(failed > 0))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jobs(ids: &[&str]) -> Vec<OutgoingJob> {
        ids.iter()
            .map(|id| OutgoingJob {
                job_id: (*id).to_owned(),
                key: None,
                body: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn the_reply_queue_is_named_after_the_input() {
        let queue = reply_queue("kiln.jobs", &jobs(&["a", "b"]));
        let hash = queue.strip_prefix("kiln.jobs.replies.").unwrap();
        assert_eq!(hash.len(), 16, "{queue}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{queue}");
        // The same input (bodies aside), the same queue: a re-run finds it.
        let mut again = jobs(&["a", "b"]);
        again[0].body = b"{}".to_vec();
        assert_eq!(reply_queue("kiln.jobs", &again), queue);
        // Another input, another queue.
        for other in [
            reply_queue("kiln.jobs", &jobs(&["b", "a"])),
            reply_queue("kiln.jobs", &jobs(&["a", "b", "c"])),
            reply_queue("kiln.other", &jobs(&["a", "b"])),
            reply_queue("kiln.jobs", &jobs(&["ab"])),
        ] {
            assert_ne!(other, queue);
        }
        assert_ne!(
            reply_queue("q", &jobs(&["ab", "c"])),
            reply_queue("q", &jobs(&["a", "bc"]))
        );
    }

    fn reply(id: &str) -> String {
        serde_json::to_string(&kiln_protocol::Reply::error(
            id,
            "p",
            kiln_protocol::JobError::new(kiln_protocol::ErrorKind::Timeout, "slow"),
        ))
        .unwrap()
    }

    #[test]
    fn the_wait_progress_counts_answered_and_failed() {
        let mut statuses = BTreeMap::new();
        assert_eq!(
            wait_message(&statuses, 10, Duration::ZERO),
            "waiting: 0/10 answered, 0 failed, 0s"
        );
        statuses.insert("ok".to_owned(), 6);
        statuses.insert("error".to_owned(), 2);
        statuses.insert("unreadable".to_owned(), 1);
        assert_eq!(
            wait_message(&statuses, 10, Duration::from_millis(42_900)),
            "waiting: 9/10 answered, 3 failed, 42s"
        );
    }

    #[test]
    fn complete_reply_rows_count_as_answered() {
        let text = format!(
            "{}\nnot a reply\n{}\n{}",
            reply("j1"),
            reply("j2"),
            reply("j3")
        );
        let (ids, complete) = answered_in(&text);
        let mut ids: Vec<_> = ids.into_iter().collect();
        ids.sort();
        // j3's row was cut short: not answered, and cut.
        assert_eq!(ids, ["j1", "j2"]);
        assert_eq!(&text[complete..], reply("j3"));
        assert_eq!(answered_in(""), (HashSet::new(), 0));
        assert_eq!(
            answered_in(&reply("j1")).1,
            0,
            "no newline: nothing complete"
        );
    }

    #[test]
    fn resume_cuts_a_partial_row_and_skips_what_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("replies.jsonl");
        assert!(resume(&out).unwrap().is_empty(), "no output yet");
        let whole = format!("{}\n{}\n", reply("j1"), reply("j2"));
        std::fs::write(&out, format!("{whole}{{\"job_id\":\"j3\",\"out")).unwrap();
        let answered = resume(&out).unwrap();
        assert_eq!(answered, HashSet::from(["j1".to_owned(), "j2".to_owned()]));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), whole);
        // Resuming again changes nothing.
        assert_eq!(resume(&out).unwrap(), answered);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), whole);
    }
}
