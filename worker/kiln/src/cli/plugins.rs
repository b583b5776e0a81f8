//! `kiln plugins`: the [`PluginsReport`] of the plugins directory, or of
//! what a running worker serves (`--worker URL`, its `GET /plugins`), as a
//! table or JSON; exit 1 if a file failed to load.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::KilnConfig;
use crate::plugins::PluginsReport;

#[derive(Debug, Args)]
pub(super) struct PluginsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Ask a running `kiln worker` what it serves now (its
    /// `--http-listen` address, e.g. `http://127.0.0.1:9090`), hot
    /// reloads and reload errors included, instead of loading the
    /// plugins directory here.
    #[arg(long, value_name = "URL")]
    worker: Option<String>,
}

pub(super) async fn plugins(args: PluginsArgs, config: KilnConfig) -> anyhow::Result<ExitCode> {
    let report = match args.worker {
        Some(url) => ask(&url).await?,
        None => PluginsReport::of(&crate::plugins::load(&config).await?.1),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(super::exit_code(!report.is_ok()))
}

/// The report a running worker answers on `GET <url>/plugins`.
async fn ask(url: &str) -> anyhow::Result<PluginsReport> {
    // reqwest is built without a default crypto provider (for an
    // https:// URL): use ring, as lapin and the OTLP exporter do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("{}/plugins", url.trim_end_matches('/'));
    let body = async { reqwest::get(&url).await?.error_for_status()?.text().await }
        .await
        .with_context(|| format!("cannot ask the worker at {url}"))?;
    serde_json::from_str(&body).with_context(|| format!("{url} did not answer a plugins report"))
}
