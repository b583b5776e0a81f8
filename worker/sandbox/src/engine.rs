//! The one wasmtime [`Engine`] per process, and its epoch ticker.
//!
//! The engine enables the component model, fuel, epoch interruption and the
//! pooling allocator sized from [`SandboxConfig`]. The ticker is one thread
//! that advances the epoch about every millisecond; it holds only a weak
//! reference to the engine, so it stops when the engine goes.

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

/// Builds the engine every plugin of the process shares.
pub fn build_engine(config: &SandboxConfig) -> Result<Engine, SandboxError> {
    let limits = &config.limits;
    let pool = &config.pool;
    let instances = pool.max_instances.max(1);

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
        // A slot is as large as the largest memory cap: the limiter enforces
        // the real, per-instance total.
        .max_memory_size(
            limits
                .memory_bytes
                .max(config.caps.memory_bytes.unwrap_or(0)),
        )
        // Reset only the pages a job dirtied (Linux 6.7+ `PAGEMAP_SCAN`;
        // elsewhere this falls back to resetting a prefix).
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(pool.keep_resident_bytes)
        .table_keep_resident(pool.keep_resident_bytes)
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

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine
/// is dropped. It catches up to the wall clock: if the thread was not
/// scheduled for a while, it adds the ticks it missed at once.
#[derive(Debug)]
pub struct EpochTicker {
    _thread: std::thread::JoinHandle<()>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub fn start(engine: &Engine) -> std::io::Result<Self> {
        let weak = engine.weak();
        let thread = std::thread::Builder::new()
            .name("kiln-epoch".into())
            .spawn(move || tick(weak))?;
        Ok(Self { _thread: thread })
    }
}

fn tick(weak: EngineWeak) {
    let start = Instant::now();
    let mut ticks: u128 = 0;
    loop {
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
