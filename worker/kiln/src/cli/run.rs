//! `kiln run`: one job through the pipeline, its reply on stdout; or, with
//! `--jobs`, a JSONL file of jobs through the embedded runner
//! ([`crate::embedded`]), no broker needed.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kiln_protocol::{Job, Payload};
use tokio::io::{AsyncReadExt, AsyncWrite, BufReader, BufWriter};

use crate::config::KilnConfig;
use crate::embedded::{self, BarProgress, Io, PlainProgress};
use crate::pipeline::Pipeline;

#[derive(Debug, Args)]
pub(super) struct RunArgs {
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
    /// Show the plugin's own log lines (target `kiln::plugin`) on stderr.
    #[arg(short, long)]
    pub(super) verbose: bool,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub(super) async fn run(args: RunArgs, mut config: KilnConfig) -> anyhow::Result<ExitCode> {
    if let Some(n) = args.concurrency {
        config.pipeline.concurrency = n;
    }
    let (_sandbox, registry) = crate::plugins::load(&config).await?;
    for error in registry.errors() {
        eprintln!("kiln: warning: {}", error.report());
    }
    let pipeline = Arc::new(Pipeline::from_config(&config, registry));
    match args.jobs.clone() {
        None => one(args, &pipeline).await,
        Some(jobs) => file(args, &jobs, pipeline, &config).await,
    }
}

/// One job, from `--input`, `--file` or stdin.
async fn one(args: RunArgs, pipeline: &Pipeline) -> anyhow::Result<ExitCode> {
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
    let job = Job {
        job_id: format!("cli-{}", std::process::id()),
        plugin: args.plugin.unwrap_or_default(),
        version: args.plugin_version,
        payload: Payload::Single(input),
        config: args.config.into_iter().collect::<BTreeMap<_, _>>(),
        timeout_ms: args.timeout_ms,
        key: None,
    };
    let handled = pipeline.run(&job, 1).await;
    println!("{}", String::from_utf8_lossy(&handled.encoded));
    Ok(super::exit_code(handled.error.is_some()))
}

/// A JSONL file of jobs, through the embedded runner.
async fn file(
    args: RunArgs,
    jobs: &Path,
    pipeline: Arc<Pipeline>,
    config: &KilnConfig,
) -> anyhow::Result<ExitCode> {
    let file = tokio::fs::File::open(jobs)
        .await
        .with_context(|| format!("cannot open {}", jobs.display()))?;
    let jobs_reader = BufReader::with_capacity(1 << 16, file);
    let replies: Box<dyn AsyncWrite + Unpin + Send> = match &args.out {
        Some(path) => Box::new(create(path).await?),
        None => Box::new(tokio::io::stdout()),
    };
    let dead_path = args.dead.or_else(|| {
        args.out
            .as_ref()
            .map(|o| PathBuf::from(format!("{}.dead.jsonl", o.display())))
    });
    let dead: Box<dyn AsyncWrite + Unpin + Send> = match &dead_path {
        Some(path) => Box::new(create(path).await?),
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
    Ok(super::exit_code(summary.failed() > 0))
}

async fn create(path: &Path) -> anyhow::Result<tokio::fs::File> {
    tokio::fs::File::create(path)
        .await
        .with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert_eq!(
            parse_key_value("a=").unwrap(),
            ("a".to_owned(), String::new())
        );
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }
}
