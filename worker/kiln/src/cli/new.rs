//! `kiln new plugin`: a plugin project scaffolded by [`crate::scaffold`]; the
//! files created and the two commands that follow on stdout, problems on
//! stderr. Needs no config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::scaffold::{self, Lang, SdkSource};

#[derive(Debug, Subcommand)]
pub(super) enum NewCommand {
    /// A plugin project in Rust, C, JavaScript, Python or Go, with an
    /// executable ./build.sh that writes NAME.wasm beside it (installing the
    /// pinned toolchain into the shared cache on first use), NAME.toml and a
    /// README.md. Rust uses the kiln-plugin SDK; JavaScript, Python and Go a
    /// thin helper shipped in the project.
    Plugin {
        /// The plugin's name: the project's directory, the `.wasm`'s stem,
        /// and the one jobs address.
        name: String,
        /// The language: rust, c, js, python or go.
        #[arg(long, value_name = "LANG", default_value = "rust")]
        lang: Lang,
        /// Also export `batch` (world batch-text-plugin; not in C).
        #[arg(long)]
        batch: bool,
        /// Where to create the project's directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Rust only: the kiln-plugin crate to depend on by path [default:
        /// the one of the Kiln checkout DIR is in, else a git dependency]
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
}

pub(super) fn new(command: &NewCommand) -> ExitCode {
    let NewCommand::Plugin {
        name,
        lang,
        batch,
        dir,
        sdk,
    } = command;
    if sdk.is_some() && *lang != Lang::Rust {
        eprintln!("kiln: --sdk is for --lang rust only");
        return ExitCode::from(2);
    }
    match scaffold::create(dir, name, *lang, *batch, sdk.as_deref()) {
        Ok(made) => {
            for file in &made.files {
                println!("created {}", file.display());
            }
            if *lang == Lang::Rust && made.sdk == SdkSource::Git {
                eprintln!(
                    "kiln: warning: kiln-plugin is not on crates.io: Cargo.toml fetches it from {}; \
                     pass --sdk PATH or edit the dependency to use a Kiln checkout",
                    scaffold::REPOSITORY
                );
            }
            let build = if *lang == Lang::Rust {
                format!("  (it runs {})", scaffold::BUILD_COMMAND)
            } else {
                "  (the first build installs the pinned toolchain)".to_owned()
            };
            let project = made.dir.display();
            println!("next:");
            println!("  cd {project} && {}{build}", scaffold::BUILD_SCRIPT);
            println!("  kiln --plugins {project} run {name} --input \"hello\"");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::from(2)
        }
    }
}
