//! `kiln plugins`: the [`PluginsReport`] of the plugins directory, or of
//! what a running worker serves (`--worker URL`, its `GET /plugins`), as a
//! table or JSON; exit 1 if a file failed to load. `kiln plugins push` and
//! `kiln plugins pull` publish to and fetch from OCI registries
//! ([`crate::oci`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::config::KilnConfig;
use crate::plugins::PluginsReport;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct PluginsArgs {
    #[command(subcommand)]
    action: Option<PluginsAction>,
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

#[derive(Debug, Subcommand)]
enum PluginsAction {
    /// Publish a component to an OCI registry in the CNCF Wasm layout
    /// (config `application/vnd.wasm.config.v0+json`, one `application/wasm`
    /// layer, the manifest as a second layer); prints the manifest digest.
    Push {
        /// The component.
        #[arg(value_name = "FILE.wasm")]
        file: PathBuf,
        /// Where to: `oci://HOST[:PORT]/REPO:TAG`.
        #[arg(value_name = "REF")]
        reference: String,
        /// The plugin's manifest [default: FILE.toml beside the component, if present]
        #[arg(long, value_name = "FILE.toml")]
        manifest: Option<PathBuf>,
    },
    /// Pull references, verify them (digests, media types, size), and
    /// precompile them into the cache, for init containers and image builds.
    Pull {
        /// `oci://HOST[:PORT]/REPO:TAG@sha256:…` (a bare tag needs
        /// registry.require_digest = false).
        #[arg(value_name = "REF", required = true)]
        references: Vec<String>,
        /// The cache directory to fill [default: sandbox.cache.dir]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

pub(super) async fn plugins(args: PluginsArgs, config: KilnConfig) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(PluginsAction::Push {
            file,
            reference,
            manifest,
        }) => return push(&config, &file, &reference, manifest).await,
        Some(PluginsAction::Pull { references, out }) => {
            return pull(&config, &references, out).await;
        }
        None => {}
    }
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

/// `kiln plugins push`.
async fn push(
    config: &KilnConfig,
    file: &std::path::Path,
    reference: &str,
    manifest: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let target = crate::oci::OciRef::parse(reference)?;
    let manifest = manifest.or_else(|| {
        let beside = kiln_sandbox::manifest::path_for(file);
        beside.exists().then_some(beside)
    });
    let digest = crate::oci::push(
        &config.registry,
        &crate::oci::PushRequest {
            wasm: file,
            manifest: manifest.as_deref(),
            target: &target,
        },
    )
    .await?;
    println!("{digest}");
    Ok(ExitCode::SUCCESS)
}

/// `kiln plugins pull`.
async fn pull(
    config: &KilnConfig,
    references: &[String],
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let Some(out) = out.or_else(|| config.sandbox.cache.dir.clone()) else {
        bail!("no cache directory: pass --out DIR or set sandbox.cache.dir");
    };
    let store = crate::oci::Store::for_config(Some(&out));
    let sandbox = kiln_sandbox::Sandbox::new(config.sandbox.clone())?;
    let mut failed = false;
    for text in references {
        let result = async {
            let reference = crate::oci::OciRef::parse(text)?;
            let pulled = crate::oci::fetch(&config.registry, &store, &reference).await?;
            Ok::<_, crate::oci::OciError>((reference, pulled))
        }
        .await;
        let (reference, pulled) = match result {
            Ok(ok) => ok,
            Err(error) => {
                failed = true;
                println!("{text}: error: {}", crate::oci::report(&error));
                continue;
            }
        };
        match sandbox
            .cache()
            .precompile_into(sandbox.engine(), &out, &pulled.wasm)
        {
            Ok(entry) => println!(
                "{reference}: {} verified, {} at {}",
                pulled.digest,
                if entry.already_present {
                    "already cached"
                } else {
                    "compiled"
                },
                entry.path.display(),
            ),
            Err(e) => {
                failed = true;
                println!("{reference}: {} verified, error: {e}", pulled.digest);
            }
        }
    }
    Ok(super::exit_code(failed))
}
