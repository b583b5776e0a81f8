//! Shared helpers for Kiln's integration tests and benchmarks: where the
//! built plugins are, sandboxes with test limits, the `kiln` command, one
//! lock to run a binary's tests one at a time, and (in [`broker`]) what the
//! tests against the local RabbitMQ share, and (in [`otlp`]) an OTLP trace
//! receiver.

pub mod broker;

pub mod otlp;

pub mod instructions;

pub mod registry;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use kiln_sandbox::{CacheConfig, JobContext, Limits, Plugin, Sandbox, SandboxConfig};

/// Directory of the release `.wasm` files built by `build.rs`.
pub fn artifacts() -> PathBuf {
    PathBuf::from(env!("KILN_PLUGIN_ARTIFACTS"))
}

/// Path of a built plugin, by crate name (`hostile-spin`).
pub fn artifact(crate_name: &str) -> PathBuf {
    artifacts().join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// The `kiln` command line (this package's `kiln-under-test` binary).
pub fn kiln() -> Command {
    Command::new(kiln_exe())
}

/// Runs `cmd`, asserts that it succeeded (with its stderr in the
/// message), and returns its stdout.
#[allow(clippy::expect_used)]
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Where `kiln-under-test` is: `CARGO_BIN_EXE_kiln-under-test` when cargo
/// set it for the running test, else beside the test or bench executable's
/// directory (cargo puts those in `target/<profile>/deps`, and the
/// package's binaries one level up).
fn kiln_exe() -> PathBuf {
    const NAME: &str = "kiln-under-test";
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{NAME}")) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(NAME)))
        .unwrap_or_else(|| PathBuf::from(NAME))
}

/// Runs the tests of one binary that hold it one at a time: those that are
/// timing-sensitive, or touch the whole broker. Each test has its own
/// runtime, so the lock is a runtime-agnostic async one.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A sandbox config with `limits`, a small pool and no cache directory.
pub fn config(limits: Limits) -> SandboxConfig {
    let mut config = SandboxConfig {
        limits,
        cache: CacheConfig {
            dir: None,
            baked_dir: None,
        },
        ..SandboxConfig::default()
    };
    config.pool.max_instances = 32;
    config
}

/// A sandbox with `limits` and no cache directory.
#[allow(clippy::expect_used)]
pub fn sandbox(limits: Limits) -> Sandbox {
    Sandbox::new(config(limits)).expect("sandbox builds")
}

/// Loads a built plugin by crate name.
#[allow(clippy::expect_used)]
pub async fn load(sandbox: &Sandbox, crate_name: &str) -> Arc<Plugin> {
    let plugin = sandbox
        .load_file(&artifact(crate_name))
        .await
        .expect("plugin loads");
    Arc::new(plugin)
}

/// A job context with an id and config pairs.
pub fn ctx(job_id: &str, config: &[(&str, &str)]) -> JobContext {
    JobContext {
        job_id: Arc::from(job_id),
        config: Arc::new(
            config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        timeout_ms: None,
    }
}

/// Copies the named plugins into a fresh directory, for directory loads.
#[allow(clippy::expect_used)]
pub fn plugin_dir(crate_names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in crate_names {
        let from = artifact(name);
        let to = dir.path().join(from.file_name().expect("file name"));
        std::fs::copy(&from, &to).expect("copy plugin");
    }
    dir
}

/// The `textcase` languages: Rust (built by `build.rs`) and the ones
/// `cargo xtask plugins --all` builds.
pub const TEXTCASE_LANGUAGES: [&str; 5] = ["rust", "c", "js", "python", "go"];

/// Where `cargo xtask plugins --all` puts `textcase-<lang>.wasm`:
/// `$KILN_LANG_PLUGINS`, else `target/lang-plugins` at the repository root.
pub fn lang_plugins_dir() -> PathBuf {
    std::env::var_os("KILN_LANG_PLUGINS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("lang-plugins")
        })
}

/// The `.wasm` of `textcase` in `lang`: the Rust one from the plugins
/// workspace, the others from [`lang_plugins_dir`] (present only after
/// `cargo xtask plugins --all`).
pub fn textcase_artifact(lang: &str) -> PathBuf {
    if lang == "rust" {
        artifact("textcase-rust")
    } else {
        lang_plugins_dir().join(format!("textcase-{lang}.wasm"))
    }
}

/// `bytes` bytes of the text `cargo xtask jobs` puts in its jobs.
pub fn job_text(bytes: usize) -> String {
    "the quick brown fox jumps over the lazy dog "
        .chars()
        .cycle()
        .take(bytes)
        .collect()
}

/// Formatted log output collected in memory: a `tracing-subscriber` writer
/// (`.with_writer(move || captured.clone())`) for tests that check what the
/// host logged.
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far, lossily decoded.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs `job` with this thread's `tracing` events (INFO and above)
/// captured as JSON, and returns its output with the `kiln::audit` lines
/// logged meanwhile. The capture is this thread's only: use a
/// current-thread runtime.
#[allow(clippy::expect_used)]
pub async fn audited<T>(job: impl std::future::Future<Output = T>) -> (T, Vec<serde_json::Value>) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let log = tracing::subscriber::set_default(subscriber);
    let out = job.await;
    drop(log);
    let audit = captured
        .text()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
        .filter(|l| l["target"] == "kiln::audit")
        .collect();
    (out, audit)
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
