//! What one job's `Store` holds, and the host side of the contract:
//! `host-api` (log, get-config), a deny-by-default WASI context (with
//! `wasi:http` behind the outbound grants, `http/`), the audit
//! trail of the capability denials the host sees, and the memory limiter
//! that caps the instance's total linear memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::audit::{Audit, Denials};
use crate::bindings::kiln::plugin::host_api::{self, LogLevel};
use crate::bindings::kiln::plugin::types;
use crate::config::Limits;
use crate::engine::Ticking;
use crate::http::{HttpRequest, Outbound, Policy};
use crate::manifest::Grants;
use crate::network::NetworkGate;
use crate::stdio::GuestOutput;

/// The per-job state inside a fresh `Store`. Nothing in it outlives the job.
pub(crate) struct JobState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// The job's wall-clock deadline, checked at every epoch tick.
    pub(crate) deadline: Instant,
    pub(crate) stdout: GuestOutput,
    pub(crate) stderr: GuestOutput,
    plugin: Arc<str>,
    job_id: Arc<str>,
    job_config: Arc<BTreeMap<String, String>>,
    plugin_config: Arc<BTreeMap<String, String>>,
    log: LogBudget,
    audit: Audit,
    http: WasiHttpCtx,
    /// Every outgoing request goes through it (`http/mod.rs`).
    outbound: Outbound,
    /// Keeps the epoch ticker running while the store runs a job (none
    /// while a warm instance is idle).
    ticking: Option<Ticking>,
}

/// Who a store runs for, and with which config.
#[derive(Debug, Clone)]
pub(crate) struct JobIdentity {
    pub(crate) plugin: Arc<str>,
    /// The plugin's version; empty while its identity is read at load.
    pub(crate) plugin_version: Arc<str>,
    pub(crate) job_id: Arc<str>,
    pub(crate) job_config: Arc<BTreeMap<String, String>>,
    pub(crate) plugin_config: Arc<BTreeMap<String, String>>,
    /// What the plugin's manifest grants (nothing by default).
    pub(crate) grants: Arc<Grants>,
}

impl JobState {
    pub(crate) fn new(
        who: JobIdentity,
        limits: &Limits,
        deadline: Instant,
        ticking: Ticking,
    ) -> Self {
        let stdout = GuestOutput::new(limits.max_stdio_bytes);
        let stderr = GuestOutput::new(limits.max_stdio_bytes);
        // Deny by default, each grant a reviewable line: stdin is closed, no
        // env, no args, no preopened directories. Sockets are linked so that
        // components importing them still load, but TCP, UDP and name
        // lookups are off and every address is refused; the calls that
        // would create a socket or resolve a name never get here anyway:
        // Kiln's own functions refuse and audit them (`network.rs`). Clocks
        // and random are the builder's defaults (allowed).
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        // The manifest's grants, checked against the operator's caps at
        // load: explicit variables, and read-only directories.
        for (key, value) in &who.grants.env {
            builder.env(key, value);
        }
        for (host, guest) in &who.grants.dirs {
            if let Err(error) = builder.preopened_dir(host, guest, FsPerms::ReadOnly) {
                // Checked at load; it has gone since. The guest sees no
                // such directory.
                tracing::warn!(plugin = &*who.plugin, dir = %host.display(), %error, "granted directory unavailable");
            }
        }
        let wasi = builder.build();
        let audit = Audit::new(who.plugin.clone(), who.plugin_version, who.job_id.clone());
        // `wasi:http` is linked for every plugin; a request leaves only
        // through a grant (none by default).
        let outbound = Outbound::new(Policy::new(who.grants, limits), audit.clone(), deadline);
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            deadline,
            stdout,
            stderr,
            plugin: who.plugin,
            job_id: who.job_id,
            job_config: who.job_config,
            plugin_config: who.plugin_config,
            log: LogBudget::new(limits.max_log_lines, limits.max_log_bytes),
            audit,
            http: WasiHttpCtx::new(),
            outbound,
            ticking: Some(ticking),
        }
    }

    /// Readies a warm instance's state for its next job: that job's id,
    /// config and deadline, and fresh per-job budgets (log lines, stdio,
    /// audit, outgoing requests). The memory limiter is kept: its cap spans the instance's
    /// jobs.
    pub(crate) fn next_job(
        &mut self,
        job_id: Arc<str>,
        job_config: Arc<BTreeMap<String, String>>,
        plugin_version: Arc<str>,
        limits: &Limits,
        deadline: Instant,
        ticking: Ticking,
    ) {
        self.audit = Audit::new(self.plugin.clone(), plugin_version, job_id.clone());
        self.outbound.next_job(self.audit.clone(), deadline);
        self.job_id = job_id;
        self.job_config = job_config;
        self.deadline = deadline;
        self.log = LogBudget::new(limits.max_log_lines, limits.max_log_bytes);
        self.stdout.clear();
        self.stderr.clear();
        self.ticking = Some(ticking);
    }

    /// Lets the epoch ticker park while this warm instance is idle.
    pub(crate) fn idle(&mut self) {
        self.ticking = None;
    }

    /// The capability denials recorded so far, leaving none (see
    /// [`Audit::take`]).
    pub(crate) fn take_denials(&mut self) -> Denials {
        self.audit.take()
    }

    /// The outgoing requests that got an answer or failed on the way so
    /// far, leaving none.
    pub(crate) fn take_requests(&mut self) -> Vec<HttpRequest> {
        self.outbound.take_requests()
    }

    /// What Kiln's `wasi:sockets` functions work on.
    pub(crate) fn network_gate(&mut self) -> NetworkGate<'_> {
        NetworkGate {
            audit: &mut self.audit,
            sockets: WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
        }
    }

    /// Forwards the guest's captured stdio to the host log.
    pub(crate) fn forward_stdio(&self) {
        self.stdout.forward("stdout", &self.plugin, &self.job_id);
        self.stderr.forward("stderr", &self.plugin, &self.job_id);
    }
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for JobState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl types::Host for JobState {}

impl host_api::Host for JobState {
    fn log(&mut self, level: LogLevel, msg: String) {
        let (plugin, job_id) = (&*self.plugin, &*self.job_id);
        match self.log.admit(msg.len()) {
            Admit::Yes => {}
            Admit::Marker => {
                tracing::warn!(target: "kiln::plugin", plugin, job_id, "log budget exhausted, dropping further lines");
                return;
            }
            Admit::No => return,
        }
        match level {
            LogLevel::Debug => tracing::debug!(target: "kiln::plugin", plugin, job_id, "{msg}"),
            LogLevel::Info => tracing::info!(target: "kiln::plugin", plugin, job_id, "{msg}"),
            LogLevel::Warn => tracing::warn!(target: "kiln::plugin", plugin, job_id, "{msg}"),
            LogLevel::Error => tracing::error!(target: "kiln::plugin", plugin, job_id, "{msg}"),
        }
    }

    fn get_config(&mut self, key: String) -> Option<String> {
        self.job_config
            .get(&key)
            .or_else(|| self.plugin_config.get(&key))
            .cloned()
    }
}

/// Whether a log line may pass.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Yes,
    /// The first line over the budget: emit one marker instead.
    Marker,
    No,
}

/// Bounds a job's log lines by count and bytes.
#[derive(Debug)]
struct LogBudget {
    lines_left: u32,
    bytes_left: usize,
    exhausted: bool,
}

impl LogBudget {
    fn new(lines: u32, bytes: usize) -> Self {
        Self {
            lines_left: lines,
            bytes_left: bytes,
            exhausted: false,
        }
    }

    fn admit(&mut self, len: usize) -> Admit {
        if self.exhausted {
            return Admit::No;
        }
        if self.lines_left == 0 || len > self.bytes_left {
            self.exhausted = true;
            return Admit::Marker;
        }
        self.lines_left -= 1;
        self.bytes_left -= len;
        Admit::Yes
    }
}

/// Caps the *total* linear memory of one instance.
///
/// `StoreLimits::memory_size` caps each memory separately, but adapted or
/// interpreted components have several. This limiter sums them, traps on
/// the growth that would pass the cap (so a Rust guest does not turn the
/// failure into an opaque `unreachable`), and records that the cap was hit,
/// so the outcome is `memory-limit` whatever the guest does next.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: usize,
    total: usize,
    /// The total the first refused growth asked for.
    pub(crate) hit: Option<usize>,
}

/// The error a refused growth traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes reached: growth to {requested} bytes refused")]
pub(crate) struct MemoryCapReached {
    pub(crate) cap: usize,
    pub(crate) requested: usize,
}

impl MemoryLimiter {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            total: 0,
            hit: None,
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let requested = self.total.saturating_sub(current).saturating_add(desired);
        if requested > self.cap {
            self.hit.get_or_insert(requested);
            return Err(MemoryCapReached {
                cap: self.cap,
                requested,
            }
            .into());
        }
        self.total = requested;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The pool's slot is as large as the cap, so a failure here is the
        // cap too (or the OS refusing memory): report it the same way.
        self.hit.get_or_insert(self.cap.saturating_add(1));
        Err(error)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables are bounded by the pool's `max_table_elements`.
        Ok(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_sum_of_memories() {
        let mut l = MemoryLimiter::new(100);
        assert!(l.memory_growing(0, 60, None).unwrap());
        // A second memory: 60 + 30 fits.
        assert!(l.memory_growing(0, 30, None).unwrap());
        // The first grows from 60 to 70: total 100 fits exactly.
        assert!(l.memory_growing(60, 70, None).unwrap());
        assert_eq!(l.hit, None);
        // One more byte anywhere does not.
        assert!(l.memory_growing(30, 31, None).is_err());
        assert_eq!(l.hit, Some(101));
    }

    #[test]
    fn log_budget_emits_one_marker() {
        let mut b = LogBudget::new(2, 1_000);
        let got: Vec<_> = (0..5).map(|_| b.admit(10)).collect();
        assert_eq!(
            got,
            [Admit::Yes, Admit::Yes, Admit::Marker, Admit::No, Admit::No]
        );

        let mut b = LogBudget::new(100, 15);
        let got: Vec<_> = (0..3).map(|_| b.admit(10)).collect();
        assert_eq!(got, [Admit::Yes, Admit::Marker, Admit::No]);
    }
}
