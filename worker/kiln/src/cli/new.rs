//! `kiln new plugin`: a plugin crate scaffolded by [`crate::scaffold`]; the
//! files created on stdout, problems on stderr. Needs no config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::scaffold::{self, SdkSource};

#[derive(Debug, Subcommand)]
pub(super) enum NewCommand {
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

pub(super) fn new(command: &NewCommand) -> ExitCode {
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
