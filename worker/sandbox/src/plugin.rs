//! A loaded plugin, and running one job in a fresh instance of it.
//!
//! Each plugin keeps an `InstancePre` (imports resolved once, at load). Each
//! job gets a fresh `Store` with its own fuel, memory limiter, deadline and
//! WASI context, so no state leaks from one job to the next; the store is
//! dropped when the job ends and its pool slot is reused.
//!
//! The exception is opt-in: a plugin whose manifest sets `[instances]
//! reuse_jobs` above 1 (within the operator's cap) runs a job in a warm
//! instance when one is idle (`instances.rs`). Fuel, the deadline, the job's
//! identity and config and the per-job budgets are reset for each job; the
//! memory cap spans the instance's jobs; a job that ends in a trap, a limit
//! or an `internal-error` retires its instance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Func, Instance, InstancePre, Linker};
use wasmtime::{Engine, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};

use crate::audit::Denials;
use crate::bindings::exports::kiln::plugin::{batch, plugin};
use crate::bindings::kiln::plugin::types::{ErrorKind, ProcessError, ProcessResult};
use crate::cache::CacheState;
use crate::config::Limits;
use crate::engine::TickerHandle;
use crate::error::{JobFailure, LoadError, PluginErrorKind};
use crate::host::{JobIdentity, JobState, MemoryCapReached};
use crate::http::HttpRequest;
use crate::instances::{Instances, Warm};
use crate::manifest::{Canary, Grants, Settings};

/// What a caller says about the job it runs.
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    /// The job's id, for logs.
    pub job_id: Arc<str>,
    /// The job's config, served first by `get-config`.
    pub config: Arc<BTreeMap<String, String>>,
    /// A deadline the job asks for; it can only shorten the configured one.
    pub timeout_ms: Option<u64>,
}

/// One successful transformation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The plugin's output text.
    pub output: String,
    /// The plugin's metadata, in the order it gave them.
    pub metadata: Vec<(String, String)>,
}

/// The result of running a job, with what it cost.
#[derive(Debug, Clone)]
pub struct Run<T> {
    /// What happened.
    pub result: T,
    /// Wall-clock time, including instantiation.
    pub duration: Duration,
    /// Fuel consumed, summed over every store the job used.
    pub fuel_used: u64,
    /// Time from the start of the job until its fresh instance was ready
    /// (store creation and instantiation; part of `duration`), summed over
    /// every instance the job used; zero if none was created.
    pub instantiation: Duration,
    /// The capabilities the plugin reached for and was refused, as the host
    /// saw them (socket creation, name lookups), over every instance the
    /// job used. Each was also logged under `kiln::audit`, within a budget.
    pub denials: Denials,
    /// The outgoing HTTP requests its grants allowed, over every instance
    /// the job used (at most `max_requests` per instance).
    pub http: Vec<HttpRequest>,
    /// Whether the job ran in a warm instance that had served an earlier
    /// job (only with `[instances] reuse_jobs` above 1).
    pub reused: bool,
}

/// The result of a single-input job.
pub type SingleRun = Run<Result<Output, JobFailure>>;
/// The result of a batch job: one result per input, or a whole-batch failure.
pub type BatchRun = Run<Result<Vec<Result<Output, JobFailure>>, JobFailure>>;

/// A plugin ready to run jobs.
pub struct Plugin {
    name: String,
    version: semver::Version,
    /// `version` as text, for the audit lines of every job.
    version_label: Arc<str>,
    path: PathBuf,
    wasm_bytes: u64,
    cache_state: CacheState,
    pre: InstancePre<JobState>,
    plugin_exports: plugin::GuestIndices,
    batch_exports: Option<batch::GuestIndices>,
    engine: Engine,
    /// Keeps the epoch advancing while a store of this plugin is alive.
    ticker: TickerHandle,
    limits: Arc<Limits>,
    plugin_config: Arc<BTreeMap<String, String>>,
    grants: Arc<Grants>,
    /// Turns for this plugin's jobs, when its manifest bounds them.
    turns: Option<Arc<tokio::sync::Semaphore>>,
    description: String,
    canary: Option<Canary>,
    /// Idle warm instances (none kept unless the manifest asks for reuse).
    instances: Arc<Instances>,
    /// How long a warm instance may stay idle.
    idle_timeout: Duration,
    /// The engine's instance pool size: the idle bound when the manifest
    /// sets no `max_concurrency`.
    max_instances: u32,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Everything needed to turn a compiled component into a [`Plugin`].
pub(crate) struct Prepared<'a> {
    pub(crate) path: &'a Path,
    pub(crate) wasm_bytes: u64,
    pub(crate) component: wasmtime::component::Component,
    pub(crate) cache_state: CacheState,
    pub(crate) linker: &'a Linker<JobState>,
    pub(crate) ticker: TickerHandle,
    pub(crate) limits: Arc<Limits>,
    pub(crate) plugin_configs: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// How long a warm instance may stay idle (`sandbox.pool.idle_timeout_ms`).
    pub(crate) idle_timeout: Duration,
    /// `sandbox.pool.max_instances`.
    pub(crate) max_instances: u32,
}

impl Plugin {
    /// Links the component against the host, checks it fits the world, and
    /// asks it for its name and version (in a limited store, like any job).
    pub(crate) async fn prepare(p: Prepared<'_>) -> Result<Self, LoadError> {
        let world = |message: String| LoadError::World {
            path: p.path.to_path_buf(),
            message,
        };
        let identity = |message: String| LoadError::Identity {
            path: p.path.to_path_buf(),
            message,
        };
        crate::contract::check(&p.component).map_err(|m| LoadError::Contract {
            path: p.path.to_path_buf(),
            message: m.to_string(),
        })?;
        let pre = p
            .linker
            .instantiate_pre(&p.component)
            .map_err(|e| world(format!("{e:#}")))?;
        let plugin_exports =
            plugin::GuestIndices::new(&pre).map_err(|e| world(format!("{e:#}")))?;
        let batch_exports = batch::GuestIndices::new(&pre).ok();

        let engine = p.component.engine().clone();
        let mut this = Self {
            name: String::new(),
            version: semver::Version::new(0, 0, 0),
            version_label: Arc::from(""),
            path: p.path.to_path_buf(),
            wasm_bytes: p.wasm_bytes,
            cache_state: p.cache_state,
            pre,
            plugin_exports,
            batch_exports,
            engine,
            ticker: p.ticker,
            limits: p.limits,
            plugin_config: Arc::default(),
            grants: Arc::default(),
            turns: None,
            description: String::new(),
            canary: None,
            instances: Instances::new(1, 0, p.idle_timeout),
            idle_timeout: p.idle_timeout,
            max_instances: p.max_instances,
        };

        // Instantiate once: this type-checks every export and reads the identity.
        let ctx = JobContext {
            job_id: Arc::from("load"),
            ..JobContext::default()
        };
        let (mut store, deadline) = this.new_store(&ctx);
        let instance =
            this.pre.instantiate_async(&mut store).await.map_err(|e| {
                identity(classify(&store, e, deadline, this.limits.fuel).to_string())
            })?;
        // `load` type-checks the exports against the world; on a mismatch,
        // name the export that is wrong.
        let mismatch = |store: &mut Store<JobState>, e: wasmtime::Error| {
            world(explain_mismatch(store, &instance).unwrap_or_else(|| format!("{e:#}")))
        };
        let guest = match this.plugin_exports.load(&mut store, &instance) {
            Ok(guest) => guest,
            Err(e) => return Err(mismatch(&mut store, e)),
        };
        if let Some(batch) = &this.batch_exports
            && let Err(e) = batch.load(&mut store, &instance)
        {
            return Err(mismatch(&mut store, e));
        }
        let ident = async {
            let name = guest.call_get_name(&mut store).await?;
            let version = guest.call_get_version(&mut store).await?;
            wasmtime::Result::<_>::Ok((name, version))
        }
        .await;
        let (name, version) = ident
            .map_err(|e| identity(classify(&store, e, deadline, this.limits.fuel).to_string()))?;
        if name.is_empty()
            || name.len() > 128
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(identity(format!(
                "get-name returned {name:?}: expected 1 to 128 of [A-Za-z0-9._-]"
            )));
        }
        this.version = semver::Version::parse(&version)
            .map_err(|e| identity(format!("get-version returned {version:?}, not semver: {e}")))?;
        this.version_label = Arc::from(this.version.to_string());
        this.plugin_config = Arc::new(p.plugin_configs.get(&name).cloned().unwrap_or_default());
        this.name = name;
        Ok(this)
    }

    /// The name the plugin reports; jobs address it by this name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version the plugin reports.
    pub fn version(&self) -> &semver::Version {
        &self.version
    }

    /// The `.wasm` file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the `.wasm`, in bytes.
    pub fn wasm_bytes(&self) -> u64 {
        self.wasm_bytes
    }

    /// Where the compiled component came from.
    pub fn cache_state(&self) -> CacheState {
        self.cache_state
    }

    /// The manifest's description (empty without a manifest).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The canary this version routes a share of its jobs to (from its
    /// manifest).
    pub fn canary(&self) -> Option<&Canary> {
        self.canary.as_ref()
    }

    /// What the plugin's manifest grants (nothing without one): its
    /// effective outbound grants are `grants().outbound`.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The limits this plugin's jobs run under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Most jobs one instance serves (manifest `[instances] reuse_jobs`;
    /// 1, the default, is a fresh instance per job).
    pub fn reuse_jobs(&self) -> u32 {
        self.instances.reuse_jobs()
    }

    /// Warm instances idle now, waiting for a job.
    pub fn idle_instances(&self) -> usize {
        self.instances.idle()
    }

    /// Applies a manifest checked against the operator's caps. The
    /// manifest must name this plugin; its config sits under the operator's
    /// `sandbox.plugin_config` for the plugin.
    pub(crate) fn apply(&mut self, manifest: Settings, description: String) -> Result<(), String> {
        let (name, version) = &manifest.identity;
        if *name != self.name || *version != self.version {
            return Err(format!(
                "names {name}@{version}, but the component reports {}@{}",
                self.name, self.version
            ));
        }
        let mut config = manifest.config;
        config.extend(
            self.plugin_config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        self.plugin_config = Arc::new(config);
        self.limits = Arc::new(manifest.limits);
        self.grants = Arc::new(manifest.grants);
        self.turns = manifest
            .max_concurrency
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize)));
        // Idle instances stay within the plugin's concurrency.
        let max_idle = manifest.max_concurrency.unwrap_or(self.max_instances) as usize;
        self.instances = Instances::new(manifest.reuse_jobs, max_idle, self.idle_timeout);
        self.description = description;
        self.canary = manifest.canary;
        Ok(())
    }

    /// Waits for a turn when the manifest bounds this plugin's concurrency.
    async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        match &self.turns {
            // The semaphore is never closed.
            Some(turns) => turns.acquire().await.ok(),
            None => None,
        }
    }

    /// Whether the plugin exports `batch`.
    pub fn has_batch(&self) -> bool {
        self.batch_exports.is_some()
    }

    /// A fresh store for one job, with every limit set.
    fn new_store(&self, ctx: &JobContext) -> (Store<JobState>, Duration) {
        let deadline = self.limits.deadline_for(ctx.timeout_ms);
        let who = JobIdentity {
            plugin: Arc::from(self.name.as_str()),
            plugin_version: self.version_label.clone(),
            job_id: ctx.job_id.clone(),
            job_config: ctx.config.clone(),
            plugin_config: self.plugin_config.clone(),
            grants: self.grants.clone(),
        };
        let state = JobState::new(
            who,
            &self.limits,
            Instant::now() + deadline,
            self.ticker.ticking(),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Fuel is enabled on the engine, so this cannot fail.
        let _ = store.set_fuel(self.limits.fuel);
        // Check the wall clock at every tick; until the deadline, yield to
        // tokio so a spinning guest neither blocks other jobs nor overshoots.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                return Err(DeadlinePassed.into());
            }
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        (store, deadline)
    }

    /// The store for one job: a warm instance's, readied for this job, when
    /// one is idle; else a fresh store, instantiated by [`Plugin::instance`].
    fn lease(&self, ctx: &JobContext) -> Lease {
        let Some(warm) = self.instances.take() else {
            let (store, deadline) = self.new_store(ctx);
            return Lease {
                store,
                instance: None,
                served: 0,
                deadline,
            };
        };
        let deadline = self.limits.deadline_for(ctx.timeout_ms);
        let mut store = warm.store;
        store.data_mut().next_job(
            ctx.job_id.clone(),
            ctx.config.clone(),
            self.version_label.clone(),
            &self.limits,
            Instant::now() + deadline,
            self.ticker.ticking(),
        );
        // Per job, never carried over: fuel is enabled on the engine, so
        // this cannot fail; the epoch deadline counts from now.
        let _ = store.set_fuel(self.limits.fuel);
        store.set_epoch_deadline(1);
        Lease {
            store,
            instance: Some(warm.instance),
            served: warm.served,
            deadline,
        }
    }

    /// The lease's instance, instantiating a fresh one if it has none.
    async fn instance(&self, lease: &mut Lease) -> wasmtime::Result<Instance> {
        if let Some(instance) = lease.instance {
            return Ok(instance);
        }
        let instance = self.pre.instantiate_async(&mut lease.store).await?;
        lease.instance = Some(instance);
        Ok(instance)
    }

    /// Ends a job's lease: with reuse on and `sound` (the job left the
    /// instance usable), the instance goes back to the pool for another job;
    /// otherwise it is dropped.
    fn release(&self, lease: Lease, sound: bool) {
        if !sound || self.instances.reuse_jobs() <= 1 {
            return;
        }
        let Some(instance) = lease.instance else {
            return;
        };
        self.instances.give_back(Warm {
            store: lease.store,
            instance,
            served: lease.served.saturating_add(1),
        });
    }

    fn fuel_used(&self, store: &Store<JobState>) -> u64 {
        self.limits
            .fuel
            .saturating_sub(store.get_fuel().unwrap_or(0))
    }

    /// Runs `process` on one input in a fresh instance.
    pub async fn process(&self, ctx: &JobContext, input: &str) -> SingleRun {
        let _turn = self.turn().await;
        self.process_one(ctx, input).await
    }

    /// `process` without waiting for a turn (the caller holds one).
    async fn process_one(&self, ctx: &JobContext, input: &str) -> SingleRun {
        let started = Instant::now();
        if input.len() > self.limits.max_input_bytes {
            return Run {
                result: Err(JobFailure::InputTooLarge {
                    size: input.len(),
                    limit: self.limits.max_input_bytes,
                }),
                duration: started.elapsed(),
                fuel_used: 0,
                instantiation: Duration::ZERO,
                denials: Denials::default(),
                http: Vec::new(),
                reused: false,
            };
        }
        let mut lease = self.lease(ctx);
        let reused = lease.instance.is_some();
        let store_deadline = lease.store.data().deadline;
        let mut instantiation = Duration::ZERO;
        let called = async {
            let instance = self.instance(&mut lease).await?;
            if !reused {
                instantiation = started.elapsed();
            }
            let guest = self.plugin_exports.load(&mut lease.store, &instance)?;
            guest.call_process(&mut lease.store, input).await
        };
        let called = by_deadline(store_deadline, called).await;
        let result = self.finish(&lease.store, called, lease.deadline, |r| self.output(r));
        let store = &mut lease.store;
        store.data().forward_stdio();
        let run = Run {
            duration: started.elapsed(),
            fuel_used: self.fuel_used(store),
            instantiation,
            denials: store.data_mut().take_denials(),
            http: store.data_mut().take_requests(),
            reused,
            result,
        };
        self.release(lease, sound(&run.result));
        run
    }

    /// Runs a batch: through `process-batch` in one instance when the plugin
    /// exports `batch` (the job's limits apply to that one call), otherwise
    /// each input in its own fresh instance under the job's limits.
    pub async fn process_batch(&self, ctx: &JobContext, inputs: &[String]) -> BatchRun {
        let _turn = self.turn().await;
        let started = Instant::now();
        let total: usize = inputs.iter().map(String::len).sum();
        if total > self.limits.max_input_bytes {
            return Run {
                result: Err(JobFailure::InputTooLarge {
                    size: total,
                    limit: self.limits.max_input_bytes,
                }),
                duration: started.elapsed(),
                fuel_used: 0,
                instantiation: Duration::ZERO,
                denials: Denials::default(),
                http: Vec::new(),
                reused: false,
            };
        }
        let Some(batch_exports) = &self.batch_exports else {
            let mut results = Vec::with_capacity(inputs.len());
            let mut fuel_used = 0;
            let mut instantiation = Duration::ZERO;
            let mut denials = Denials::default();
            let mut http = Vec::new();
            let mut reused = false;
            for input in inputs {
                let run = self.process_one(ctx, input).await;
                fuel_used += run.fuel_used;
                instantiation += run.instantiation;
                denials.merge(run.denials);
                http.extend(run.http);
                reused |= run.reused;
                results.push(run.result);
            }
            return Run {
                result: Ok(results),
                duration: started.elapsed(),
                fuel_used,
                instantiation,
                denials,
                http,
                reused,
            };
        };

        let mut lease = self.lease(ctx);
        let reused = lease.instance.is_some();
        let store_deadline = lease.store.data().deadline;
        let mut instantiation = Duration::ZERO;
        let called = async {
            let instance = self.instance(&mut lease).await?;
            if !reused {
                instantiation = started.elapsed();
            }
            let guest = batch_exports.load(&mut lease.store, &instance)?;
            guest.call_process_batch(&mut lease.store, inputs).await
        };
        let called = by_deadline(store_deadline, called).await;
        let (store, deadline) = (&lease.store, lease.deadline);
        let result: Result<Vec<Result<Output, JobFailure>>, JobFailure> =
            self.finish(store, called.map(Ok), deadline, |results: Vec<_>| {
                if results.len() != inputs.len() {
                    return Err(JobFailure::Plugin {
                        kind: PluginErrorKind::InternalError,
                        message: format!(
                            "process-batch returned {} results for {} inputs",
                            results.len(),
                            inputs.len()
                        ),
                    });
                }
                let mut budget = self.limits.max_output_bytes;
                Ok(results
                    .into_iter()
                    .map(|r| {
                        let out = r.map_err(plugin_failure).and_then(|r| self.output(r))?;
                        budget = budget.checked_sub(out.output.len()).ok_or(
                            JobFailure::OutputTooLarge {
                                size: out.output.len(),
                                limit: self.limits.max_output_bytes,
                            },
                        )?;
                        Ok(out)
                    })
                    .collect())
            });
        let store = &mut lease.store;
        store.data().forward_stdio();
        let keep = match &result {
            Ok(items) => items.iter().all(sound),
            Err(failure) => sound_failure(failure),
        };
        let run = Run {
            duration: started.elapsed(),
            fuel_used: self.fuel_used(store),
            instantiation,
            denials: store.data_mut().take_denials(),
            http: store.data_mut().take_requests(),
            reused,
            result,
        };
        self.release(lease, keep);
        run
    }

    /// Turns what a call returned into the job's result. A refused memory
    /// growth wins over whatever the guest made of it.
    fn finish<R, T>(
        &self,
        store: &Store<JobState>,
        called: wasmtime::Result<Result<R, ProcessError>>,
        deadline: Duration,
        ok: impl FnOnce(R) -> Result<T, JobFailure>,
    ) -> Result<T, JobFailure> {
        let limiter = &store.data().limiter;
        if let Some(requested) = limiter.hit {
            return Err(JobFailure::MemoryLimit {
                requested,
                cap: limiter.cap(),
            });
        }
        match called {
            Ok(Ok(r)) => ok(r),
            Ok(Err(e)) => Err(plugin_failure(e)),
            Err(e) => Err(classify(store, e, deadline, self.limits.fuel)),
        }
    }

    fn output(&self, r: ProcessResult) -> Result<Output, JobFailure> {
        let size = r.output.len()
            + r.metadata
                .iter()
                .map(|kv| kv.key.len() + kv.value.len())
                .sum::<usize>();
        if size > self.limits.max_output_bytes {
            return Err(JobFailure::OutputTooLarge {
                size,
                limit: self.limits.max_output_bytes,
            });
        }
        Ok(Output {
            output: r.output,
            metadata: r
                .metadata
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
        })
    }
}

/// One job's store (see [`Plugin::lease`]).
struct Lease {
    store: Store<JobState>,
    /// The warm instance, or the fresh one once instantiated.
    instance: Option<Instance>,
    /// Jobs the instance served before this one.
    served: u32,
    /// The job's deadline.
    deadline: Duration,
}

/// Whether a job that ended with `result` leaves its instance fit for the
/// next job: a success, or a failure the guest returned or the host imposed
/// on a well-behaved guest. A trap, any limit (timeout, fuel, memory) and an
/// `internal-error` retire it.
fn sound<T>(result: &Result<T, JobFailure>) -> bool {
    result.as_ref().err().is_none_or(sound_failure)
}

fn sound_failure(failure: &JobFailure) -> bool {
    match failure {
        JobFailure::Plugin { kind, .. } => !matches!(kind, PluginErrorKind::InternalError),
        JobFailure::InputTooLarge { .. } | JobFailure::OutputTooLarge { .. } => true,
        JobFailure::Timeout { .. }
        | JobFailure::FuelExhausted { .. }
        | JobFailure::MemoryLimit { .. }
        | JobFailure::Trap { .. }
        | JobFailure::Internal(_) => false,
    }
}

const PLUGIN_INTERFACE: &str = "kiln:plugin/plugin@0.1.0";
const BATCH_INTERFACE: &str = "kiln:plugin/batch@0.1.0";

/// Names the export whose type does not match the world, for load errors.
fn explain_mismatch(store: &mut Store<JobState>, instance: &Instance) -> Option<String> {
    fn func(
        store: &mut Store<JobState>,
        instance: &Instance,
        iface: &str,
        name: &str,
    ) -> Option<Func> {
        let iface = instance.get_export_index(&mut *store, None, iface)?;
        let index = instance.get_export_index(&mut *store, Some(&iface), name)?;
        instance.get_func(&mut *store, index)
    }
    let explain =
        |iface: &str, name: &str, e: wasmtime::Error| format!("export `{name}` of {iface}: {e:#}");
    for name in ["get-name", "get-version"] {
        let f = func(store, instance, PLUGIN_INTERFACE, name)?;
        if let Err(e) = f.typed::<(), (String,)>(&*store) {
            return Some(explain(PLUGIN_INTERFACE, name, e));
        }
    }
    let f = func(store, instance, PLUGIN_INTERFACE, "process")?;
    if let Err(e) = f.typed::<(&str,), (Result<ProcessResult, ProcessError>,)>(&*store) {
        return Some(explain(PLUGIN_INTERFACE, "process", e));
    }
    if let Some(f) = func(store, instance, BATCH_INTERFACE, "process-batch")
        && let Err(e) =
            f.typed::<(&[String],), (Vec<Result<ProcessResult, ProcessError>>,)>(&*store)
    {
        return Some(explain(BATCH_INTERFACE, "process-batch", e));
    }
    None
}

/// Races a job's call against its deadline. The epoch callback stops a
/// guest running wasm; this stops one blocked in a host call (an HTTP
/// request in flight, a sleep), which runs no wasm and so sees no epoch.
/// Dropping the call's future abandons the instance, whose store the job
/// drops anyway.
async fn by_deadline<T>(
    deadline: Instant,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    tokio::time::timeout_at(deadline.into(), call)
        .await
        .unwrap_or_else(|_| Err(DeadlinePassed.into()))
}

/// The error the epoch callback traps with once the deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline passed")]
struct DeadlinePassed;

fn plugin_failure(e: ProcessError) -> JobFailure {
    JobFailure::Plugin {
        kind: match e.kind {
            ErrorKind::InvalidInput => PluginErrorKind::InvalidInput,
            ErrorKind::UnsupportedFormat => PluginErrorKind::UnsupportedFormat,
            ErrorKind::InternalError => PluginErrorKind::InternalError,
        },
        message: e.message,
    }
}

/// Maps a wasmtime error from a job's store onto its typed failure.
fn classify(
    store: &Store<JobState>,
    e: wasmtime::Error,
    deadline: Duration,
    fuel: u64,
) -> JobFailure {
    let limiter = &store.data().limiter;
    if let Some(requested) = limiter.hit {
        return JobFailure::MemoryLimit {
            requested,
            cap: limiter.cap(),
        };
    }
    let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
    if e.downcast_ref::<DeadlinePassed>().is_some() {
        return JobFailure::Timeout { deadline_ms };
    }
    if let Some(cap) = e.downcast_ref::<MemoryCapReached>() {
        return JobFailure::MemoryLimit {
            requested: cap.requested,
            cap: cap.cap,
        };
    }
    if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return JobFailure::Internal(format!("instance pool exhausted: {e}"));
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => JobFailure::FuelExhausted { budget: fuel },
            Trap::Interrupt => JobFailure::Timeout { deadline_ms },
            other => {
                let mut message = other.to_string();
                if let Some(tail) = store.data().stderr.tail(3) {
                    message.push_str("; guest stderr: ");
                    message.push_str(truncate(&tail, 512));
                }
                JobFailure::Trap {
                    code: trap_code(other),
                    message,
                }
            }
        };
    }
    let text = format!("{e:#}");
    JobFailure::Trap {
        code: "host".into(),
        message: truncate(&text, 1024).to_owned(),
    }
}

/// `StackOverflow` becomes `stack-overflow`, and so on.
fn trap_code(trap: &Trap) -> String {
    let name = match trap {
        Trap::UnreachableCodeReached => return "unreachable".into(),
        other => format!("{other:?}"),
    };
    let mut code = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                code.push('-');
            }
            code.push(c.to_ascii_lowercase());
        } else {
            code.push(c);
        }
    }
    code
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_codes_are_kebab_case() {
        for (trap, code) in [
            (Trap::StackOverflow, "stack-overflow"),
            (Trap::UnreachableCodeReached, "unreachable"),
            (Trap::IntegerDivisionByZero, "integer-division-by-zero"),
            (Trap::MemoryOutOfBounds, "memory-out-of-bounds"),
        ] {
            assert_eq!(trap_code(&trap), code);
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
