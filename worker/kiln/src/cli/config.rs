//! `kiln config check`: the effective config, redacted, on stdout; the
//! warnings about settings that will not fit the container on stderr.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::KilnConfig;

#[derive(Debug, Subcommand)]
pub(super) enum ConfigCommand {
    /// Print the effective config (defaults, then the file, then `KILN__*`
    /// variables) as TOML with secrets redacted, and warn about settings
    /// that will not fit the container. Exit 2 if it is invalid.
    Check,
}

/// `kiln config check` on a config already loaded (an invalid one exits 2
/// before this).
pub(super) fn check(config: &KilnConfig) -> ExitCode {
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
