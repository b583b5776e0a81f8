//! Builds the Rust plugins in `plugins/rust` for `wasm32-wasip2`.
//!
//! Used by `cargo xtask` and by `integration-tests/build.rs`, so tests,
//! benchmarks and the demo all run the same artifacts. The plugins are a
//! workspace of their own (they target wasm), built by a nested `cargo`
//! with the outer build's environment scrubbed.

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod lang;

/// The wasm target every Rust plugin builds for.
pub const TARGET: &str = "wasm32-wasip2";

/// The example plugins: the ones copied into `plugins/` for the demo and
/// the default `--plugins` directory. The others are test fixtures.
pub const EXAMPLES: [&str; 4] = ["uppercase", "reverse", "wordcount", "markdown"];

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The plugins' own workspace.
pub fn plugins_workspace() -> PathBuf {
    repo_root().join("plugins").join("rust")
}

/// Where the release `.wasm` files land.
pub fn artifacts_dir() -> PathBuf {
    plugins_workspace()
        .join("target")
        .join(TARGET)
        .join("release")
}

/// Why the plugins could not be built.
#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// Builds every Rust plugin in release mode and returns the artifacts dir.
pub fn build_rust_plugins() -> Result<PathBuf, BuildError> {
    ensure_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins_workspace())
        .args(["build", "--release", "--target", TARGET]);
    scrub_env(&mut cmd);
    let status = cmd
        .status()
        .map_err(|e| BuildError(format!("cannot run cargo for the plugins: {e}")))?;
    if !status.success() {
        return Err(BuildError(format!(
            "building the plugins failed ({status})"
        )));
    }
    Ok(artifacts_dir())
}

/// Installs the wasm target with rustup when the toolchain lacks it.
fn ensure_target() -> Result<(), BuildError> {
    let mut cmd = Command::new("rustc");
    cmd.args(["--print", "sysroot"]);
    scrub_env(&mut cmd);
    let sysroot = cmd
        .output()
        .map_err(|e| BuildError(format!("cannot run rustc: {e}")))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib").join("rustlib").join(TARGET).exists() {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]);
    scrub_env(&mut cmd);
    let status = cmd.status().map_err(|e| {
        BuildError(format!(
            "the {TARGET} target is missing and rustup cannot run: {e}"
        ))
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError(format!(
            "rustup target add {TARGET} failed ({status})"
        )))
    }
}

/// Removes what an outer cargo (or build script) sets, so a nested cargo
/// builds as if run from a shell. Build scripts watch some of these
/// variables (`ring` watches `CARGO_MANIFEST_DIR`): leaking them would
/// rebuild half the dependency graph.
pub fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTDOC"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if outer {
            cmd.env_remove(key);
        }
    }
}

/// Copies the example plugins into `dest` (the default plugins directory).
pub fn install_examples(artifacts: &Path, dest: &Path) -> Result<Vec<PathBuf>, BuildError> {
    EXAMPLES
        .iter()
        .map(|name| {
            let file = format!("{name}.wasm");
            let to = dest.join(&file);
            std::fs::copy(artifacts.join(&file), &to).map_err(|e| {
                BuildError(format!("cannot copy {file} to {}: {e}", dest.display()))
            })?;
            Ok(to)
        })
        .collect()
}
