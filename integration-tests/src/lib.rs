//! Shared helpers for Kiln's integration tests and benchmarks: where the
//! built plugins are, and sandboxes with test limits.

pub mod instructions;

use std::path::PathBuf;
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
