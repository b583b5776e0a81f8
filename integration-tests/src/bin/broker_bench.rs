//! `broker-bench`: Kiln end to end on a real RabbitMQ, against the echo
//! ceiling and Celery.
//!
//! ```sh
//! cargo build --release -p kiln && cargo xtask plugins
//! cargo run --release -p kiln-integration-tests --bin broker-bench -- \
//!     --jobs 100000 --prefetch 32,64,128,256,512 --chart docs/broker-throughput.png
//! ```
//!
//! It measures end-to-end jobs/s and job latency (p50, p99) for N jobs
//! (default 100,000) of 200 bytes on the local broker, with a persistent
//! jobs queue of each type (quorum and classic), for each prefetch of the
//! sweep and each system under test:
//!
//! - **echo**: the ceiling, a bare lapin consumer with Kiln's discipline
//!   (publish the reply on a confirm channel, wait for the confirm, ack the
//!   delivery) and no work, in a process of its own (this binary again,
//!   hidden subcommand `__echo-consumer`), whose CPU per job from `/proc`
//!   is the floor Kiln's worker CPU per job is read against;
//! - **kiln**: `target/release/kiln worker --queue <Q> --prefetch P
//!   --concurrency P`, running the `uppercase` plugin;
//! - **celery**: Celery 5 (venv made by the harness), prefork pool of 2,
//!   `worker_prefetch_multiplier = P / 2`, result backend `rpc://`; its
//!   Python driver sends and times the tasks.
//!
//! For echo and Kiln one publisher (publisher confirms, at most 512
//! unconfirmed, persistent messages) and one reply consumer run in this
//! process; latency is reply received − publish. Every reply is checked.
//! Every run has its own queues (`kiln-bench-<pid>-<n>-<system>-<type>-p<P>`),
//! deleted after it; no run lasts more than `--run-timeout` (600 s), and a
//! run with no reply for `--stall-timeout` (30 s) reports its shortfall and
//! the harness moves on. Results go to a JSON file (`--out`); `--chart`
//! renders jobs/s against prefetch with `integration-tests/bench/chart.py`.
//! See `integration-tests/bench/README.md`.
//!
//! `--shards 1,2,4` repeats echo and Kiln on sharded jobs queues (`[amqp]
//! shards`): a consistent-hash exchange bound to `<q>.s0` … as Kiln
//! declares them, the publisher routing each job by its id; echo consumes
//! every shard on channels of its own. Every run also reports the broker's
//! CPU per job (all `beam.smp` processes, from `/proc/<pid>/stat`).

#[path = "broker_bench/amqp.rs"]
mod amqp;
#[path = "broker_bench/celery.rs"]
mod celery;
#[path = "broker_bench/echo.rs"]
mod echo;
#[path = "broker_bench/kiln.rs"]
mod kiln;
#[path = "broker_bench/proc.rs"]
mod proc;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use lapin::Connection;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use crate::celery::Celery;
use crate::kiln::Kiln;
use crate::proc::Group;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const FILLER: &str = "the quick brown fox jumps over the lazy dog ";

/// End-to-end jobs/s and latency on RabbitMQ: echo ceiling, Kiln, Celery.
#[derive(Parser, Debug)]
#[command(name = "broker-bench")]
struct Args {
    /// Jobs per run.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Jobs per Celery run (default: --jobs). Celery runs at about 1/20 of
    /// the others' rate, so a smaller N keeps a sweep short.
    #[arg(long)]
    celery_jobs: Option<usize>,
    /// Input bytes per job.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Prefetch values to sweep (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256,512")]
    prefetch: Vec<u16>,
    /// Systems under test (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "echo,kiln,celery")]
    systems: Vec<System>,
    /// Shard counts to sweep (comma-separated; `[amqp] shards`). Celery
    /// runs unsharded only.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    shards: Vec<u16>,
    /// Jobs queue types (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "quorum,classic")]
    queue_types: Vec<QueueType>,
    /// The broker (only the local broker is meant).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Most unconfirmed jobs the publisher has in flight.
    #[arg(long, default_value_t = 512)]
    max_unconfirmed: usize,
    /// The repository (default: the one this binary was built from).
    #[arg(long, default_value = REPO)]
    repo: PathBuf,
    /// The kiln binary [default: REPO/target/release/kiln].
    #[arg(long)]
    kiln_bin: Option<PathBuf>,
    /// Kiln's plugins directory, with uppercase.wasm (`cargo xtask plugins`)
    /// [default: REPO/plugins].
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Kiln's --concurrency (default: the run's prefetch).
    #[arg(long)]
    kiln_concurrency: Option<u32>,
    /// Kiln's tokio worker threads (`TOKIO_WORKER_THREADS`; default: one
    /// per CPU).
    #[arg(long)]
    kiln_threads: Option<usize>,
    /// RUST_LOG for the kiln worker.
    #[arg(long, default_value = "warn")]
    kiln_log: String,
    /// The Python venv for Celery and the chart (created when missing).
    #[arg(long, default_value = "/tmp/kiln-bench-venv")]
    venv: PathBuf,
    /// Celery acks a task on receipt instead of after it ran.
    #[arg(long)]
    celery_acks_early: bool,
    /// Who sends Celery's tasks: this harness's publisher (the same as for
    /// echo and Kiln; messages as `apply_async` makes them), or
    /// `integration-tests/bench/celery/driver.py` calling `apply_async`
    /// (one Python thread: at about 1,000 tasks/s it, not the worker, is
    /// then the bottleneck).
    #[arg(long, value_enum, default_value = "harness")]
    celery_client: CeleryClient,
    /// The JSON results file [default: REPO/target/broker-bench/results.json].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Render the chart (PNG) here, e.g. docs/broker-throughput.png.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Seconds without a reply before a run gives up.
    #[arg(long, default_value_t = 30)]
    stall_timeout: u64,
    /// Longest a run may last, in seconds.
    #[arg(long, default_value_t = 600)]
    run_timeout: u64,
    /// Seconds of quiet between runs.
    #[arg(long, default_value_t = 2)]
    settle: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum System {
    Echo,
    Kiln,
    Celery,
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Echo => "echo",
            System::Kiln => "kiln",
            System::Celery => "celery",
        })
    }
}

/// Who publishes Celery's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CeleryClient {
    Harness,
    ApplyAsync,
}

/// The type of the jobs queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum QueueType {
    Quorum,
    Classic,
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        })
    }
}

/// The jobs of one run: ids `<tag>-<i>`, inputs of `size` ASCII bytes
/// (`integration-tests/bench/celery/driver.py` makes the same ones).
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    tag: String,
    size: usize,
}

impl Workload {
    pub(crate) fn job_id(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    pub(crate) fn input(&self, i: usize) -> String {
        let mut text = format!("job {i:08} ");
        while text.len() < self.size {
            text.push_str(FILLER);
        }
        text.truncate(self.size);
        text
    }

    /// The job record: `{"job_id", "plugin": "uppercase", "input"}`.
    pub(crate) fn body(&self, i: usize) -> String {
        format!(
            r#"{{"job_id":"{}","plugin":"uppercase","input":"{}"}}"#,
            self.job_id(i),
            self.input(i)
        )
    }

    /// Celery's task message for job `i`, as `apply_async` sends it
    /// (protocol 2): the body `[args, kwargs, embed]` and the headers.
    pub(crate) fn celery_task(&self, i: usize) -> (String, FieldTable) {
        let id = self.job_id(i);
        let input = self.input(i);
        let body = format!(
            r#"[["{input}"], {{}}, {{"callbacks": null, "errbacks": null, "chain": null, "chord": null}}]"#
        );
        let s = |v: &str| AMQPValue::LongString(v.into());
        let mut h = FieldTable::default();
        h.insert("lang".into(), s("py"));
        h.insert("task".into(), s("tasks.upper"));
        h.insert("id".into(), s(&id));
        for key in ["shadow", "eta", "expires", "group", "group_index"] {
            h.insert(key.into(), AMQPValue::Void);
        }
        h.insert("retries".into(), AMQPValue::LongInt(0));
        h.insert(
            "timelimit".into(),
            AMQPValue::FieldArray(vec![AMQPValue::Void, AMQPValue::Void].into()),
        );
        h.insert("root_id".into(), s(&id));
        h.insert("parent_id".into(), AMQPValue::Void);
        h.insert("argsrepr".into(), s(&format!("('{input}',)")));
        h.insert("kwargsrepr".into(), s("{}"));
        h.insert("origin".into(), s("broker-bench"));
        h.insert("ignore_result".into(), AMQPValue::Boolean(false));
        h.insert("replaced_task_nesting".into(), AMQPValue::LongInt(0));
        h.insert("stamped_headers".into(), AMQPValue::Void);
        h.insert(
            "stamps".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        (body, h)
    }

    /// The job index of a correlation id of this workload.
    pub(crate) fn index_of(&self, correlation_id: &str) -> Option<usize> {
        correlation_id
            .strip_prefix(self.tag.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }
}

/// One measured run.
#[derive(Debug, Serialize)]
struct RunResult {
    system: System,
    queue_type: QueueType,
    /// Unacknowledged deliveries allowed to the system under test (per
    /// shard: each shard's channel has its own window).
    prefetch: u16,
    /// Jobs queues the jobs were spread over (1: unsharded).
    shards: u16,
    /// Jobs published.
    jobs: usize,
    /// Distinct jobs answered.
    received: u64,
    /// Every job answered, no wrong reply.
    complete: bool,
    errors: u64,
    duplicates: u64,
    /// First publish to last reply.
    seconds: f64,
    jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// First publish to last publisher confirm (Celery: last apply_async).
    publish_seconds: f64,
    /// Echo and Kiln: the consumer process's CPU time (user + system)
    /// during the load, per job answered (for echo, the floor).
    worker_cpu_us_per_job: Option<f64>,
    /// The broker's (every `beam.smp`'s) CPU time during the load, per job
    /// answered: a job is two messages in and out (the job, its reply).
    broker_cpu_us_per_job: Option<f64>,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Skipped {
    system: System,
    queue_type: QueueType,
    prefetch: u16,
    shards: u16,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Report {
    /// Seconds since the Unix epoch when the report was written.
    written_at: u64,
    command: String,
    jobs: usize,
    celery_jobs: usize,
    size: usize,
    max_unconfirmed: usize,
    cpus: usize,
    rabbitmq_version: Option<String>,
    celery_version: Option<String>,
    kiln: Option<String>,
    interrupted: bool,
    results: Vec<RunResult>,
    skipped: Vec<Skipped>,
}

enum Outcome {
    Done(RunResult),
    Skip(String),
}

/// The systems' availability, decided once.
struct Bench {
    args: Args,
    admin: Connection,
    kiln: std::result::Result<Kiln, String>,
    celery: std::result::Result<Celery, String>,
    bench_dir: PathBuf,
    log_dir: PathBuf,
    pid: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(echo::SUBCOMMAND) {
        return echo::serve(&argv[2..]).await;
    }
    let mut args = Args::parse();
    let repo = args.repo.clone();
    let out = args
        .out
        .get_or_insert_with(|| repo.join("target/broker-bench/results.json"))
        .clone();
    let kiln_bin = args
        .kiln_bin
        .get_or_insert_with(|| repo.join("target/release/kiln"))
        .clone();
    let plugins = args
        .plugins
        .get_or_insert_with(|| repo.join("plugins"))
        .clone();
    let pid = std::process::id();
    let out_dir = out
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let log_dir = out_dir.join(format!("logs-{pid}"));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let bench_dir = repo.join("integration-tests/bench");

    let admin = amqp::connect(&args.amqp_url, "kiln-bench-admin").await?;

    let kiln = if args.systems.contains(&System::Kiln) {
        Kiln::probe(&kiln_bin, &plugins)
            .await
            .map_err(|e| format!("{e:#}"))
    } else {
        Err("not selected".into())
    };
    match &kiln {
        Ok(k) => eprintln!("broker-bench: kiln: {}", k.describe()),
        Err(e) if args.systems.contains(&System::Kiln) => {
            eprintln!("broker-bench: SKIPPING kiln: {e}")
        }
        Err(_) => {}
    }
    let need_venv = args.systems.contains(&System::Celery) || args.chart.is_some();
    let celery = if need_venv {
        Celery::setup(&args.venv, &bench_dir, &log_dir)
            .await
            .map_err(|e| format!("{e:#}"))
    } else {
        Err("not selected".into())
    };
    match &celery {
        Ok(c) => eprintln!(
            "broker-bench: celery {} in {}",
            c.version,
            args.venv.display()
        ),
        Err(e) if need_venv => eprintln!("broker-bench: SKIPPING celery and the chart: {e}"),
        Err(_) => {}
    }

    let mut report = Report {
        written_at: 0,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        jobs: args.jobs,
        celery_jobs: args.celery_jobs.unwrap_or(args.jobs),
        size: args.size,
        max_unconfirmed: args.max_unconfirmed,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        rabbitmq_version: rabbitmq_version().await,
        celery_version: celery.as_ref().ok().map(|c| c.version.clone()),
        kiln: kiln.as_ref().ok().map(Kiln::describe),
        interrupted: false,
        results: Vec::new(),
        skipped: Vec::new(),
    };
    let bench = Bench {
        args,
        admin,
        kiln,
        celery,
        bench_dir,
        log_dir,
        pid,
    };

    tokio::select! {
        () = bench.run_all(&mut report) => {}
        _ = tokio::signal::ctrl_c() => {
            eprintln!("broker-bench: interrupted; cleaning up");
            report.interrupted = true;
        }
    }

    report.written_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("broker-bench: results in {}", out.display());
    print_table(&report);

    bench.sweep().await;
    if let Some(chart) = &bench.args.chart {
        bench.chart(chart).await;
    }
    amqp::quietly(bench.admin.close(200, "OK".into())).await;
    Ok(())
}

impl Bench {
    async fn run_all(&self, report: &mut Report) {
        let mut seq = 0u32;
        for &shards in &self.args.shards {
            for &qt in &self.args.queue_types {
                for &prefetch in &self.args.prefetch {
                    for &system in &self.args.systems {
                        seq += 1;
                        eprintln!(
                            "broker-bench: {system} {qt} prefetch {prefetch} shards {shards} ..."
                        );
                        let outcome = self.run_one(system, qt, prefetch, shards.max(1), seq).await;
                        let outcome = outcome.unwrap_or_else(|e| Outcome::Skip(format!("{e:#}")));
                        let ran = matches!(outcome, Outcome::Done(_));
                        match outcome {
                            Outcome::Done(r) => {
                                eprintln!(
                                    "broker-bench: {system} {qt} prefetch {prefetch} shards {shards}: {}/{} jobs in \
                                 {:.2} s = {:.0} jobs/s, p50 {:.1} ms, p99 {:.1} ms{}{}{}",
                                    r.received,
                                    r.jobs,
                                    r.seconds,
                                    r.jobs_per_s,
                                    r.p50_ms,
                                    r.p99_ms,
                                    r.worker_cpu_us_per_job
                                        .map_or_else(String::new, |us| format!(
                                            ", worker CPU {us:.1} µs/job"
                                        )),
                                    r.broker_cpu_us_per_job
                                        .map_or_else(String::new, |us| format!(
                                            ", broker CPU {us:.1} µs/job"
                                        )),
                                    if r.notes.is_empty() {
                                        String::new()
                                    } else {
                                        format!(" [{}]", r.notes.join("; "))
                                    }
                                );
                                report.results.push(r);
                            }
                            Outcome::Skip(reason) => {
                                eprintln!(
                                    "broker-bench: SKIPPED {system} {qt} prefetch {prefetch}: {reason}"
                                );
                                report.skipped.push(Skipped {
                                    system,
                                    queue_type: qt,
                                    prefetch,
                                    shards,
                                    reason,
                                });
                            }
                        }
                        if ran {
                            tokio::time::sleep(Duration::from_secs(self.args.settle)).await;
                        }
                    }
                }
            }
        }
    }

    async fn run_one(
        &self,
        system: System,
        qt: QueueType,
        prefetch: u16,
        shards: u16,
        seq: u32,
    ) -> Result<Outcome> {
        let mut base = format!("kiln-bench-{}-{seq}-{system}-{qt}-p{prefetch}", self.pid);
        if shards > 1 {
            base.push_str(&format!("-s{shards}"));
        }
        let topology = sharded_topology(&base, qt, shards);
        let reply_queue = format!("{base}-reply");
        let workload = Workload {
            tag: format!("b{}r{seq}", self.pid),
            size: self.args.size,
        };
        let log = self.log_dir.join(format!("{base}.log"));
        let outcome = match system {
            System::Echo => {
                self.run_echo(qt, prefetch, &topology, &reply_queue, &workload, &log)
                    .await
            }
            System::Kiln => {
                self.run_kiln(qt, prefetch, &topology, &reply_queue, &workload, &log)
                    .await
            }
            System::Celery if shards > 1 => Ok(Outcome::Skip("celery runs unsharded only".into())),
            System::Celery => {
                self.run_celery(qt, prefetch, &base, &reply_queue, &workload, &log)
                    .await
            }
        };
        // The queues go whatever happened. Kiln also declares `<q>.dead`,
        // `<q>.results` and `<q>.retry.<n>`; Celery an exchange `<q>`.
        // Sharded, echo declares as Kiln does: every shard's queues and the
        // consistent-hash exchange.
        let mut queues = vec![base.clone(), reply_queue.clone()];
        if system == System::Kiln || shards > 1 {
            queues.push(topology.results.clone());
            for shard in topology.shards() {
                queues.push(shard.jobs.clone());
                queues.push(shard.dead.clone());
                queues.extend((1..=10).map(|n| format!("{}.retry.{n}", shard.jobs)));
            }
        }
        for q in &queues {
            if let Err(e) = amqp::delete_queue(&self.admin, q).await {
                eprintln!("broker-bench: {e:#}");
            }
        }
        if (system == System::Celery || shards > 1)
            && let Err(e) = amqp::delete_exchange(&self.admin, &base).await
        {
            eprintln!("broker-bench: {e:#}");
        }
        outcome
    }

    fn spec<'a>(
        &'a self,
        topology: Option<&'a kiln_broker::Topology>,
        jobs_queue: &'a str,
        reply_queue: &'a str,
        workload: &'a Workload,
        jobs: usize,
        format: amqp::Format,
    ) -> amqp::LoadSpec<'a> {
        amqp::LoadSpec {
            url: &self.args.amqp_url,
            jobs_queue,
            exchange: topology.and_then(kiln_broker::Topology::exchange),
            reply_queue,
            workload,
            jobs,
            max_unconfirmed: self.args.max_unconfirmed,
            stall: Duration::from_secs(self.args.stall_timeout),
            deadline: Duration::from_secs(self.args.run_timeout),
            format,
        }
    }

    async fn run_echo(
        &self,
        qt: QueueType,
        prefetch: u16,
        topology: &kiln_broker::Topology,
        reply_queue: &str,
        workload: &Workload,
        log: &Path,
    ) -> Result<Outcome> {
        let queue = topology.jobs.as_str();
        if topology.exchange().is_some() {
            topology
                .declare(&self.admin)
                .await
                .with_context(|| format!("declaring the shards of {queue}"))?;
        } else {
            amqp::declare_jobs_queue(&self.admin, queue, qt).await?;
        }
        amqp::declare_reply_queue(&self.admin, reply_queue).await?;
        // One process, one consumer (connection and channels) per shard.
        let consumed = topology.consumed();
        let queues: Vec<&str> = consumed.iter().map(|s| s.jobs.as_str()).collect();
        let mut echo = echo::EchoProcess::spawn(&self.args.amqp_url, &queues, prefetch, log)?;
        let last = queues.last().copied().unwrap_or(queue);
        if let Err(e) =
            amqp::wait_for_consumer(&self.admin, last, Duration::from_secs(60), || echo.alive())
                .await
        {
            let _ = echo.stop().await;
            return Ok(Outcome::Skip(format!("echo did not start: {e:#}")));
        }
        let cpu_before = echo.cpu_time();
        let broker_before = proc::broker_cpu();
        let load = amqp::run_load(&self.spec(
            Some(topology),
            queue,
            reply_queue,
            workload,
            self.args.jobs,
            amqp::Format::Echo,
        ))
        .await;
        let broker_cpu = cpu_since(broker_before, proc::broker_cpu());
        let cpu = cpu_since(cpu_before, echo.cpu_time());
        let alive = echo.alive();
        let stopped = echo.stop().await;
        let mut load = load?;
        if let Err(reason) = alive {
            load.notes.push(reason);
        }
        match stopped {
            Ok(0) => {}
            Ok(failures) => load.notes.push(format!(
                "echo: {failures} replies unconfirmed or acks failed"
            )),
            Err(reason) => load.notes.push(reason),
        }
        let mut result = result(System::Echo, qt, prefetch, self.args.jobs, load);
        result.shards = topology.shards().len().try_into().unwrap_or(u16::MAX);
        result.worker_cpu_us_per_job = per_job(cpu, result.received);
        result.broker_cpu_us_per_job = per_job(broker_cpu, result.received);
        Ok(Outcome::Done(result))
    }

    async fn run_kiln(
        &self,
        qt: QueueType,
        prefetch: u16,
        topology: &kiln_broker::Topology,
        reply_queue: &str,
        workload: &Workload,
        log: &Path,
    ) -> Result<Outcome> {
        let queue = topology.jobs.as_str();
        let shards = topology.shards();
        let kiln = match &self.kiln {
            Ok(k) => k,
            Err(reason) => return Ok(Outcome::Skip(reason.clone())),
        };
        amqp::declare_reply_queue(&self.admin, reply_queue).await?;
        let concurrency = self.args.kiln_concurrency.unwrap_or(u32::from(prefetch));
        let mut worker = kiln.spawn(
            &self.args.repo,
            &self.args.amqp_url,
            queue,
            qt,
            prefetch,
            concurrency,
            self.args.kiln_threads,
            &self.args.kiln_log,
            log,
            shards.len(),
        )?;
        // Kiln declares its queues; publish only once it consumes them all
        // (it consumes the last shard last).
        let last = shards.last().map_or(queue, |s| s.jobs.as_str());
        if let Err(e) = amqp::wait_for_consumer(&self.admin, last, Duration::from_secs(60), || {
            worker.alive()
        })
        .await
        {
            worker.stop(Duration::from_secs(5)).await;
            return Ok(Outcome::Skip(format!("kiln worker did not start: {e:#}")));
        }
        let mut notes = Vec::new();
        match queue_type_of(last).await {
            Some(t) if t == qt.to_string() => {}
            Some(t) => {
                worker.stop(Duration::from_secs(5)).await;
                return Ok(Outcome::Skip(format!(
                    "kiln declared {queue} as a {t} queue, not {qt}"
                )));
            }
            None => notes.push(format!(
                "queue type not checked with rabbitmqctl (asked for {qt})"
            )),
        }
        let cpu_before = worker.cpu_time();
        let broker_before = proc::broker_cpu();
        let load = amqp::run_load(&self.spec(
            Some(topology),
            queue,
            reply_queue,
            workload,
            self.args.jobs,
            amqp::Format::Kiln,
        ))
        .await;
        let broker_cpu = cpu_since(broker_before, proc::broker_cpu());
        let cpu = cpu_since(cpu_before, worker.cpu_time());
        if let Err(reason) = worker.alive() {
            notes.push(reason);
        }
        worker.stop(Duration::from_secs(10)).await;
        let mut load = load?;
        load.notes.extend(notes);
        if concurrency != u32::from(prefetch) {
            load.notes.push(format!("kiln concurrency {concurrency}"));
        }
        if let Some(threads) = self.args.kiln_threads {
            load.notes.push(format!("kiln runtime threads {threads}"));
        }
        let mut result = result(System::Kiln, qt, prefetch, self.args.jobs, load);
        result.shards = shards.len().try_into().unwrap_or(u16::MAX);
        result.worker_cpu_us_per_job = per_job(cpu, result.received);
        result.broker_cpu_us_per_job = per_job(broker_cpu, result.received);
        Ok(Outcome::Done(result))
    }

    async fn run_celery(
        &self,
        qt: QueueType,
        prefetch: u16,
        queue: &str,
        reply_queue: &str,
        workload: &Workload,
        log: &Path,
    ) -> Result<Outcome> {
        let celery = match &self.celery {
            Ok(c) => c,
            Err(reason) => return Ok(Outcome::Skip(reason.clone())),
        };
        let jobs = self.args.celery_jobs.unwrap_or(self.args.jobs);
        // Two pool processes share the prefetch.
        let multiplier = (prefetch / 2).max(1);
        let mut worker: Group = celery.spawn_worker(
            &self.args.amqp_url,
            queue,
            qt,
            multiplier,
            !self.args.celery_acks_early,
            log,
        )?;
        if let Err(e) = amqp::wait_for_consumer(&self.admin, queue, Duration::from_secs(60), || {
            worker.alive()
        })
        .await
        {
            worker.stop(Duration::from_secs(5)).await;
            return Ok(Outcome::Skip(format!("celery worker did not start: {e:#}")));
        }
        let load = match self.args.celery_client {
            CeleryClient::Harness => {
                // The same publisher and reply consumer as for echo and Kiln.
                let spec = self.spec(
                    None,
                    queue,
                    reply_queue,
                    workload,
                    jobs,
                    amqp::Format::Celery,
                );
                match amqp::declare_reply_queue(&self.admin, reply_queue).await {
                    Ok(()) => amqp::run_load(&spec).await,
                    Err(e) => Err(e),
                }
            }
            CeleryClient::ApplyAsync => {
                let driver_log = log.with_extension("driver.log");
                celery
                    .drive(
                        &self.args.amqp_url,
                        queue,
                        reply_queue,
                        qt,
                        jobs,
                        self.args.size,
                        &workload.tag,
                        Duration::from_secs(self.args.stall_timeout),
                        Duration::from_secs(self.args.run_timeout),
                        &driver_log,
                    )
                    .await
                    .map(|d| amqp::LoadOutcome {
                        received: d.received,
                        errors: d.errors,
                        duplicates: d.duplicates,
                        foreign: 0,
                        seconds: d.seconds,
                        publish_seconds: d.publish_seconds,
                        latencies_us: d.latencies_us,
                        notes: d.notes,
                    })
            }
        };
        let alive = worker.alive();
        worker.stop(Duration::from_secs(10)).await;
        let mut load = load?;
        if self.args.celery_client == CeleryClient::ApplyAsync {
            load.notes
                .push("sent by driver.py (apply_async), one Python thread".into());
        }
        if let Err(reason) = alive {
            load.notes.push(reason);
        }
        if multiplier * 2 != prefetch {
            load.notes.push(format!(
                "celery prefetch is {} (2 × {multiplier})",
                multiplier * 2
            ));
        }
        if self.args.celery_acks_early {
            load.notes.push("celery acks on receipt".into());
        }
        Ok(Outcome::Done(result(
            System::Celery,
            qt,
            prefetch,
            jobs,
            load,
        )))
    }

    /// Deletes whatever this run left on the broker (the systems may have
    /// declared more, e.g. a dead-letter queue), when `rabbitmqctl` is here.
    async fn sweep(&self) {
        let prefix = format!("kiln-bench-{}-", self.pid);
        for (what, list) in [("queue", "list_queues"), ("exchange", "list_exchanges")] {
            let mut cmd = Command::new("rabbitmqctl");
            cmd.args([list, "-q", "--no-table-headers", "name"]);
            let Ok(out) = proc::run(cmd, Duration::from_secs(60)).await else {
                return;
            };
            if !out.status.success() {
                return;
            }
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let name = name.trim();
                if !name.starts_with(&prefix) {
                    continue;
                }
                let res = if what == "queue" {
                    amqp::delete_queue(&self.admin, name).await
                } else {
                    amqp::delete_exchange(&self.admin, name).await
                };
                match res {
                    Ok(()) => eprintln!("broker-bench: deleted leftover {what} {name}"),
                    Err(e) => eprintln!("broker-bench: {e:#}"),
                }
            }
        }
    }

    async fn chart(&self, chart: &Path) {
        let celery = match &self.celery {
            Ok(c) => c,
            Err(reason) => {
                eprintln!("broker-bench: no chart: {reason}");
                return;
            }
        };
        let mut cmd = Command::new(celery.python());
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(self.bench_dir.join("chart.py"))
            .args(&self.args.out)
            .arg(chart);
        match proc::run(cmd, Duration::from_secs(120)).await {
            Ok(out) if out.status.success() => {
                eprintln!("broker-bench: chart in {}", chart.display())
            }
            Ok(out) => eprintln!(
                "broker-bench: chart.py failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("broker-bench: chart.py: {e:#}"),
        }
    }
}

/// A run's figures from what its reply consumer saw.
fn result(
    system: System,
    queue_type: QueueType,
    prefetch: u16,
    jobs: usize,
    mut load: amqp::LoadOutcome,
) -> RunResult {
    load.latencies_us.sort_unstable();
    let pct = |p: f64| percentile(&load.latencies_us, p) as f64 / 1_000.0;
    if load.foreign > 0 {
        load.notes
            .push(format!("{} replies of another run", load.foreign));
    }
    RunResult {
        system,
        queue_type,
        prefetch,
        jobs,
        received: load.received,
        complete: load.received as usize == jobs && load.errors == 0,
        errors: load.errors,
        duplicates: load.duplicates,
        seconds: round(load.seconds, 3),
        jobs_per_s: if load.seconds > 0.0 {
            round(load.received as f64 / load.seconds, 1)
        } else {
            0.0
        },
        p50_ms: round(pct(50.0), 2),
        p99_ms: round(pct(99.0), 2),
        max_ms: round(pct(100.0), 2),
        publish_seconds: round(load.publish_seconds, 3),
        shards: 1,
        worker_cpu_us_per_job: None,
        broker_cpu_us_per_job: None,
        notes: load.notes,
    }
}

/// The jobs queue `base` as Kiln declares it with `[amqp] shards =
/// shards` and the default retry policy (unsharded for 0 and 1).
fn sharded_topology(base: &str, qt: QueueType, shards: u16) -> kiln_broker::Topology {
    let config = kiln_broker::AmqpConfig {
        queue: base.to_owned(),
        queue_type: match qt {
            QueueType::Quorum => kiln_broker::QueueType::Quorum,
            QueueType::Classic => kiln_broker::QueueType::Classic,
        },
        shards: shards.max(1),
        ..kiln_broker::AmqpConfig::default()
    };
    kiln_broker::Topology::new(&config, &kiln_protocol::RetryPolicy::default())
}

/// CPU time between two readings, when both were taken.
fn cpu_since(before: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    before.zip(after).map(|(a, b)| b.saturating_sub(a))
}

/// `cpu` per job answered, in µs (one decimal).
fn per_job(cpu: Option<Duration>, received: u64) -> Option<f64> {
    let cpu = cpu?;
    (received > 0).then(|| round(cpu.as_secs_f64() * 1e6 / received as f64, 1))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The type (`quorum`, `classic`) of a queue, when `rabbitmqctl` is here.
async fn queue_type_of(queue: &str) -> Option<String> {
    let mut cmd = Command::new("rabbitmqctl");
    cmd.args(["list_queues", "-q", "--no-table-headers", "name", "type"]);
    let out = proc::run(cmd, Duration::from_secs(60)).await.ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next().unwrap_or("").to_owned())
        })
}

/// `rabbitmqctl version`, when it is here.
async fn rabbitmq_version() -> Option<String> {
    let mut cmd = Command::new("rabbitmqctl");
    cmd.arg("version");
    let out = proc::run(cmd, Duration::from_secs(60)).await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The results as a Markdown table, for docs/BENCHMARKS.md.
fn print_table(report: &Report) {
    println!(
        "\n{} jobs of {} B (Celery: {}), publisher confirms, at most {} unconfirmed\n",
        report.jobs, report.size, report.celery_jobs, report.max_unconfirmed
    );
    println!(
        "| system | queue | shards | prefetch | jobs | seconds | jobs/s | p50 ms | p99 ms | worker CPU µs/job | broker CPU µs/job |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &report.results {
        println!(
            "| {} | {} | {} | {} | {}{} | {:.2} | {:.0} | {:.1} | {:.1} | {} | {} |",
            r.system,
            r.queue_type,
            r.shards,
            r.prefetch,
            r.received,
            if r.complete {
                String::new()
            } else {
                format!(" of {} (incomplete)", r.jobs)
            },
            r.seconds,
            r.jobs_per_s,
            r.p50_ms,
            r.p99_ms,
            r.worker_cpu_us_per_job
                .map_or_else(|| "–".to_owned(), |us| format!("{us:.1}")),
            r.broker_cpu_us_per_job
                .map_or_else(|| "–".to_owned(), |us| format!("{us:.1}"))
        );
    }
    // One line per system and reason, not per run.
    let mut reasons: Vec<(System, &str, usize)> = Vec::new();
    for s in &report.skipped {
        match reasons
            .iter_mut()
            .find(|(sys, r, _)| *sys == s.system && *r == s.reason)
        {
            Some(entry) => entry.2 += 1,
            None => reasons.push((s.system, &s.reason, 1)),
        }
    }
    for (system, reason, runs) in reasons {
        let s = if runs == 1 { "" } else { "s" };
        println!("\nskipped {system} ({runs} run{s}): {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_stable() {
        let w = Workload {
            tag: "b1r2".into(),
            size: 200,
        };
        assert_eq!(w.input(7).len(), 200);
        assert!(w.input(7).starts_with("job 00000007 the quick"));
        assert_eq!(w.index_of(&w.job_id(42)), Some(42));
        assert_eq!(w.index_of("b1r3-42"), None);
        assert_eq!(w.index_of("b1r2-x"), None);
        let body: serde_json::Value = serde_json::from_str(&w.body(3)).unwrap_or_default();
        assert_eq!(body["plugin"], "uppercase");
        assert_eq!(body["input"].as_str().map(str::len), Some(200));
    }

    #[test]
    fn celery_task_is_apply_async_shaped() {
        let w = Workload {
            tag: "t".into(),
            size: 50,
        };
        let (body, headers) = w.celery_task(1);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(body[0][0].as_str(), Some(w.input(1).as_str()));
        assert!(body[1].as_object().is_some_and(|kw| kw.is_empty()));
        assert!(body[2]["chord"].is_null());
        let h = headers.inner();
        assert!(
            matches!(h.get("task"), Some(AMQPValue::LongString(t)) if t.to_string() == "tasks.upper")
        );
        assert!(matches!(h.get("id"), Some(AMQPValue::LongString(t)) if t.to_string() == "t-1"));
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
