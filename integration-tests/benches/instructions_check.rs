//! The CI gate over the last `--bench instructions` run: reads gungraun's
//! `summary.json` files, prints every benchmark's delta against
//! `instructions-baseline.json`, and fails when one grew more than 10 %
//! (`kiln_integration_tests::instructions` has the rules).
//!
//! It is a bench target, not a binary, so that it shares the benchmark's
//! build (same profile and features) and running it compiles nothing more:
//!
//! ```sh
//! cargo bench --workspace --bench instructions -- --save-summary=json
//! cargo bench --workspace --bench instructions_check
//! # moving the baseline, deliberately (say why in the commit):
//! cargo bench --workspace --bench instructions_check -- --update [--comment TEXT]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use kiln_integration_tests::instructions::{self, Baseline};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(about = "Checks the instruction counts of `--bench instructions` against the baseline")]
struct Args {
    /// Directory searched (recursively) for gungraun's `summary.json` files.
    #[arg(long, default_value_os_t = default_summaries())]
    summaries: PathBuf,
    /// The committed baseline.
    #[arg(long, default_value_os_t = instructions::baseline_path())]
    baseline: PathBuf,
    /// Rewrite the baseline with the measured counts instead of checking.
    #[arg(long)]
    update: bool,
    /// With --update: the baseline's new comment (what it was measured on);
    /// without it the old comment stays.
    #[arg(long, requires = "update")]
    comment: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Where gungraun writes the bench's output: `<target>/gungraun/<package>/instructions`.
fn default_summaries() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
        .join("gungraun")
        .join(env!("CARGO_PKG_NAME"))
        .join("instructions")
}

/// The count of every `summary.json` under `dir`, by benchmark name.
fn measured(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n == "summary.json") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let summary: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                let (name, ir) = instructions::instructions_of(&summary)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("in {}", path.display()))?;
                if found.insert(name.clone(), ir).is_some() {
                    bail!("two summaries for {name} under {}", dir.display());
                }
            }
        }
    }
    Ok(found)
}

fn run(args: Args) -> Result<bool> {
    let text = std::fs::read_to_string(&args.baseline)
        .with_context(|| format!("cannot read the baseline {}", args.baseline.display()))?;
    let mut baseline: Baseline = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a baseline", args.baseline.display()))?;
    let counts = measured(&args.summaries).context(
        "no gungraun summaries: run `cargo bench --workspace --bench instructions -- --save-summary=json` first",
    )?;
    if counts.is_empty() {
        bail!("no summary.json under {}", args.summaries.display());
    }
    let rows = instructions::compare(&baseline, &counts);
    print!("{}", instructions::report(&rows, baseline.tolerance_pct));
    if args.update {
        baseline.instructions = counts;
        if let Some(comment) = args.comment {
            baseline.comment = comment;
        }
        let mut text = serde_json::to_string_pretty(&baseline)?;
        text.push('\n');
        std::fs::write(&args.baseline, text)
            .with_context(|| format!("cannot write {}", args.baseline.display()))?;
        println!("baseline rewritten: {}", args.baseline.display());
        return Ok(true);
    }
    let failed = rows.iter().filter(|r| r.verdict.fails()).count();
    if failed == 0 {
        println!("instruction counts: all {} within the baseline", rows.len());
    } else {
        println!(
            "instruction counts: {failed} of {} off the baseline (if that is intended, rewrite it with --update and say why in the commit)",
            rows.len()
        );
    }
    Ok(failed == 0)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("instructions_check: {e:#}");
            ExitCode::FAILURE
        }
    }
}
