//! The plugins Kiln serves: loading them from the configured directory
//! ([`load`]), the handle jobs read them through ([`SharedRegistry`], which
//! hot reload swaps), and the one report of them ([`PluginsReport`]) that
//! `kiln plugins` prints and a worker's `GET /plugins` serves.
//!
//! It knows the sandbox and the config, never job records or the broker.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use kiln_sandbox::{CacheState, Plugin, Registry, Sandbox};
use serde::{Deserialize, Serialize};

use crate::config::KilnConfig;

/// The registry serving jobs now. The pipeline loads it once per job (no
/// lock is held while the job runs); the reloader stores its successor.
pub type SharedRegistry = Arc<ArcSwap<Registry>>;

/// Builds the sandbox and loads every plugin of the configured directory,
/// and those of `[registry] plugins` (pulled first: see [`crate::oci`]).
pub async fn load(config: &KilnConfig) -> anyhow::Result<(Sandbox, Arc<Registry>)> {
    let (sandbox, registry, _) = load_with_registry(config).await?;
    Ok((sandbox, registry))
}

/// [`load`], also returning the registry syncer (its first sync done) when
/// `[registry] plugins` is set, for the worker to keep refreshing.
pub async fn load_with_registry(
    config: &KilnConfig,
) -> anyhow::Result<(Sandbox, Arc<Registry>, Option<crate::oci::Syncer>)> {
    use anyhow::Context as _;
    let sandbox = Sandbox::new(config.sandbox.clone())?;
    let dir = &config.plugins_dir.0;
    let mut registry = sandbox
        .load_dir(dir)
        .await
        .with_context(|| format!("cannot read the plugins directory {}", dir.display()))?;
    let syncer = if config.registry.plugins.is_empty() {
        None
    } else {
        let store = crate::oci::Store::for_config(config.sandbox.cache.dir.as_deref());
        let mut syncer = crate::oci::Syncer::new(config.registry.clone(), store);
        let report = syncer.sync().await;
        let mut plugins: Vec<Arc<kiln_sandbox::Plugin>> = registry.plugins().cloned().collect();
        let mut errors = registry.errors().to_vec();
        for path in &report.active {
            match sandbox.load_file(path).await {
                Ok(plugin) => {
                    tracing::info!(plugin = plugin.name(), version = %plugin.version(), path = %path.display(), "registry plugin loaded");
                    plugins.push(Arc::new(plugin));
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), error = %error.report(), "registry plugin rejected");
                    errors.push(error);
                }
            }
        }
        errors.extend(syncer.shared().errors().1);
        registry = Registry::from_parts(plugins, errors);
        Some(syncer)
    };
    Ok((sandbox, Arc::new(registry), syncer))
}

/// What `kiln plugins` shows, and a worker's `/plugins` answers: the
/// plugins of a registry and the files that failed to load into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginsReport {
    /// The plugins serving, in the registry's order.
    pub plugins: Vec<PluginRow>,
    /// The files that failed to load, each as [`kiln_sandbox::LoadError::report`].
    pub errors: Vec<String>,
}

/// One plugin of a [`PluginsReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRow {
    /// The name jobs address.
    pub name: String,
    /// Its version.
    pub version: semver::Version,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The size of that file.
    pub wasm_bytes: u64,
    /// Where its compiled component came from.
    pub cache: CacheState,
    /// The worlds' exports it serves.
    pub exports: Vec<Export>,
    /// The registry reference and manifest digest it was pulled from, for
    /// a plugin of `[registry] plugins`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::oci::Source>,
    /// Its effective outbound HTTP grants (`[grants] outbound`, within the
    /// operator's caps); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<String>,
    /// Most jobs one instance serves (manifest `[instances] reuse_jobs`; 1
    /// is a fresh instance per job, the default).
    #[serde(default = "one")]
    pub reuse_jobs: u32,
}

/// `reuse_jobs` in a report from a worker that predates it.
fn one() -> u32 {
    1
}

/// An export of the `kiln:plugin` contract a plugin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Export {
    /// `plugin` (every plugin).
    Plugin,
    /// `batch` (world `batch-text-plugin`).
    Batch,
}

impl Export {
    /// Its name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plugin => "plugin",
            Self::Batch => "batch",
        }
    }
}

impl PluginRow {
    /// The row of a loaded plugin.
    pub fn of(plugin: &Plugin) -> Self {
        let mut exports = vec![Export::Plugin];
        if plugin.has_batch() {
            exports.push(Export::Batch);
        }
        Self {
            name: plugin.name().to_owned(),
            version: plugin.version().clone(),
            path: plugin.path().to_path_buf(),
            wasm_bytes: plugin.wasm_bytes(),
            cache: plugin.cache_state(),
            exports,
            source: crate::oci::Source::of(plugin.path()),
            outbound: plugin
                .grants()
                .outbound
                .iter()
                .map(ToString::to_string)
                .collect(),
            reuse_jobs: plugin.reuse_jobs(),
        }
    }
}

impl PluginsReport {
    /// The report of `registry`: its plugins and its load errors.
    pub fn of(registry: &Registry) -> Self {
        Self {
            plugins: registry.plugins().map(|p| PluginRow::of(p)).collect(),
            errors: registry.errors().iter().map(|e| e.report()).collect(),
        }
    }

    /// Whether every plugin file loaded.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The table `kiln plugins` prints: a header, one line per plugin
    /// (followed by an `  outbound: ` line when it has outbound grants), then
    /// one `error: ` line per file that failed to load.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut text = format!(
            "{:<24} {:<10} {:>10} {:<20} {:<14} {:>6} PATH\n",
            "NAME", "VERSION", "SIZE", "CACHE", "EXPORTS", "REUSE"
        );
        // Writing to a String cannot fail.
        for p in &self.plugins {
            let exports: Vec<&str> = p.exports.iter().map(|e| e.as_str()).collect();
            let source = p
                .source
                .as_ref()
                .map(|s| format!(" {}@{}", s.reference, s.digest))
                .unwrap_or_default();
            let _ = writeln!(
                text,
                "{:<24} {:<10} {:>10} {:<20} {:<14} {:>6} {}{source}",
                p.name,
                p.version.to_string(),
                p.wasm_bytes,
                p.cache.as_str(),
                exports.join(","),
                p.reuse_jobs,
                p.path.display(),
            );
            if !p.outbound.is_empty() {
                let _ = writeln!(text, "  outbound: {}", p.outbound.join(", "));
            }
        }
        for error in &self.errors {
            let _ = writeln!(text, "error: {error}");
        }
        text
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report() -> PluginsReport {
        PluginsReport {
            plugins: vec![
                PluginRow {
                    name: "uppercase".into(),
                    version: semver::Version::new(1, 2, 3),
                    path: PathBuf::from("/plugins/uppercase.wasm"),
                    wasm_bytes: 4096,
                    cache: CacheState::CompiledInMemory,
                    exports: vec![Export::Plugin],
                    source: None,
                    outbound: vec!["https://api.example.com".into()],
                    reuse_jobs: 1,
                },
                PluginRow {
                    name: "wordcount".into(),
                    version: semver::Version::new(0, 1, 0),
                    path: PathBuf::from("/plugins/wordcount.wasm"),
                    wasm_bytes: 123,
                    cache: CacheState::Hit,
                    exports: vec![Export::Plugin, Export::Batch],
                    source: None,
                    outbound: vec![],
                    reuse_jobs: 1000,
                },
            ],
            errors: vec!["plugin /plugins/x.wasm: cannot read: gone".into()],
        }
    }

    #[test]
    fn the_json_shape_is_the_one_clients_read() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "plugins": [
                    {
                        "name": "uppercase",
                        "version": "1.2.3",
                        "path": "/plugins/uppercase.wasm",
                        "wasm_bytes": 4096,
                        "cache": "compiled-in-memory",
                        "exports": ["plugin"],
                        "outbound": ["https://api.example.com"],
                        "reuse_jobs": 1,
                    },
                    {
                        "name": "wordcount",
                        "version": "0.1.0",
                        "path": "/plugins/wordcount.wasm",
                        "wasm_bytes": 123,
                        "cache": "hit",
                        "exports": ["plugin", "batch"],
                        "reuse_jobs": 1000,
                    },
                ],
                "errors": ["plugin /plugins/x.wasm: cannot read: gone"],
            })
        );
        // `kiln plugins --worker` reads a worker's answer back.
        let back: PluginsReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report());
    }

    #[test]
    fn names_are_said_as_they_serialize() {
        for state in [
            CacheState::Baked,
            CacheState::Hit,
            CacheState::Compiled,
            CacheState::CompiledInMemory,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        for export in [Export::Plugin, Export::Batch] {
            assert_eq!(serde_json::to_value(export).unwrap(), export.as_str());
        }
    }

    #[test]
    fn the_table_has_a_line_per_plugin_then_the_errors() {
        let table = report().table();
        let mut lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        // The plugin with outbound grants has them on a line of their own.
        assert_eq!(lines.remove(2), "  outbound: https://api.example.com");
        assert!(lines[0].starts_with("NAME "), "{table}");
        assert!(lines[0].ends_with(" PATH"), "{table}");
        for (line, words) in [
            (
                lines[1],
                [
                    "uppercase",
                    "1.2.3",
                    "4096",
                    "compiled-in-memory",
                    "plugin",
                    "1",
                    "/plugins/uppercase.wasm",
                ],
            ),
            (
                lines[2],
                [
                    "wordcount",
                    "0.1.0",
                    "123",
                    "hit",
                    "plugin,batch",
                    "1000",
                    "/plugins/wordcount.wasm",
                ],
            ),
        ] {
            assert_eq!(
                line.split_whitespace().collect::<Vec<_>>(),
                words,
                "{table}"
            );
        }
        // Columns line up under the header.
        assert_eq!(lines[1].find("1.2.3"), lines[0].find("VERSION"), "{table}");
        assert_eq!(lines[2].find("/plugins/"), lines[0].find("PATH"), "{table}");
        assert_eq!(lines[3], "error: plugin /plugins/x.wasm: cannot read: gone");
        assert!(report().table().ends_with('\n'));
    }

    #[test]
    fn a_registry_reports_its_load_errors_with_their_causes() {
        let error = kiln_sandbox::LoadError::Read {
            path: PathBuf::from("/plugins/x.wasm"),
            source: Arc::new(std::io::Error::other("gone")),
        };
        let registry = Registry::from_parts([], [error]);
        let report = PluginsReport::of(&registry);
        assert!(report.plugins.is_empty());
        assert_eq!(report.errors, ["plugin /plugins/x.wasm: cannot read: gone"]);
        assert!(!report.is_ok());
        assert!(PluginsReport::of(&Registry::default()).is_ok());
    }
}
