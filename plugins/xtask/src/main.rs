//! `cargo xtask`: developer tasks.
//!
//! - `cargo xtask plugins`: build every Rust plugin and copy the examples
//!   into `plugins/` (the default plugins directory).
//! - `cargo xtask plugins --all`: the same, then `textcase` in C,
//!   JavaScript, Python and Go (installing their pinned toolchains into the
//!   cache on first use) into `target/lang-plugins/`; `--lang c,go` builds
//!   only the named ones. See docs/PLUGINS.md.
//! - `cargo xtask demo`: the above, then run the sample jobs in `examples/`
//!   through the embedded pipeline and print the replies.
//! - `cargo xtask jobs N BYTES PLUGIN`: print N job records with inputs of
//!   BYTES bytes, for load runs.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("plugins") => plugins_cmd(&args[1..]),
        Some("demo") => demo(),
        Some("jobs") => jobs(&args[1..]),
        _ => Err("usage: cargo xtask <plugins [--all | --lang c,js,python,go] | demo | jobs N BYTES PLUGIN>".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn plugins() -> Result<std::path::PathBuf, String> {
    let artifacts = kiln_xtask::build_rust_plugins().map_err(|e| e.to_string())?;
    let dest = kiln_xtask::repo_root().join("plugins");
    for path in kiln_xtask::install_examples(&artifacts, &dest).map_err(|e| e.to_string())? {
        eprintln!("xtask: installed {}", path.display());
    }
    Ok(dest)
}

fn plugins_cmd(args: &[String]) -> Result<(), String> {
    let langs: Vec<String> = match args {
        [] => Vec::new(),
        [all] if all == "--all" => kiln_xtask::lang::LANGUAGES
            .iter()
            .map(|l| (*l).to_owned())
            .collect(),
        [flag, list] if flag == "--lang" => list.split(',').map(str::to_owned).collect(),
        _ => return Err("usage: cargo xtask plugins [--all | --lang c,js,python,go]".to_owned()),
    };
    plugins()?;
    if langs.is_empty() {
        return Ok(());
    }
    let artifacts = kiln_xtask::artifacts_dir();
    let rust = kiln_xtask::lang::install_rust_textcase(&artifacts).map_err(|e| e.to_string())?;
    eprintln!("xtask: installed {}", rust.display());
    // One language at a time: the heavy steps (wizer, go build, pip, npm)
    // each use the machine's cores, and their logs stay readable.
    let mut failed = Vec::new();
    for lang in &langs {
        if let Err(e) = kiln_xtask::lang::build_language(lang) {
            eprintln!("xtask: textcase-{lang}: {e}");
            failed.push(lang.as_str());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "failed to build textcase for: {}",
            failed.join(", ")
        ))
    }
}

fn demo() -> Result<(), String> {
    let dir = plugins()?;
    let root = kiln_xtask::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "kiln",
            "--",
            "run",
            "--plugins",
        ])
        .arg(&dir)
        .args(["--jobs", "examples/jobs.jsonl"]);
    kiln_xtask::scrub_env(&mut cmd);
    let status = cmd.status().map_err(|e| format!("cannot run kiln: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kiln run failed ({status})"))
    }
}

fn jobs(args: &[String]) -> Result<(), String> {
    use std::io::Write;
    let [n, bytes, plugin] = args else {
        return Err("usage: cargo xtask jobs N BYTES PLUGIN".to_owned());
    };
    let n: u64 = n.parse().map_err(|e| format!("N: {e}"))?;
    let bytes: usize = bytes.parse().map_err(|e| format!("BYTES: {e}"))?;
    let text: String = "the quick brown fox jumps over the lazy dog "
        .chars()
        .cycle()
        .take(bytes)
        .collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for i in 0..n {
        writeln!(
            out,
            r#"{{"job_id":"job-{i}","plugin":"{plugin}","input":"{text}"}}"#
        )
        .map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}
