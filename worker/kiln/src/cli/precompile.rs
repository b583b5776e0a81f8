//! `kiln precompile`: every plugin compiled into a cache directory, for
//! image builds and init containers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use crate::config::KilnConfig;

#[derive(Debug, Args)]
pub(super) struct PrecompileArgs {
    /// Directory to fill [default: the writable cache directory]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub(super) fn precompile(args: PrecompileArgs, config: KilnConfig) -> anyhow::Result<ExitCode> {
    let Some(out) = args.out.or_else(|| config.sandbox.cache.dir.clone()) else {
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
    Ok(super::exit_code(failed))
}
