//! The worker's counters: shared by the delivery tasks and the settler that
//! update them, and read by the worker's `/metrics` at scrape time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// The plugin label of a retry or dead letter whose job did not resolve to
/// a loaded plugin (so that names taken from job bodies never make series).
pub(crate) const UNKNOWN_PLUGIN: &str = "unknown";

/// Counts by (plugin, error kind): the plugin is one a job resolved to
/// (or [`UNKNOWN_PLUGIN`]), the kind one of the bounded error kinds.
pub type ByPluginKind = BTreeMap<(String, &'static str), u64>;

/// Counters and state the worker exposes (readiness, metrics).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Jobs acked after their reply (or retry, or dead letter) was confirmed.
    pub acked: AtomicU64,
    /// Retries scheduled.
    pub retried: AtomicU64,
    /// Jobs dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Replies the broker returned as unroutable.
    pub unroutable_replies: AtomicU64,
    /// Reconnections after a lost connection or consumer.
    pub reconnects: AtomicU64,
    /// Retries scheduled, by plugin and error kind.
    retried_by: Mutex<ByPluginKind>,
    /// Jobs dead-lettered, by plugin and error kind.
    dead_lettered_by: Mutex<ByPluginKind>,
}

fn add(counts: &Mutex<ByPluginKind>, plugin: &str, kind: &'static str) {
    let mut counts = counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match counts.get_mut(&(plugin.to_owned(), kind)) {
        Some(n) => *n += 1,
        None => {
            counts.insert((plugin.to_owned(), kind), 1);
        }
    }
}

fn snapshot(counts: &Mutex<ByPluginKind>) -> ByPluginKind {
    counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

impl WorkerStats {
    /// Counts a retry scheduled for a job of `plugin` that failed with `kind`.
    pub fn count_retry(&self, plugin: &str, kind: &'static str) {
        self.retried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        add(&self.retried_by, plugin, kind);
    }

    /// Counts a job of `plugin` dead-lettered with error `kind`.
    pub fn count_dead_letter(&self, plugin: &str, kind: &'static str) {
        self.dead_lettered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        add(&self.dead_lettered_by, plugin, kind);
    }

    /// The retries scheduled so far, by plugin and error kind.
    pub fn retries_by_plugin_kind(&self) -> ByPluginKind {
        snapshot(&self.retried_by)
    }

    /// The jobs dead-lettered so far, by plugin and error kind.
    pub fn dead_letters_by_plugin_kind(&self) -> ByPluginKind {
        snapshot(&self.dead_lettered_by)
    }
}
