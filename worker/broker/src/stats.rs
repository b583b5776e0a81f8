//! The worker's counters: shared by the delivery tasks and the settler that
//! update them, and read by the worker's `/metrics` at scrape time.

use std::sync::atomic::AtomicU64;

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
}
