//! Plugin discovery: every `*.wasm` in a directory, loaded and checked, and
//! looked up by name and semver requirement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::LoadError;
use crate::plugin::Plugin;

/// The plugins that loaded, and the files that did not.
#[derive(Debug, Default)]
pub struct Registry {
    /// By name; each list is sorted by version, highest first.
    plugins: BTreeMap<String, Vec<Arc<Plugin>>>,
    errors: Vec<LoadError>,
}

/// Why a job's plugin could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No plugin has that name.
    #[error("no plugin named {name:?}")]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// Plugins of that name exist, but none matches the requirement.
    #[error("no version of plugin {name:?} matches {requirement}; available: {}", available.join(", "))]
    VersionMismatch {
        /// The name asked for.
        name: String,
        /// The requirement.
        requirement: String,
        /// The versions that are loaded, highest first.
        available: Vec<String>,
    },
}

impl Registry {
    /// The plugin for a job: with a requirement, the highest version that
    /// matches it ([`Registry::resolve`]); without one, the stable version,
    /// unless the job falls in its canary's share. The stable version is the
    /// highest that declares a canary in its manifest, else the highest.
    /// The share is decided by [`canary_bucket`] of the job id, so it is the
    /// same on every worker and every retry.
    pub fn route(
        &self,
        name: &str,
        requirement: Option<&semver::VersionReq>,
        job_id: &str,
    ) -> Result<&Arc<Plugin>, ResolveError> {
        if requirement.is_some() {
            return self.resolve(name, requirement);
        }
        let versions = self
            .plugins
            .get(name)
            .ok_or_else(|| ResolveError::Unknown {
                name: name.to_owned(),
            })?;
        let Some(stable) = versions.iter().find(|p| p.canary().is_some()) else {
            return self.resolve(name, None);
        };
        let trial = stable.canary().and_then(|canary| {
            let target = versions.iter().find(|p| *p.version() == canary.version)?;
            (canary_bucket(job_id) < canary.percent).then_some(target)
        });
        Ok(trial.unwrap_or(stable))
    }

    /// A registry of plugins that are already loaded (and may be serving in
    /// another registry), with the files that failed: how hot reload builds
    /// the next registry without recompiling the plugins that did not change.
    /// Plugins are inserted in order, so on a duplicate `name@version` the
    /// earlier one keeps serving.
    pub fn from_parts(
        plugins: impl IntoIterator<Item = Arc<Plugin>>,
        errors: impl IntoIterator<Item = LoadError>,
    ) -> Self {
        let mut registry = Self::default();
        for plugin in plugins {
            registry.insert_shared(plugin);
        }
        registry.errors.extend(errors);
        registry
    }

    /// Adds a plugin. A second file reporting the same `name@version` is a
    /// load error naming both files; the first one keeps serving.
    pub fn insert(&mut self, plugin: Plugin) {
        self.insert_shared(Arc::new(plugin));
    }

    /// [`Registry::insert`] for a plugin that may be shared with another
    /// registry.
    pub fn insert_shared(&mut self, plugin: Arc<Plugin>) {
        let versions = self.plugins.entry(plugin.name().to_owned()).or_default();
        if let Some(existing) = versions.iter().find(|p| p.version() == plugin.version()) {
            self.errors.push(LoadError::Identity {
                path: plugin.path().to_path_buf(),
                message: format!(
                    "{}@{} is already loaded from {}",
                    plugin.name(),
                    plugin.version(),
                    existing.path().display()
                ),
            });
            return;
        }
        versions.push(plugin);
        versions.sort_by(|a, b| b.version().cmp(a.version()));
    }

    /// Records a file that failed to load.
    pub fn push_error(&mut self, error: LoadError) {
        self.errors.push(error);
    }

    /// The highest version of `name` matching `requirement` (any version if
    /// there is none).
    pub fn resolve(
        &self,
        name: &str,
        requirement: Option<&semver::VersionReq>,
    ) -> Result<&Arc<Plugin>, ResolveError> {
        let versions = self
            .plugins
            .get(name)
            .ok_or_else(|| ResolveError::Unknown {
                name: name.to_owned(),
            })?;
        let Some(req) = requirement else {
            // Lists are never empty: an entry is created with its first plugin.
            return versions.first().ok_or_else(|| ResolveError::Unknown {
                name: name.to_owned(),
            });
        };
        versions
            .iter()
            .find(|p| req.matches(p.version()))
            .ok_or_else(|| ResolveError::VersionMismatch {
                name: name.to_owned(),
                requirement: req.to_string(),
                available: versions.iter().map(|p| p.version().to_string()).collect(),
            })
    }

    /// Every loaded plugin, by name then version (highest first).
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values().flatten()
    }

    /// The files that failed to load.
    pub fn errors(&self) -> &[LoadError] {
        &self.errors
    }

    /// Number of loaded plugins (all versions).
    pub fn len(&self) -> usize {
        self.plugins.values().map(Vec::len).sum()
    }

    /// Whether no plugin loaded.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

/// The `*.wasm` files directly in `dir`, sorted by name.
pub fn wasm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A job's canary bucket, 0 to 99: FNV-1a of its id, a hash that is stable
/// across processes, platforms and Rust versions (std's is not).
pub fn canary_bucket(job_id: &str) -> u8 {
    let hash = job_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // Below 100, so it fits.
    (hash % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_buckets_are_stable_and_spread() {
        // Fixed values: a change of hash would silently move retried jobs.
        assert_eq!(canary_bucket(""), (0xcbf2_9ce4_8422_2325_u64 % 100) as u8);
        assert_eq!(canary_bucket("job-1"), canary_bucket("job-1"));
        let mut counts = [0u32; 100];
        for i in 0..100_000 {
            counts[usize::from(canary_bucket(&format!("job-{i}")))] += 1;
        }
        // 1,000 expected per bucket; the sd is about 31.
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }
}
