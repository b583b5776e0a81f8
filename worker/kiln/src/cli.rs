//! The `kiln` command line. The `kiln` binary is [`main`]; the test suite
//! builds the same entry point as its own binary to drive it end to end.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::KilnConfig;
use crate::embedded::{self, BarProgress, Io, PlainProgress};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use kiln_protocol::{Job, Payload};
use tokio::io::{AsyncReadExt, BufReader, BufWriter};

/// Kiln: a sandboxed job worker for WebAssembly text plugins.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
struct Global {
    /// The plugins directory (every `*.wasm` in it is loaded) [config: plugins_dir]
    #[arg(long, global = true, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// The writable component cache directory [config: sandbox.cache.dir]
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// The worker config file (TOML) [default: /etc/kiln/kiln.toml if present]
    #[arg(long, global = true, value_name = "PATH")]
    config_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one job and print its reply, or a JSONL file of jobs (the
    /// embedded default: no broker needed).
    Run(RunArgs),
    /// List the plugins: name, version, size, cache state, exports, and
    /// the files that failed to load (exit 1 if any did).
    Plugins {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Ask a running `kiln worker` what it serves now (its
        /// `--http-listen` address, e.g. `http://127.0.0.1:9090`), hot
        /// reloads and reload errors included, instead of loading the
        /// plugins directory here.
        #[arg(long, value_name = "URL")]
        worker: Option<String>,
    },
    /// Compile every plugin into the cache, for image builds and init
    /// containers.
    Precompile {
        /// Directory to fill [default: the writable cache directory]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Consume jobs from RabbitMQ, run them, publish the replies (the
    /// container's entrypoint). Stops on SIGTERM/SIGINT after draining.
    Worker(WorkerArgs),
    /// Publish jobs to the jobs queue with confirms; with --wait, collect
    /// every reply. Safe to interrupt and re-run (see docs/PROTOCOL.md).
    Enqueue(EnqueueArgs),
    /// Inspect the effective config.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect the dead-letter queue, or replay it after a fix.
    Dlq {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Scaffold a new plugin (see docs/SDK.md).
    New {
        #[command(subcommand)]
        command: NewCommand,
    },
}

#[derive(Debug, Subcommand)]
enum NewCommand {
    /// A Rust plugin crate on the kiln-plugin SDK (Cargo.toml, NAME.toml,
    /// src/lib.rs, README.md) that `cargo build --release --target
    /// wasm32-wasip2` builds into a component.
    Plugin {
        /// The plugin's name: the crate's, the directory's, and the one jobs
        /// address.
        name: String,
        /// Also export `batch` (world batch-text-plugin).
        #[arg(long)]
        batch: bool,
        /// Where to create the crate's directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// The kiln-plugin crate to depend on by path [default: the one of
        /// the Kiln checkout DIR is in, else a git dependency]
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective config (defaults, then the file, then `KILN__*`
    /// variables) as TOML with secrets redacted, and warn about settings
    /// that will not fit the container. Exit 2 if it is invalid.
    Check,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show the dead letters (they stay in the queue): job id, plugin,
    /// kind, message, attempts and age.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the jobs queue with a reset attempt count.
    Replay {
        /// Only this job.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        job_id: Option<String>,
        /// Every dead letter (narrowed by --plugin).
        #[arg(long)]
        all: bool,
        /// Only jobs for this plugin.
        #[arg(long, value_name = "NAME")]
        plugin: Option<String>,
    },
}

#[derive(Debug, Args)]
struct EnqueueArgs {
    #[command(flatten)]
    broker: BrokerArgs,
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
}

/// Broker options shared by `worker`, `enqueue` and `dlq`.
#[derive(Debug, Args)]
struct BrokerArgs {
    /// The AMQP URL [config: amqp.url]
    #[arg(long, value_name = "URL")]
    amqp_url: Option<String>,
    /// The jobs queue; every other queue name derives from it [config: amqp.queue]
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
}

impl BrokerArgs {
    fn apply(&self, config: &mut KilnConfig) {
        if let Some(url) = &self.amqp_url {
            config.amqp.url = url.clone();
        }
        if let Some(queue) = &self.queue {
            config.amqp.queue = queue.clone();
        }
    }
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Deliveries in flight per worker (basic.qos) [config: amqp.prefetch]
    #[arg(long, value_name = "N")]
    prefetch: Option<u16>,
    /// Jobs run at once [config: pipeline.concurrency; default: one per CPU]
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Address of /healthz and /readyz [config: http.listen]
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    /// The connection name shown by the broker [config: amqp.connection_name]
    #[arg(long, value_name = "NAME")]
    connection_name: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The plugin to run the input through.
    #[arg(required_unless_present = "jobs", conflicts_with = "jobs")]
    plugin: Option<String>,
    /// The input text (default: read stdin).
    #[arg(long, conflicts_with_all = ["file", "jobs"])]
    input: Option<String>,
    /// Read the input from a file.
    #[arg(long, value_name = "PATH", conflicts_with = "jobs")]
    file: Option<PathBuf>,
    /// The job's config, served to the plugin by `get-config` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// A semver requirement on the plugin's version.
    #[arg(long, value_name = "REQ")]
    plugin_version: Option<semver::VersionReq>,
    /// A deadline shorter than the configured one, in milliseconds.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// A JSONL file of job records to push through the pipeline.
    #[arg(long, value_name = "FILE.jsonl")]
    jobs: Option<PathBuf>,
    /// Where to write the replies as JSONL [default: stdout].
    #[arg(long, value_name = "FILE", requires = "jobs")]
    out: Option<PathBuf>,
    /// Where to write dead letters as JSONL [default: <out>.dead.jsonl, or stderr].
    #[arg(long, value_name = "FILE", requires = "jobs")]
    dead: Option<PathBuf>,
    /// Jobs at once [config: pipeline.concurrency; default: one per CPU].
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `new` needs no config (nor a valid one).
    if let Command::New { command } = &cli.command {
        return new(command);
    }
    let config = match load_config(&cli.global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            return ExitCode::from(2);
        }
    };
    let telemetry = crate::telemetry::init(&config.log);
    if let Command::Config {
        command: ConfigCommand::Check,
    } = cli.command
    {
        telemetry.shutdown();
        return config_check(&config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let trace = telemetry.trace_headers();
    let result = runtime.block_on(dispatch(cli.command, config, trace));
    // Do not wait on tasks still blocked on a broker that stopped reading
    // (an alarm): everything that matters was settled or left to requeue.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // Flush the spans still buffered (after a SIGTERM drain, or at the end
    // of `kiln enqueue`).
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `kiln config check`: the effective config, redacted, on stdout; the
/// warnings on stderr.
fn config_check(config: &KilnConfig) -> ExitCode {
    match toml::to_string_pretty(&config.redacted()) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("kiln: cannot print the config: {e}");
            return ExitCode::FAILURE;
        }
    }
    for warning in config.warnings(crate::config::cgroup_memory_limit()) {
        eprintln!("kiln: warning: {warning}");
    }
    ExitCode::SUCCESS
}

/// `kiln new plugin`: the files created on stdout, problems on stderr.
fn new(command: &NewCommand) -> ExitCode {
    use crate::scaffold::{self, SdkSource};
    let NewCommand::Plugin {
        name,
        batch,
        dir,
        sdk,
    } = command;
    match scaffold::create(dir, name, *batch, sdk.as_deref()) {
        Ok(made) => {
            for file in &made.files {
                println!("created {}", file.display());
            }
            if made.sdk == SdkSource::Git {
                eprintln!(
                    "kiln: warning: kiln-plugin is not on crates.io: Cargo.toml fetches it from {}; \
                     pass --sdk PATH or edit the dependency to use a Kiln checkout",
                    scaffold::REPOSITORY
                );
            }
            println!(
                "build it with: cd {} && {}",
                made.dir.display(),
                scaffold::BUILD_COMMAND
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::from(2)
        }
    }
}

fn load_config(global: &Global) -> anyhow::Result<KilnConfig> {
    let mut config = KilnConfig::load(global.config_file.as_deref())?;
    if let Some(dir) = &global.plugins {
        config.plugins_dir.0 = dir.clone();
    }
    if let Some(dir) = &global.cache {
        config.sandbox.cache.dir = Some(dir.clone());
    }
    Ok(config)
}

async fn dispatch(
    command: Command,
    config: KilnConfig,
    trace: Arc<dyn kiln_broker::TraceHeaders>,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run(args, config).await,
        Command::Plugins { json, worker } => plugins(config, json, worker).await,
        Command::Precompile { out } => precompile(config, out),
        Command::Worker(args) => worker(args, config, trace).await,
        Command::Enqueue(args) => enqueue(args, config, trace.as_ref()).await,
        Command::Dlq { broker, command } => dlq(broker, command, config).await,
        Command::Config { .. } => Ok(config_check(&config)),
        Command::New { command } => Ok(new(&command)),
    }
}

async fn run(args: RunArgs, mut config: KilnConfig) -> anyhow::Result<ExitCode> {
    if let Some(n) = args.concurrency {
        config.pipeline.concurrency = n;
    }
    let (_sandbox, registry) = crate::load(&config).await?;
    for error in registry.errors() {
        eprintln!("kiln: warning: {error}");
    }
    let pipeline = Arc::new(crate::pipeline_for(&config, registry));

    let Some(jobs) = args.jobs else {
        let input = match (args.input, args.file) {
            (Some(text), _) => text,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            (None, None) => {
                let mut text = String::new();
                tokio::io::stdin()
                    .read_to_string(&mut text)
                    .await
                    .context("cannot read stdin")?;
                text
            }
        };
        let plugin = args.plugin.unwrap_or_default();
        let job = Job {
            job_id: format!("cli-{}", std::process::id()),
            plugin,
            version: args.plugin_version,
            payload: Payload::Single(input),
            config: args.config.into_iter().collect::<BTreeMap<_, _>>(),
            timeout_ms: args.timeout_ms,
        };
        let handled = pipeline.run(&job, 1).await;
        println!("{}", String::from_utf8_lossy(&handled.encoded));
        return Ok(if handled.error.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    };

    let file = tokio::fs::File::open(&jobs)
        .await
        .with_context(|| format!("cannot open {}", jobs.display()))?;
    let jobs_reader = BufReader::with_capacity(1 << 16, file);
    let replies: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.out {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let dead_path = args.dead.or_else(|| {
        args.out
            .as_ref()
            .map(|o| PathBuf::from(format!("{}.dead.jsonl", o.display())))
    });
    let dead: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &dead_path {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stderr()),
    };
    let io = Io {
        jobs: jobs_reader,
        replies: BufWriter::with_capacity(1 << 16, replies),
        dead: BufWriter::new(dead),
    };
    let concurrency = config.pipeline.effective_concurrency();
    let summary = if std::io::stderr().is_terminal() {
        embedded::run(pipeline, io, concurrency, BarProgress::new()).await?
    } else {
        embedded::run(
            pipeline,
            io,
            concurrency,
            PlainProgress::new(Duration::from_secs(5)),
        )
        .await?
    };
    eprintln!("kiln: {summary}");
    if let Some(path) = dead_path.filter(|_| summary.dead_lettered > 0) {
        eprintln!("kiln: dead letters written to {}", path.display());
    }
    Ok(if summary.failed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn worker(
    args: WorkerArgs,
    mut config: KilnConfig,
    trace: Arc<dyn kiln_broker::TraceHeaders>,
) -> anyhow::Result<ExitCode> {
    args.broker.apply(&mut config);
    if let Some(n) = args.prefetch {
        config.amqp.prefetch = n;
    }
    if let Some(n) = args.concurrency {
        config.pipeline.concurrency = n;
    }
    if let Some(addr) = args.http_listen {
        config.http.listen = addr;
    }
    if args.connection_name.is_some() {
        config.amqp.connection_name = args.connection_name;
    }
    config.validate()?;
    let (sandbox, registry) = crate::load(&config).await?;
    for error in registry.errors() {
        tracing::error!(%error, "plugin not loaded");
    }
    // Hot reload loads into the same sandbox: one engine, pool and ticker.
    crate::worker::run_with_sandbox(&config, Some(Arc::new(sandbox)), registry, trace).await?;
    Ok(ExitCode::SUCCESS)
}

async fn enqueue(
    args: EnqueueArgs,
    mut config: KilnConfig,
    trace: &dyn kiln_broker::TraceHeaders,
) -> anyhow::Result<ExitCode> {
    use kiln_broker::enqueue::{self, EnqueueOptions, OutgoingJob};
    use std::collections::HashSet;
    use std::io::Write as _;
    use tracing::Instrument as _;

    args.broker.apply(&mut config);
    config.validate()?;
    let jobs: Vec<OutgoingJob> = match (&args.jobs, &args.dir) {
        (Some(file), _) => std::fs::read(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| OutgoingJob::from_record(l.to_vec()))
            .collect(),
        (None, Some(dir)) => {
            let plugin = args.plugin.clone().unwrap_or_default();
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
                jobs.push(OutgoingJob { job_id, body });
            }
            jobs
        }
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
    let topology = kiln_broker::Topology::new(&config.amqp, &config.pipeline.retry_policy());

    // Resume: what the output already answers is not published again.
    let mut answered = HashSet::new();
    if let Some(out) = args.out.as_ref().filter(|o| args.wait && o.exists()) {
        let text = std::fs::read_to_string(out)
            .with_context(|| format!("cannot read {}", out.display()))?;
        // A row cut short by a kill is dropped; its job is waited for again.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            let file = std::fs::OpenOptions::new().write(true).open(out)?;
            file.set_len(complete as u64)?;
        }
        for line in text[..complete].lines() {
            if let Ok(reply) = serde_json::from_str::<kiln_protocol::Reply>(line) {
                answered.insert(reply.job_id);
            }
        }
    }
    // The reply queue is named after the input, so a re-run finds replies
    // that arrived while it was down.
    let reply_queue = args.wait.then(|| {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for j in &jobs {
            h.update(j.job_id.as_bytes());
            h.update([0]);
        }
        format!(
            "{}.replies.{}",
            topology.jobs,
            &hex::encode(h.finalize())[..16]
        )
    });
    let options = EnqueueOptions {
        url: config.amqp.url.clone(),
        window: args.window,
        reply_queue: reply_queue.clone(),
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
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .with_context(|| format!("cannot open {}", out.display()))?;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let missing = enqueue::collect_replies(
        &config.amqp.url,
        &queue,
        waiting,
        Duration::from_secs(args.idle_timeout),
        |_, body, reply| {
            // One write per row, so a kill cannot split a row.
            let mut row = Vec::with_capacity(body.len() + 1);
            row.extend_from_slice(body);
            row.push(b'\n');
            file.write_all(&row)?;
            let status = reply.map_or("unreadable", |r| r.status().as_str());
            *statuses.entry(status.to_owned()).or_default() += 1;
            Ok(())
        },
    )
    .await
    .with_context(|| format!("cannot collect replies from {queue}"))?;
    file.flush()?;
    let summary: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    eprintln!(
        "kiln: {} replies written to {} ({})",
        statuses.values().sum::<u64>(),
        out.display(),
        summary.join(", ")
    );
    if !missing.is_empty() {
        eprintln!(
            "kiln: {} jobs got no reply within {} s; re-run to keep waiting",
            missing.len(),
            args.idle_timeout
        );
        return Ok(ExitCode::FAILURE);
    }
    let failed = statuses
        .iter()
        .filter(|(s, _)| s.as_str() != "ok")
        .map(|(_, n)| n)
        .sum::<u64>();
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn dlq(
    broker: BrokerArgs,
    command: DlqCommand,
    mut config: KilnConfig,
) -> anyhow::Result<ExitCode> {
    use kiln_broker::dlq;
    broker.apply(&mut config);
    config.validate()?;
    let topology = kiln_broker::Topology::new(&config.amqp, &config.pipeline.retry_policy());
    let url = &config.amqp.url;
    match command {
        DlqCommand::List { json } => {
            let letters = dlq::list(url, &topology).await.with_context(|| {
                format!(
                    "cannot read {} on {}",
                    topology.dead,
                    config.amqp.redacted_url()
                )
            })?;
            if json {
                for l in &letters {
                    println!("{}", serde_json::to_string(l)?);
                }
            } else {
                println!(
                    "{:<40} {:<16} {:<18} {:>8} {:>8}  MESSAGE",
                    "JOB ID", "PLUGIN", "KIND", "ATTEMPTS", "AGE"
                );
                for l in &letters {
                    let age = l
                        .age_secs
                        .map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
                    println!(
                        "{:<40} {:<16} {:<18} {:>8} {:>8}  {}",
                        l.job_id,
                        l.plugin.as_deref().unwrap_or("-"),
                        l.kind,
                        l.attempts,
                        age,
                        l.message
                    );
                }
            }
            eprintln!("kiln: {} dead letters in {}", letters.len(), topology.dead);
        }
        DlqCommand::Replay {
            job_id,
            all: _,
            plugin,
        } => {
            let filter = dlq::ReplayFilter { job_id, plugin };
            let replayed = dlq::replay(url, &topology, &filter)
                .await
                .with_context(|| {
                    format!(
                        "cannot replay {} on {}",
                        topology.dead,
                        config.amqp.redacted_url()
                    )
                })?;
            for l in &replayed {
                println!("replayed {}", l.job_id);
            }
            eprintln!(
                "kiln: {} dead letters replayed to {}",
                replayed.len(),
                topology.jobs
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn plugins(
    config: KilnConfig,
    json: bool,
    worker: Option<String>,
) -> anyhow::Result<ExitCode> {
    let report = match worker {
        Some(url) => {
            // reqwest is built without a default crypto provider (for an
            // https:// URL): use ring, as lapin and the OTLP exporter do.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let url = format!("{}/plugins", url.trim_end_matches('/'));
            let body = async { reqwest::get(&url).await?.error_for_status()?.text().await }
                .await
                .with_context(|| format!("cannot ask the worker at {url}"))?;
            serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))?
        }
        None => crate::plugins_report(&crate::load(&config).await?.1),
    };
    let listed = |key: &str| {
        report
            .get(key)
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (listing, errors) = (listed("plugins"), listed("errors"));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:<24} {:<10} {:>10} {:<20} {:<14} PATH",
            "NAME", "VERSION", "SIZE", "CACHE", "EXPORTS"
        );
        let text = |p: &serde_json::Value, key: &str| match &p[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        for p in &listing {
            println!(
                "{:<24} {:<10} {:>10} {:<20} {:<14} {}",
                text(p, "name"),
                text(p, "version"),
                text(p, "wasm_bytes"),
                text(p, "cache"),
                text(p, "exports"),
                text(p, "path"),
            );
        }
        for error in &errors {
            println!("error: {}", error.as_str().unwrap_or_default());
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn precompile(config: KilnConfig, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let Some(out) = out.or_else(|| config.sandbox.cache.dir.clone()) else {
        bail!("no output directory: pass --out DIR or set sandbox.cache.dir");
    };
    let sandbox = kiln_sandbox::Sandbox::new(config.sandbox.clone())?;
    let dir = &config.plugins_dir.0;
    let results = sandbox
        .precompile_dir(dir, &out)
        .with_context(|| format!("cannot read the plugins directory {}", dir.display()))?;
    let mut failed = false;
    for p in results {
        let wasm = p.wasm.display();
        match p.entry {
            Ok(entry) if entry.already_present => {
                println!("{wasm}: already cached at {}", entry.path.display());
            }
            Ok(entry) => println!("{wasm}: compiled to {}", entry.path.display()),
            Err(e) => {
                failed = true;
                println!("{wasm}: error: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
