//! The `kiln` command line: the clap [`Cli`], the options every subcommand
//! takes, and [`main`], which loads the config and dispatches to one file
//! per subcommand. The `kiln` binary is [`main`]; the test suite builds the
//! same entry point as its own binary to drive it end to end.

mod config;
mod dlq;
mod enqueue;
mod new;
mod plugins;
mod precompile;
mod run;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::config::KilnConfig;

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
    /// The worker config file, TOML or JSON by its extension [default: /etc/kiln/kiln.toml if present]
    #[arg(long, global = true, value_name = "PATH")]
    config_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one job and print its reply, or a JSONL file of jobs (the
    /// embedded default: no broker needed).
    Run(run::RunArgs),
    /// List the plugins: name, version, size, cache state, exports, and
    /// the files that failed to load (exit 1 if any did).
    Plugins(plugins::PluginsArgs),
    /// Compile every plugin into the cache, for image builds and init
    /// containers.
    Precompile(precompile::PrecompileArgs),
    /// Consume jobs from RabbitMQ, run them, publish the replies (the
    /// container's entrypoint). Stops on SIGTERM/SIGINT after draining.
    Worker(worker::WorkerArgs),
    /// Publish jobs to the jobs queue with confirms; with --wait, collect
    /// every reply. Safe to interrupt and re-run (see docs/PROTOCOL.md).
    Enqueue(enqueue::EnqueueArgs),
    /// Inspect the effective config.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Inspect the dead-letter queue, or replay it after a fix.
    Dlq(dlq::DlqArgs),
    /// Scaffold a new plugin (see docs/SDK.md).
    New {
        #[command(subcommand)]
        command: new::NewCommand,
    },
}

/// Broker options shared by `worker`, `enqueue` and `dlq`. Global, so
/// `kiln dlq list --queue Q` and `kiln dlq --queue Q list` both work.
#[derive(Debug, Args)]
struct BrokerArgs {
    /// The AMQP URL [config: amqp.url]
    #[arg(long, global = true, value_name = "URL")]
    amqp_url: Option<String>,
    /// The jobs queue; every other queue name derives from it [config: amqp.queue]
    #[arg(long, global = true, value_name = "NAME")]
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

/// `kiln worker`'s filter when `log.filter` is unset: `info` for the
/// worker's lifecycle, `warn` elsewhere.
const WORKER_LOG_FILTER: &str = "warn,kiln::worker=info,kiln::reload=info,kiln::compile=info,\
     kiln_broker::session=info,kiln_broker::drain=info";

/// Every other command's filter when `log.filter` is unset: warnings, and
/// the line that says a first-time compile is under way.
const QUIET_LOG_FILTER: &str = "warn,kiln::compile=info";

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `new` needs no config (nor a valid one).
    if let Command::New { command } = &cli.command {
        return new::new(command);
    }
    let config = match load_config(&cli.global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut log = config.log.clone();
    if log.filter.is_empty() {
        // The worker says what it is doing (its settings and state
        // changes, not the per-job span, which stays off and costs
        // nothing); the other commands stay quiet.
        log.filter = match cli.command {
            Command::Worker(_) => WORKER_LOG_FILTER,
            _ => QUIET_LOG_FILTER,
        }
        .into();
    }
    if let Command::Run(args) = &cli.command
        && args.verbose
    {
        log.filter.push_str(",kiln::plugin=trace");
    }
    let telemetry = crate::telemetry::init(&log);
    if let Command::Config {
        command: config::ConfigCommand::Check,
    } = cli.command
    {
        telemetry.shutdown();
        return config::check(&config);
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

fn load_config(global: &Global) -> anyhow::Result<KilnConfig> {
    let mut config = KilnConfig::load(global.config_file.as_deref())?;
    // The worker re-reads `[registry] plugins` from the same file.
    config.registry.config_file = global.config_file.clone().or_else(|| {
        let default = PathBuf::from(crate::config::DEFAULT_CONFIG_FILE);
        default.exists().then_some(default)
    });
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
        Command::Run(args) => run::run(args, config).await,
        Command::Plugins(args) => plugins::plugins(args, config).await,
        Command::Precompile(args) => precompile::precompile(args, config),
        Command::Worker(args) => worker::worker(args, config, trace).await,
        Command::Enqueue(args) => enqueue::enqueue(args, config, trace.as_ref()).await,
        Command::Dlq(args) => dlq::dlq(args, config).await,
        Command::Config { .. } => Ok(config::check(&config)),
        Command::New { command } => Ok(new::new(&command)),
    }
}

/// The exit code of a command that succeeds unless `failed`.
fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Parses `kiln <args>`.
    pub(super) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kiln").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        for args in [
            &["--plugins", "p", "plugins", "--json"][..],
            &["plugins", "--json", "--plugins", "p"][..],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.global.plugins, Some(PathBuf::from("p")), "{args:?}");
        }
    }

    #[test]
    fn broker_options_go_after_the_subcommand() {
        for args in [
            &["worker", "--queue", "q", "--amqp-url", "amqp://h"][..],
            &[
                "enqueue",
                "jobs.jsonl",
                "--queue",
                "q",
                "--amqp-url",
                "amqp://h",
            ][..],
        ] {
            let cli = parse(args).unwrap();
            let broker = match &cli.command {
                Command::Worker(a) => &a.broker,
                Command::Enqueue(a) => &a.broker,
                other => panic!("{other:?}"),
            };
            let mut config = KilnConfig::default();
            broker.apply(&mut config);
            assert_eq!(config.amqp.queue, "q", "{args:?}");
            assert_eq!(config.amqp.url, "amqp://h", "{args:?}");
        }
    }
}
