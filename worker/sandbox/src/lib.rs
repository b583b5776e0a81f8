//! Kiln's plugin sandbox.
//!
//! This crate owns wasmtime: the one [`Engine`](wasmtime::Engine) per
//! process, the verified two-tier component cache, the `kiln:plugin` host
//! (`host-api` and a deny-by-default WASI) and the hard limits on every job
//! (fuel, total memory, a wall-clock deadline, input and output size).
//!
//! It knows nothing about brokers, job records or the outcome table: callers
//! hand it a plugin name, an input and a [`JobContext`], and get back a
//! [`Run`] with a typed [`JobFailure`] on error, and the [`Denials`] of the
//! capabilities the plugin reached for and was refused.

mod audit;
mod bindings;
mod cache;
mod config;
pub mod contract;
mod engine;
mod error;
mod host;
pub mod http;
mod instances;
pub mod manifest;
mod network;
mod plugin;
mod registry;
mod stdio;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

pub use audit::{Capability, Denial, Denials, MAX_AUDITED};
pub use cache::{CacheEntry, CacheState, ComponentCache};
pub use config::{CacheConfig, Caps, Limits, PoolConfig, SandboxConfig};
pub use engine::EPOCH_TICK;
pub use error::{Cause, JobFailure, LoadError, PluginErrorKind, SandboxError};
pub use http::HttpRequest;
pub use plugin::{BatchRun, JobContext, Output, Plugin, Run, SingleRun};
pub use registry::{Registry, ResolveError, canary_bucket, wasm_files};

use engine::EpochTicker;
use host::JobState;

/// One plugin file compiled by [`Sandbox::precompile_dir`].
#[derive(Debug)]
pub struct Precompiled {
    /// The plugin file.
    pub wasm: PathBuf,
    /// Its cache entry, or why it could not be compiled.
    pub entry: Result<CacheEntry, String>,
}

/// The engine, the host functions and the cache: everything needed to load
/// plugins. One per process.
pub struct Sandbox {
    engine: Engine,
    linker: Arc<Linker<JobState>>,
    cache: ComponentCache,
    limits: Arc<Limits>,
    config: SandboxConfig,
    ticker: EpochTicker,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the engine and its pool, links the host, and starts the epoch
    /// ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let engine = engine::build_engine(&config)?;
        let mut linker = Linker::<JobState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| network::shadow_sockets(&mut linker))
            .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            .map_err(|e| SandboxError::Link(format!("{e:#}")))?;
        bindings::BatchTextPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| SandboxError::Link(format!("{e:#}")))?;
        let ticker = EpochTicker::start(&engine)
            .map_err(|e| SandboxError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            cache: ComponentCache::new(&engine, &config.cache),
            limits: Arc::new(config.limits.clone()),
            engine,
            linker: Arc::new(linker),
            config,
            ticker,
        })
    }

    /// The process's engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The component cache.
    pub fn cache(&self) -> &ComponentCache {
        &self.cache
    }

    /// The config the sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Loads one plugin file: compiled (or loaded from the cache) off the
    /// async threads, then linked, checked against the world, and asked for
    /// its identity.
    pub async fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        let manifest_error = |message: String| LoadError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        // The manifest first: a bad one fails before any compile work.
        let manifest = manifest::read(&manifest::path_for(path)).map_err(manifest_error)?;
        let settings = manifest
            .as_ref()
            .map(|m| m.resolve(&self.limits, &self.config.caps))
            .transpose()
            .map_err(manifest_error)?;
        let wasm = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Read {
                path: path.to_path_buf(),
                source: Arc::new(source),
            })?;
        let (engine, cache, owned) = (self.engine.clone(), self.cache.clone(), path.to_path_buf());
        let wasm_bytes = wasm.len() as u64;
        let compiled = tokio::task::spawn_blocking(move || cache.load(&engine, &owned, &wasm))
            .await
            .map_err(|e| wasmtime::Error::new(e).context("compile task failed"))
            .and_then(|r| r);
        let (component, cache_state) = compiled.map_err(|e| LoadError::Compile {
            path: path.to_path_buf(),
            source: Arc::from(e.into_boxed_dyn_error()),
        })?;
        let mut plugin = Plugin::prepare(plugin::Prepared {
            path,
            wasm_bytes,
            component,
            cache_state,
            linker: &self.linker,
            ticker: self.ticker.handle(),
            limits: self.limits.clone(),
            plugin_configs: &self.config.plugin_config,
            idle_timeout: std::time::Duration::from_millis(self.config.pool.idle_timeout_ms),
            max_instances: self.config.pool.max_instances,
        })
        .await?;
        if let (Some(settings), Some(manifest)) = (settings, manifest) {
            plugin
                .apply(settings, manifest.description)
                .map_err(manifest_error)?;
        }
        Ok(plugin)
    }

    /// Loads every `*.wasm` in `dir`. A file that fails is recorded in the
    /// registry's errors (and logged); the others still load.
    pub async fn load_dir(&self, dir: &Path) -> std::io::Result<Registry> {
        let mut registry = Registry::default();
        for path in wasm_files(dir)? {
            match self.load_file(&path).await {
                Ok(plugin) => {
                    tracing::info!(plugin = plugin.name(), version = %plugin.version(), path = %path.display(), cache = ?plugin.cache_state(), "plugin loaded");
                    registry.insert(plugin);
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), error = %error.report(), "plugin rejected");
                    registry.push_error(error);
                }
            }
        }
        Ok(registry)
    }

    /// Compiles every `*.wasm` in `dir` into `out` (the baked tier at image
    /// build time, or the writable cache), one result per file.
    pub fn precompile_dir(&self, dir: &Path, out: &Path) -> std::io::Result<Vec<Precompiled>> {
        Ok(wasm_files(dir)?
            .into_iter()
            .map(|wasm| {
                let entry = std::fs::read(&wasm)
                    .map_err(|e| format!("cannot read: {e}"))
                    .and_then(|bytes| self.cache.precompile_into(&self.engine, out, &bytes));
                Precompiled { wasm, entry }
            })
            .collect())
    }
}
