//! The sandbox's settings: per-job limits, the instance pool and the
//! component cache. The worker's typed config embeds [`SandboxConfig`] as its
//! `[sandbox]` section; every field has a default, so an empty section works.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Everything the sandbox needs to know, with production defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Hard limits applied to every job.
    pub limits: Limits,
    /// The engine-wide pooling allocator.
    pub pool: PoolConfig,
    /// Where compiled components are kept between starts.
    pub cache: CacheConfig,
    /// Per-plugin config served through `get-config` after the job's own
    /// config, keyed by plugin name. It wins over a manifest's `[config]`.
    /// Default: empty.
    pub plugin_config: BTreeMap<String, BTreeMap<String, String>>,
    /// The most a plugin manifest may ask for.
    pub caps: Caps,
}

/// The operator's caps on plugin manifests (`<stem>.toml`). A manifest
/// asking for more is refused at load. An unset cap is the matching default
/// in `[sandbox.limits]`, so by default a manifest can only lower limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Caps {
    /// Most memory per job a manifest may ask for, in bytes. The pool's
    /// memory slots are sized for it. Default: `limits.memory_bytes`.
    pub memory_bytes: Option<usize>,
    /// Most fuel per job, in fuel units. Default: `limits.fuel`.
    pub fuel: Option<u64>,
    /// Longest deadline per job, in milliseconds. Default: `limits.timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// Largest input, in bytes. Default: `limits.max_input_bytes`.
    pub max_input_bytes: Option<usize>,
    /// Largest output, in bytes. Default: `limits.max_output_bytes`.
    pub max_output_bytes: Option<usize>,
    /// Host directories under which manifests may grant read-only access
    /// (symlinks resolved). Default: none, so no directory can be granted.
    pub allowed_dirs: Vec<PathBuf>,
    /// The services manifests may grant outbound HTTP access to, in the
    /// `[grants] outbound` syntax (`scheme://host[:port]`, host a name,
    /// `*.domain` or an IP literal, port a number or `*`). A manifest entry
    /// that no entry here covers is refused at load. Default: none, so no
    /// plugin can reach anything.
    pub outbound: Vec<crate::http::OutboundGrant>,
    /// Lets a grant by name reach private addresses (loopback, RFC 1918,
    /// ULA, link-local, CGNAT, cloud metadata) when the name resolves there.
    /// Without it only a grant naming the IP literally reaches one.
    /// Default: false.
    pub allow_private_outbound: bool,
    /// Most outgoing HTTP requests per job a manifest may ask for.
    /// Default: `limits.max_requests`.
    pub max_requests: Option<u32>,
    /// Most response body bytes per job a manifest may ask for.
    /// Default: `limits.max_response_bytes`.
    pub max_response_bytes: Option<usize>,
    /// Longest per-request timeout a manifest may ask for, in milliseconds.
    /// Default: `limits.request_timeout_ms`.
    pub request_timeout_ms: Option<u64>,
    /// Most jobs one instance may serve, as a manifest's
    /// `[instances] reuse_jobs` asks (docs/SANDBOX.md, "Warm instances").
    /// Default: 1, so every job gets a fresh instance and no manifest can
    /// turn reuse on.
    #[schemars(range(min = 1))]
    pub reuse_jobs: Option<u32>,
}

/// Limits on every job. A job may ask for a shorter deadline, never a longer one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Fuel budget per job, in wasmtime fuel units (about one per wasm
    /// instruction). Deterministic CPU bound; exhausting it gives
    /// `fuel-exhausted`. Default: 10,000,000,000.
    pub fuel: u64,
    /// Cap on the total linear memory of one job's instance, in bytes, summed
    /// over all of its memories. Hitting it gives `memory-limit`.
    /// Default: 64 MiB.
    #[schemars(range(min = 65_536))]
    pub memory_bytes: usize,
    /// Wall-clock deadline per job, in milliseconds, including instantiation.
    /// Hitting it gives `timeout`. Default: 10,000 (10 s).
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// Largest input accepted, in bytes (for a batch, the sum of its inputs).
    /// Larger gives `payload-too-large`. Default: 4 MiB.
    pub max_input_bytes: usize,
    /// Largest output a plugin may return, in bytes (the serialized reply is
    /// checked again, since JSON escaping can grow it). Larger gives
    /// `output-too-large`. Default: 8 MiB.
    pub max_output_bytes: usize,
    /// Log lines a job may emit through `host-api.log`; later lines are
    /// dropped with one marker line. Default: 1,000.
    pub max_log_lines: u32,
    /// Bytes of log text a job may emit through `host-api.log`; later lines
    /// are dropped with one marker line. Default: 64 KiB.
    pub max_log_bytes: usize,
    /// Bytes of guest stdout and of guest stderr kept per job and forwarded
    /// to the host log; the rest is dropped with a truncation marker.
    /// Default: 16 KiB.
    pub max_stdio_bytes: usize,
    /// Maximum wasm call-stack size, in bytes. Deep recursion past it traps
    /// with `stack-overflow`. Default: 512 KiB.
    pub max_wasm_stack_bytes: usize,
    /// Outgoing HTTP requests a job may make (only a plugin with outbound
    /// grants makes any); later ones are refused with
    /// `HTTP-request-denied` and audited. Default: 16.
    pub max_requests: u32,
    /// Response body bytes a job may read over all its requests; the body
    /// that passes it is cut there with `HTTP-response-body-size`.
    /// Default: 4 MiB.
    pub max_response_bytes: usize,
    /// Longest one outgoing request may take from connect to its last body
    /// byte, in milliseconds; the job's own deadline still applies.
    /// Default: 5,000.
    #[schemars(range(min = 1))]
    pub request_timeout_ms: u64,
}

impl SandboxConfig {
    /// What the pool keeps resident of each memory and table it reuses
    /// (`pool.keep_resident_bytes`, or its default on this host).
    pub fn keep_resident_bytes(&self) -> usize {
        crate::engine::keep_resident_bytes(self)
    }
}

impl Limits {
    /// The job's deadline: its own request if shorter, else the configured one.
    pub fn deadline_for(&self, requested_ms: Option<u64>) -> Duration {
        let ms = requested_ms.map_or(self.timeout_ms, |r| r.min(self.timeout_ms));
        Duration::from_millis(ms)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            memory_bytes: 64 << 20,
            timeout_ms: 10_000,
            max_input_bytes: 4 << 20,
            max_output_bytes: 8 << 20,
            max_log_lines: 1_000,
            max_log_bytes: 64 << 10,
            max_stdio_bytes: 16 << 10,
            max_wasm_stack_bytes: 512 << 10,
            max_requests: 16,
            max_response_bytes: 4 << 20,
            request_timeout_ms: 5_000,
        }
    }
}

/// The pooling allocator, shared by every plugin in the process. It is sized
/// up front, so its limits are also the worker's concurrency ceiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Component instances alive at once (jobs in flight, plus plugin
    /// validation at load). Beyond it a job fails with a retryable `internal`
    /// error. Default: 128.
    #[schemars(range(min = 1))]
    pub max_instances: u32,
    /// Core instances one component may hold. Rust components hold a few;
    /// adapted JS or Python components hold more. Default: 50.
    pub max_core_instances_per_component: u32,
    /// Linear memories one component may hold. Default: 8.
    pub max_memories_per_component: u32,
    /// Tables one component may hold. Default: 32.
    pub max_tables_per_component: u32,
    /// Elements per table. Interpreted runtimes (Python, JS) need large
    /// tables. Default: 100,000.
    pub max_table_elements: usize,
    /// Bytes of each linear memory and table kept resident when a slot is
    /// reused: reset in place (memset, or copied back from the memory image)
    /// instead of returned to the kernel, so the next job does not fault
    /// them in again. Where Linux has `PAGEMAP_SCAN` (6.7 and later) only the
    /// pages a job dirtied are reset, so this is a budget: each plugin keeps
    /// resident what its own jobs dirty, up to it. Elsewhere the first this
    /// many bytes are reset after every job, dirty or not. Default: unset,
    /// which is 8 MiB (at most the memory slot) with `PAGEMAP_SCAN` and
    /// 128 KiB without it.
    pub keep_resident_bytes: Option<usize>,
    /// How long a warm instance (of a plugin whose `[instances] reuse_jobs`
    /// is above one) may sit idle before it is dropped and its pool slot
    /// freed, in milliseconds. Default: 30,000 (30 s).
    #[schemars(range(min = 1))]
    pub idle_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_instances: 128,
            max_core_instances_per_component: 50,
            max_memories_per_component: 8,
            max_tables_per_component: 32,
            max_table_elements: 100_000,
            keep_resident_bytes: None,
            idle_timeout_ms: 30_000,
        }
    }
}

/// The two-tier component cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Writable cache directory: components compiled here are reused by
    /// later starts and by other workers sharing the directory. `None`
    /// compiles in memory on every start. Default: `.kiln-cache`.
    pub dir: Option<PathBuf>,
    /// Read-only directory filled by `kiln precompile` at image build time,
    /// consulted before `dir`. Default: none.
    pub baked_dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            dir: Some(PathBuf::from(".kiln-cache")),
            baked_dir: None,
        }
    }
}
