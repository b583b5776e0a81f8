//! Hot reload of the plugins directory for `kiln worker`.
//!
//! This module owns the worker's view of its plugin files after start: it
//! notices changes (a `notify` watcher on the directory, a slow poll, and
//! SIGHUP), waits until a changed file has settled, loads it off the job
//! path, and publishes a new [`Registry`] through the [`SharedRegistry`]
//! handle the pipeline reads once per job.
//!
//! - **Changes are found by rescanning**, never by interpreting events: any
//!   event in the directory (non-recursive) only wakes the scan. A plugin is
//!   fingerprinted by `(len, mtime, inode, device)` of the file its path
//!   *resolves* to, and of its manifest (`<stem>.toml`), so a Kubernetes
//!   ConfigMap or volume update (`..data` swapped to a new directory by one
//!   `rename`) is a change like any other.
//! - **A change must settle**: a fingerprint is loaded only once it has been
//!   seen unchanged for `reload.settle_ms`, and again after the load, so a
//!   plain non-atomic `cp` is never loaded half-written. A file that changes
//!   while it is being loaded is retried, not reported.
//! - **A broken file never replaces a serving one**: the previous version of
//!   that file keeps serving, and the error is logged, counted
//!   (`kiln_plugin_reloads_total{result="failed"}`) and kept in the
//!   registry's errors (`kiln_plugin_load_errors`) until the file changes.
//! - **Unchanged plugins are reused**: the new registry shares their
//!   `Arc<Plugin>`; in-flight jobs keep the `Arc` they started with, so a
//!   replaced or removed version drains on its own.
//!
//! **Invariant:** it knows the sandbox and the metrics, never job records or
//! the broker; a failure here is logged and never reaches the consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kiln_sandbox::{LoadError, Plugin, Registry, Sandbox, wasm_files};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Notify, watch};

use crate::config::ReloadConfig;
use crate::metrics::JobMetrics;
use crate::plugins::SharedRegistry;

/// Shortest time between two scans woken by watcher events: a large copy
/// produces an event per write, and one scan per burst is enough.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// What identifies a file's contents without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    inode: u64,
    device: u64,
}

impl Stamp {
    /// The stamp of the file `path` resolves to (symlinks followed), or
    /// `None` if there is none.
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            mtime: meta.modified().ok(),
            inode: meta.ino(),
            device: meta.dev(),
        })
    }
}

/// A plugin file and its manifest, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    wasm: Stamp,
    manifest: Option<Stamp>,
}

impl Fingerprint {
    fn of(wasm: &Path) -> Option<Self> {
        Some(Self {
            wasm: Stamp::of(wasm)?,
            manifest: Stamp::of(&kiln_sandbox::manifest::path_for(wasm)),
        })
    }
}

/// The version a file serves.
#[derive(Debug)]
struct Served {
    plugin: Arc<Plugin>,
    /// What the file looked like when it was loaded (`None`: unknown).
    fingerprint: Option<Fingerprint>,
    /// Load order: on a duplicate `name@version`, the earlier one serves.
    seq: u64,
}

/// What the reloader knows about one `*.wasm` path.
#[derive(Debug, Default)]
struct Entry {
    serving: Option<Served>,
    /// The last failure and the fingerprint it failed with; the file is not
    /// retried until it changes.
    failed: Option<(Fingerprint, LoadError)>,
    /// A change not settled yet: its fingerprint, and when it was first seen.
    pending: Option<(Fingerprint, Instant)>,
}

/// Watches the plugins directory and publishes new registries.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    /// More directories scanned like `dir`: the registry store's plugins
    /// ([`crate::oci`]).
    extra_dirs: Vec<PathBuf>,
    /// The registry syncer's refusals, published with the load errors, and
    /// its wake-ups; with the generation last published.
    registry: Option<(crate::oci::Shared, u64)>,
    config: ReloadConfig,
    /// The sandbox the first registry was loaded with (one engine, one
    /// pool, one ticker).
    sandbox: Arc<Sandbox>,
    current: SharedRegistry,
    metrics: Option<JobMetrics>,
    entries: BTreeMap<PathBuf, Entry>,
    next_seq: u64,
}

impl Reloader {
    /// A reloader for `dir`, starting from the registry in `current` (its
    /// plugins are reused until their files change), loading changed files
    /// with `sandbox` (the one `current` was loaded with).
    pub fn new(
        dir: &Path,
        config: ReloadConfig,
        sandbox: Arc<Sandbox>,
        current: SharedRegistry,
    ) -> Self {
        let initial = current.load_full();
        let mut entries = BTreeMap::<PathBuf, Entry>::new();
        let mut next_seq = 0;
        for plugin in initial.plugins() {
            let path = plugin.path().to_path_buf();
            let served = Served {
                fingerprint: Fingerprint::of(&path),
                plugin: plugin.clone(),
                seq: next_seq,
            };
            next_seq += 1;
            entries.entry(path).or_default().serving = Some(served);
        }
        for error in initial.errors() {
            let path = error.path().to_path_buf();
            if let Some(fingerprint) = Fingerprint::of(&path) {
                entries.entry(path).or_default().failed = Some((fingerprint, error.clone()));
            }
        }
        Self {
            dir: dir.to_path_buf(),
            extra_dirs: Vec::new(),
            registry: None,
            config,
            sandbox,
            current,
            metrics: None,
            entries,
            next_seq,
        }
    }

    /// Counts reloads, and teaches the metrics the names of new plugins.
    #[must_use]
    pub fn with_metrics(mut self, metrics: JobMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Also scans `dir` (created if missing), where the registry syncer
    /// puts the plugins it pulled, and publishes its refusals with the
    /// load errors.
    #[must_use]
    pub fn with_registry(mut self, dir: &Path, shared: crate::oci::Shared) -> Self {
        if let Err(error) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), %error, "cannot create the registry plugins directory");
        }
        self.extra_dirs.push(dir.to_path_buf());
        self.registry = Some((shared, 0));
        self
    }

    /// Starts watching: installs the SIGHUP handler now (so a SIGHUP from
    /// here on rescans instead of killing the process), then runs in a task
    /// until `stop` turns true.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(error) => {
                tracing::warn!(%error, "cannot install the SIGHUP handler; SIGHUP will not rescan");
                None
            }
        };
        tokio::spawn(self.run(stop, hangup))
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>, mut hangup: Option<Signal>) {
        let wake = Arc::new(Notify::new());
        // Kept alive for the loop; dropping it stops the watcher thread.
        let _watchers: Vec<_> = if self.config.watch {
            std::iter::once(&self.dir)
                .chain(&self.extra_dirs)
                .filter_map(|dir| watch_dir(dir, wake.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let registry = self.registry.as_ref().map(|(shared, _)| shared.clone());
        let mut poll = (self.config.poll_ms > 0).then(|| {
            let period = Duration::from_millis(self.config.poll_ms);
            let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll
        });
        tracing::info!(
            dir = %self.dir.display(),
            watch = self.config.watch,
            settle_ms = self.config.settle_ms,
            poll_ms = self.config.poll_ms,
            "hot reload of plugins enabled"
        );
        // Anything that changed between the first load and the watch.
        self.scan().await;
        loop {
            let settle_at = self.next_settle();
            tokio::select! {
                () = stopped(&mut stop) => break,
                () = wake.notified() => tokio::time::sleep(DEBOUNCE).await,
                () = next_hangup(&mut hangup) => {
                    tracing::info!(dir = %self.dir.display(), "SIGHUP: rescanning the plugins directory");
                }
                () = next_tick(&mut poll) => {}
                () = sleep_until(settle_at) => {}
                () = registry_changed(registry.as_ref()) => {}
            }
            self.scan().await;
        }
    }

    /// When the earliest pending change will have settled.
    fn next_settle(&self) -> Option<Instant> {
        let settle = self.settle();
        self.entries
            .values()
            .filter_map(|e| e.pending.map(|(_, since)| since + settle))
            .min()
    }

    fn settle(&self) -> Duration {
        Duration::from_millis(self.config.settle_ms)
    }

    /// Compares the directory with what is serving: removed files stop
    /// serving, settled changes are loaded, and if anything changed a new
    /// registry is published.
    pub async fn scan(&mut self) {
        let mut files = Vec::new();
        for dir in std::iter::once(&self.dir).chain(&self.extra_dirs) {
            match wasm_files(dir) {
                Ok(found) => files.extend(found),
                Err(error) => {
                    // Keep serving: an unreadable directory is not an empty one.
                    tracing::warn!(dir = %dir.display(), %error, "cannot read the plugins directory; nothing reloaded");
                    return;
                }
            }
        }
        let mut changed = self.remove_missing(&files.iter().cloned().collect());
        if let Some((shared, seen)) = &mut self.registry {
            let generation = shared.errors().0;
            changed |= generation != *seen;
            *seen = generation;
        }
        let now = Instant::now();
        let settle = self.settle();
        let mut ready = Vec::new();
        for path in files {
            let Some(fingerprint) = Fingerprint::of(&path) else {
                continue; // Gone since the listing: the next scan removes it.
            };
            let entry = self.entries.entry(path.clone()).or_default();
            if entry
                .serving
                .as_ref()
                .is_some_and(|s| s.fingerprint == Some(fingerprint))
            {
                // Back to (or still) the serving version.
                entry.pending = None;
                changed |= entry.failed.take().is_some();
                continue;
            }
            if entry
                .failed
                .as_ref()
                .is_some_and(|(failed, _)| *failed == fingerprint)
            {
                entry.pending = None;
                continue;
            }
            let pending = entry.pending;
            match pending {
                Some((seen, since)) if seen == fingerprint => {
                    if now.duration_since(since) >= settle {
                        ready.push((path, fingerprint));
                    }
                }
                _ => {
                    tracing::debug!(path = %path.display(), "plugin file changed; waiting for it to settle");
                    entry.pending = Some((fingerprint, now));
                }
            }
        }
        for (path, fingerprint) in ready {
            changed |= self.load(&path, fingerprint).await;
        }
        if changed {
            self.publish();
        }
    }

    /// Forgets the entries whose file is gone; their plugins drain.
    fn remove_missing(&mut self, present: &BTreeSet<PathBuf>) -> bool {
        let gone: Vec<PathBuf> = self
            .entries
            .keys()
            .filter(|path| !present.contains(*path))
            .cloned()
            .collect();
        let mut changed = false;
        let mut freed_identity = false;
        for path in gone {
            let Some(entry) = self.entries.remove(&path) else {
                continue;
            };
            changed |= entry.failed.is_some();
            if let Some(served) = entry.serving {
                tracing::info!(
                    plugin = served.plugin.name(),
                    version = %served.plugin.version(),
                    path = %path.display(),
                    "plugin file removed; the plugin drains and new jobs for it get unknown-plugin"
                );
                if let Some(m) = &self.metrics {
                    m.plugin_removed();
                }
                changed = true;
                freed_identity = true;
            }
        }
        if freed_identity {
            // A file refused as a duplicate of a removed one may serve now.
            for entry in self.entries.values_mut() {
                if matches!(entry.failed, Some((_, LoadError::Identity { .. }))) {
                    entry.failed = None;
                }
            }
        }
        changed
    }

    /// Loads a settled file. Returns whether the registry must change.
    async fn load(&mut self, path: &Path, fingerprint: Fingerprint) -> bool {
        let result = self.sandbox.load_file(path).await;
        let after = Fingerprint::of(path);
        let seq = self.next_seq;
        let Some(entry) = self.entries.get_mut(path) else {
            return false;
        };
        if after != Some(fingerprint) {
            // Written to while it loaded: settle again, whatever the result.
            tracing::debug!(path = %path.display(), "plugin file changed while loading; waiting for it to settle");
            entry.pending = after.map(|f| (f, Instant::now()));
            return false;
        }
        entry.pending = None;
        let serving = entry
            .serving
            .as_ref()
            .map(|s| s.plugin.version().to_string());
        let result = result.and_then(|plugin| {
            let duplicate = self.entries.iter().find(|(other, e)| {
                *other != path
                    && e.serving.as_ref().is_some_and(|s| {
                        s.plugin.name() == plugin.name() && s.plugin.version() == plugin.version()
                    })
            });
            match duplicate {
                Some((other, _)) => Err(LoadError::Identity {
                    path: path.to_path_buf(),
                    message: format!(
                        "{}@{} is already loaded from {}",
                        plugin.name(),
                        plugin.version(),
                        other.display()
                    ),
                }),
                None => Ok(plugin),
            }
        });
        let Some(entry) = self.entries.get_mut(path) else {
            return false;
        };
        match result {
            Ok(plugin) => {
                tracing::info!(
                    plugin = plugin.name(),
                    version = %plugin.version(),
                    previous = serving.as_deref().unwrap_or("none"),
                    path = %path.display(),
                    cache = ?plugin.cache_state(),
                    "plugin reloaded"
                );
                if let Some(m) = &self.metrics {
                    m.plugin_loaded(plugin.cache_state().is_hit());
                }
                entry.serving = Some(Served {
                    plugin: Arc::new(plugin),
                    fingerprint: Some(fingerprint),
                    seq,
                });
                entry.failed = None;
                self.next_seq += 1;
            }
            Err(error) => {
                tracing::error!(
                    path = %path.display(),
                    error = %error.report(),
                    serving = serving.as_deref().unwrap_or("none"),
                    "plugin reload failed; the previous version (if any) keeps serving"
                );
                if let Some(m) = &self.metrics {
                    m.reload_failed();
                }
                entry.failed = Some((fingerprint, error));
            }
        }
        true
    }

    /// Builds the registry from what serves now and swaps it in.
    fn publish(&self) {
        let mut served: Vec<&Served> = self
            .entries
            .values()
            .filter_map(|e| e.serving.as_ref())
            .collect();
        served.sort_by_key(|s| s.seq);
        let registry_errors = self
            .registry
            .as_ref()
            .map(|(shared, _)| shared.errors().1)
            .unwrap_or_default();
        let errors = self
            .entries
            .values()
            .filter_map(|e| e.failed.as_ref().map(|(_, error)| error.clone()))
            .chain(registry_errors);
        let registry = Registry::from_parts(served.iter().map(|s| s.plugin.clone()), errors);
        if let Some(m) = &self.metrics {
            // Before the swap, so the first job of a new plugin is labelled.
            m.learn(&registry);
        }
        tracing::info!(
            plugins = registry.len(),
            errors = registry.errors().len(),
            "plugin registry swapped"
        );
        self.current.store(Arc::new(registry));
    }
}

/// A watcher that wakes the scan on any event in `dir` but reads; `None`
/// (with a warning) if the platform refuses, leaving the poll and SIGHUP.
fn watch_dir(dir: &Path, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Reads (our own loads included) change nothing.
        Ok(event) if event.kind.is_access() => {}
        Ok(_) => wake.notify_one(),
        Err(error) => {
            tracing::warn!(%error, "plugins directory watcher error; rescanning");
            wake.notify_one();
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch the plugins directory; relying on reload.poll_ms and SIGHUP");
            None
        }
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The `Ref` is dropped here: it must not live across an await.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn next_hangup(hangup: &mut Option<Signal>) {
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

async fn next_tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(poll) => {
            poll.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn registry_changed(shared: Option<&crate::oci::Shared>) {
    match shared {
        Some(shared) => shared.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reloader(dir: &Path, settle_ms: u64) -> (Reloader, SharedRegistry) {
        let mut sandbox = kiln_sandbox::SandboxConfig {
            cache: kiln_sandbox::CacheConfig {
                dir: None,
                baked_dir: None,
            },
            ..kiln_sandbox::SandboxConfig::default()
        };
        sandbox.pool.max_instances = 2;
        let sandbox = Arc::new(Sandbox::new(sandbox).unwrap());
        let current: SharedRegistry =
            Arc::new(arc_swap::ArcSwap::from_pointee(Registry::default()));
        let config = ReloadConfig {
            watch: false,
            settle_ms,
            poll_ms: 0,
        };
        let reloader = Reloader::new(dir, config, sandbox, current.clone());
        (reloader, current)
    }

    fn errors(current: &SharedRegistry) -> Vec<String> {
        current
            .load()
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[tokio::test]
    async fn a_file_still_being_written_is_not_reported_until_it_settles() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.wasm");
        let (mut reloader, current) = reloader(dir.path(), 200);
        let mut file = std::fs::File::create(&path).unwrap();
        // Written in chunks, more often than the settle period.
        for _ in 0..6 {
            file.write_all(&[0xab; 4096]).unwrap();
            file.flush().unwrap();
            reloader.scan().await;
            assert!(errors(&current).is_empty(), "{:?}", errors(&current));
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        drop(file);
        reloader.scan().await;
        assert!(errors(&current).is_empty());
        let settled = reloader.next_settle().unwrap();
        tokio::time::sleep_until(settled.into()).await;
        reloader.scan().await;
        let reported = errors(&current);
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(reported[0].contains("broken.wasm"), "{reported:?}");
        // Not retried (nor reported again) until it changes.
        assert!(reloader.next_settle().is_none());
        // Removed: the error goes with it.
        std::fs::remove_file(&path).unwrap();
        reloader.scan().await;
        assert!(errors(&current).is_empty());
        assert!(current.load().is_empty());
    }
}
