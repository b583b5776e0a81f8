//! The one wasmtime [`Engine`] per process, and its epoch ticker.
//!
//! The engine enables the component model, fuel, epoch interruption and the
//! pooling allocator sized from [`SandboxConfig`]. The ticker is one thread
//! that advances the epoch every [`EPOCH_TICK`] while a store is alive, and
//! parks while none has been for [`IDLE_TICKS`] ticks; it holds only a weak
//! reference to the engine, so it stops when the engine goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Enabled, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use crate::config::SandboxConfig;
use crate::error::SandboxError;

/// How often the epoch advances. Deadlines are checked against the wall
/// clock at each tick, so this is also their granularity, and how long a
/// spinning job runs before it yields to other tasks. Measured: 1 ms gave a
/// worst overshoot of 9.8 ms with 8 spinners on 2 threads, 500 us gives 6-8 ms.
pub const EPOCH_TICK: Duration = Duration::from_micros(500);

/// Ticks in a row with no store alive before the ticker parks. Each tick is
/// a thread wake-up (measured: 3.8 % of a core for an idle worker on this
/// project's VM); a worker with no job in the sandbox needs none.
pub const IDLE_TICKS: u32 = 20;

/// How long a parked ticker sleeps before it checks that its engine is
/// still there (a store being created wakes it at once).
const PARKED_CHECK: Duration = Duration::from_secs(1);

/// Builds the engine every plugin of the process shares.
pub fn build_engine(config: &SandboxConfig) -> Result<Engine, SandboxError> {
    let limits = &config.limits;
    let pool = &config.pool;
    let instances = pool.max_instances.max(1);

    // A slot is as large as the largest memory cap: the limiter enforces
    // the real, per-instance total.
    let slot = limits
        .memory_bytes
        .max(config.caps.memory_bytes.unwrap_or(0));
    let keep_resident = keep_resident_bytes(config);

    let mut pooling = PoolingAllocationConfig::new();
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(pool.max_core_instances_per_component))
        .total_memories(instances.saturating_mul(pool.max_memories_per_component))
        .total_tables(instances.saturating_mul(pool.max_tables_per_component))
        // One fiber stack per job in flight.
        .total_stacks(instances)
        .max_core_instances_per_component(pool.max_core_instances_per_component)
        .max_memories_per_component(pool.max_memories_per_component)
        .max_tables_per_component(pool.max_tables_per_component)
        .max_memories_per_module(pool.max_memories_per_component)
        .max_tables_per_module(pool.max_tables_per_component)
        .table_elements(pool.max_table_elements)
        .max_memory_size(slot)
        // Reset only the pages a job dirtied (Linux 6.7+ `PAGEMAP_SCAN`;
        // elsewhere this falls back to resetting a prefix).
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(keep_resident)
        .async_stack_keep_resident(64 << 10);

    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(limits.max_wasm_stack_bytes)
        // The fiber stack holds the wasm stack plus host frames.
        .async_stack_size(limits.max_wasm_stack_bytes + (512 << 10))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));

    Engine::new(&cfg).map_err(|e| SandboxError::Engine(format!("{e:#}")))
}

/// See [`SandboxConfig::keep_resident_bytes`].
pub(crate) fn keep_resident_bytes(config: &SandboxConfig) -> usize {
    let slot = config
        .limits
        .memory_bytes
        .max(config.caps.memory_bytes.unwrap_or(0));
    keep_resident(
        config.pool.keep_resident_bytes,
        slot,
        PoolingAllocationConfig::is_pagemap_scan_available(),
    )
}

/// `configured` if set; else, with `PAGEMAP_SCAN` (which resets only the
/// pages a job dirtied), 8 MiB (at most the slot), so each plugin keeps its
/// own dirty set resident and its next job takes no page fault on it
/// (measured: Go's `textcase` went from 623 minor faults per fresh job to 2,
/// and 4 MiB did as well as 64 MiB; docs/PLUGINS.md); without it, 128 KiB,
/// because then the whole prefix is reset after every job, dirty or not.
fn keep_resident(configured: Option<usize>, slot: usize, pagemap_scan: bool) -> usize {
    configured.unwrap_or(if pagemap_scan {
        (8 << 20).min(slot)
    } else {
        128 << 10
    })
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while any store holds
/// a [`Ticking`] guard, until the engine is dropped. It catches up to the
/// wall clock: if the thread was not scheduled for a while, it adds the
/// ticks it missed at once.
#[derive(Debug)]
pub struct EpochTicker {
    thread: std::thread::JoinHandle<()>,
    state: Arc<TickerState>,
}

/// What the ticker thread and the stores share.
#[derive(Debug, Default)]
struct TickerState {
    /// Stores alive now.
    stores: AtomicUsize,
    /// The ticker is parked (or about to park).
    parked: AtomicBool,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub fn start(engine: &Engine) -> std::io::Result<Self> {
        let weak = engine.weak();
        let state = Arc::new(TickerState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-epoch".into())
            .spawn(move || tick(&weak, &shared))?;
        Ok(Self { thread, state })
    }

    /// A handle that stores use to keep the epoch advancing.
    pub(crate) fn handle(&self) -> TickerHandle {
        TickerHandle {
            state: self.state.clone(),
            thread: self.thread.thread().clone(),
        }
    }
}

/// Hands out [`Ticking`] guards; one per plugin.
#[derive(Debug, Clone)]
pub(crate) struct TickerHandle {
    state: Arc<TickerState>,
    thread: Thread,
}

impl TickerHandle {
    /// Keeps the epoch advancing until the guard is dropped (one per
    /// store), waking the ticker if it is parked.
    pub(crate) fn ticking(&self) -> Ticking {
        // Pairs with the ticker's `parked` store then `stores` load: with
        // both sequentially consistent, either it sees this store, or this
        // sees it parked and wakes it (an extra wake-up is harmless).
        if self.state.stores.fetch_add(1, SeqCst) == 0 && self.state.parked.load(SeqCst) {
            self.thread.unpark();
        }
        Ticking(self.state.clone())
    }
}

/// Keeps the ticker running while alive (see [`TickerHandle::ticking`]).
#[derive(Debug)]
pub(crate) struct Ticking(Arc<TickerState>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.stores.fetch_sub(1, SeqCst);
    }
}

fn tick(weak: &EngineWeak, state: &TickerState) {
    let mut start = Instant::now();
    let mut ticks: u128 = 0;
    let mut idle = 0;
    loop {
        if state.stores.load(SeqCst) > 0 {
            idle = 0;
        } else if idle < IDLE_TICKS {
            idle += 1;
        } else {
            state.parked.store(true, SeqCst);
            if state.stores.load(SeqCst) == 0 {
                std::thread::park_timeout(PARKED_CHECK);
            }
            state.parked.store(false, SeqCst);
            if weak.upgrade().is_none() {
                return;
            }
            // Nothing ran while parked: no ticks to catch up on. Woken by
            // the timeout with still no store, park again at once.
            (start, ticks) = (Instant::now(), 0);
            idle = if state.stores.load(SeqCst) == 0 {
                IDLE_TICKS
            } else {
                0
            };
            continue;
        }
        std::thread::sleep(EPOCH_TICK);
        let Some(engine) = weak.upgrade() else { return };
        let due = start.elapsed().as_nanos() / EPOCH_TICK.as_nanos();
        // Catch up on ticks missed while descheduled, but never spin long.
        let behind = due.saturating_sub(ticks).clamp(1, 1_000);
        for _ in 0..behind {
            engine.increment_epoch();
        }
        ticks = due.max(ticks + 1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Polls `check` for up to two seconds.
    fn eventually(check: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn keep_resident_is_the_slot_only_with_pagemap_scan() {
        assert_eq!(keep_resident(None, 64 << 20, true), 8 << 20);
        assert_eq!(keep_resident(None, 4 << 20, true), 4 << 20);
        assert_eq!(keep_resident(None, 64 << 20, false), 128 << 10);
        assert_eq!(keep_resident(Some(4096), 64 << 20, true), 4096);
        assert_eq!(keep_resident(Some(4096), 64 << 20, false), 4096);
    }

    #[test]
    fn the_ticker_parks_with_no_store_and_runs_while_one_lives() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        let handle = ticker.handle();
        let parked = || ticker.state.parked.load(SeqCst);
        assert!(eventually(parked), "an idle ticker parks");

        let ticking = handle.ticking();
        assert!(eventually(|| !parked()), "a store wakes it");
        // It keeps ticking for as long as the store lives.
        std::thread::sleep(EPOCH_TICK * (IDLE_TICKS + 10));
        assert!(!parked());

        drop(ticking);
        assert!(eventually(parked), "it parks again once the store is gone");
        assert_eq!(ticker.state.stores.load(SeqCst), 0);
    }
}
