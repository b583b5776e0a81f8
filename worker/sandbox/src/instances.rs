//! Warm instances: the opt-in reuse of one instance for several jobs of a
//! plugin (manifest `[instances] reuse_jobs`, capped by the operator's
//! `sandbox.caps.reuse_jobs`; docs/SANDBOX.md, "Warm instances").
//!
//! Each [`Plugin`](crate::Plugin) owns one [`Instances`] pool, so a reload
//! (a new prepared plugin) starts a new, empty pool and the old instances go
//! with the old plugin. An instance is in the pool only while idle: a job
//! takes it out, so it serves one job at a time, and gives it back only if
//! the job left it sound and it has served fewer than `reuse_jobs` jobs
//! (`plugin.rs` decides, and resets fuel, the deadline and the job's
//! identity and config before each job). The pool keeps at most `max_idle`
//! instances, and a sweeper task drops those idle for longer than the idle
//! timeout, freeing their slots in the engine's instance pool.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::component::Instance;

use crate::host::JobState;

/// An instance that has served at least one job, with its store.
pub(crate) struct Warm {
    pub(crate) store: Store<JobState>,
    pub(crate) instance: Instance,
    /// Jobs it has served.
    pub(crate) served: u32,
}

/// One plugin's idle warm instances.
pub(crate) struct Instances {
    reuse_jobs: u32,
    max_idle: usize,
    idle_timeout: Duration,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Idle instances, the most recently used last.
    idle: Vec<(Warm, Instant)>,
    /// A sweeper task is running for this pool.
    sweeping: bool,
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instances")
            .field("reuse_jobs", &self.reuse_jobs)
            .field("max_idle", &self.max_idle)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Instances {
    /// A pool for instances that serve at most `reuse_jobs` jobs each
    /// (1: none is ever kept), keeping at most `max_idle` idle instances for
    /// at most `idle_timeout` each.
    pub(crate) fn new(reuse_jobs: u32, max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            reuse_jobs: reuse_jobs.max(1),
            max_idle,
            idle_timeout,
            pool: Mutex::default(),
        })
    }

    /// Most jobs one instance serves.
    pub(crate) fn reuse_jobs(&self) -> u32 {
        self.reuse_jobs
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        // Nothing panics while holding the lock; a poisoned pool is still a
        // list of sound idle instances.
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle instances now.
    pub(crate) fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    /// The most recently used idle instance that has not timed out, if any.
    pub(crate) fn take(&self) -> Option<Warm> {
        if self.reuse_jobs <= 1 {
            return None;
        }
        let now = Instant::now();
        let (warm, expired) = {
            let mut pool = self.lock();
            let expired = self.expire(&mut pool, now);
            (pool.idle.pop().map(|(warm, _)| warm), expired)
        };
        // Stores are dropped outside the lock.
        drop(expired);
        warm
    }

    /// Keeps `warm` for a later job if it may serve more and there is room;
    /// otherwise it is dropped (retired).
    pub(crate) fn give_back(self: &Arc<Self>, mut warm: Warm) {
        if warm.served >= self.reuse_jobs {
            return;
        }
        warm.store.data_mut().idle();
        let start_sweeper = {
            let mut pool = self.lock();
            if pool.idle.len() >= self.max_idle {
                return;
            }
            pool.idle.push((warm, Instant::now()));
            !std::mem::replace(&mut pool.sweeping, true)
        };
        if start_sweeper {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(sweep(Arc::downgrade(self), self.idle_timeout));
                }
                // No runtime to sweep on: `take` still drops what timed out.
                Err(_) => self.lock().sweeping = false,
            }
        }
    }

    /// Removes the idle instances that timed out by `now`.
    fn expire(&self, pool: &mut Pool, now: Instant) -> Vec<(Warm, Instant)> {
        let timeout = self.idle_timeout;
        let (expired, kept) = std::mem::take(&mut pool.idle)
            .into_iter()
            .partition(|(_, since)| now.saturating_duration_since(*since) >= timeout);
        pool.idle = kept;
        expired
    }
}

/// Drops a pool's idle instances as they time out, until the pool is empty
/// (the next instance given back starts a new sweeper) or gone.
async fn sweep(pool: Weak<Instances>, timeout: Duration) {
    let mut wait = timeout;
    loop {
        tokio::time::sleep(wait).await;
        let Some(instances) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (expired, done) = {
            let mut pool = instances.lock();
            let expired = instances.expire(&mut pool, now);
            let oldest = pool.idle.iter().map(|(_, since)| *since).min();
            match oldest {
                Some(oldest) => wait = (oldest + timeout).saturating_duration_since(now),
                None => pool.sweeping = false,
            }
            (expired, oldest.is_none())
        };
        if !expired.is_empty() {
            tracing::debug!(
                dropped = expired.len(),
                "idle warm instances dropped after the idle timeout"
            );
        }
        drop(expired);
        if done {
            return;
        }
        // Never spin: the oldest may have just expired.
        wait = wait.max(Duration::from_millis(1));
    }
}
