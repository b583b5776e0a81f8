//! Outbound HTTP: `wasi:http` for every plugin, and the grants that decide
//! which requests leave the host.
//!
//! wasmtime-wasi-http is linked for every plugin (so components importing
//! `wasi:http` load), without its default sender: every request goes
//! through [`Outbound`], Kiln's [`WasiHttpHooks`]. It allows a request only
//! when one of the plugin's `[grants] outbound` entries matches its scheme,
//! host and port, and the job's request budget is not spent; then it
//! resolves the name itself, checks *every* address against the
//! private-range rule ([`is_private`]: reachable only by a grant naming the
//! IP literally, or with `sandbox.caps.allow_private_outbound`), and
//! connects to the checked address, so DNS rebinding cannot swap it
//! ([`send`]). Redirects are never followed: the guest sees the 3xx, and a
//! second hop is its own request, checked again.
//!
//! Every refusal is `HTTP-request-denied` for the guest, a [`Denial`] of
//! [`Capability::Http`] (one `kiln::audit` line, counted in
//! `kiln_capability_denials_total`). Every allowed request is an
//! [`HttpRequest`] in the job's [`Run`](crate::Run), with the grant it
//! matched, and one client span (`kiln::http`) under the job's.

mod grant;
mod send;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

pub use grant::{GrantSyntaxError, HostPattern, OutboundGrant, PortPattern, Scheme, is_private};

use crate::audit::{Audit, Capability, Denial};
use crate::config::Limits;
use crate::manifest::Grants;
use grant::RequestHost;

/// Turns a span into the headers that carry its trace context (W3C
/// `traceparent`, `tracestate`). The sandbox knows no tracing backend: the
/// binary that exports traces sets one with [`set_trace_injector`].
pub type TraceInjector = fn(&tracing::Span) -> Vec<(String, String)>;

static INJECTOR: OnceLock<TraceInjector> = OnceLock::new();

/// Sets, once per process, how an outgoing request's client span is
/// propagated in its headers; later calls are ignored. Without it, no
/// trace header is added.
pub fn set_trace_injector(injector: TraceInjector) {
    let _ = INJECTOR.set(injector);
}

/// The trace headers of `span`, if an injector is set.
fn trace_headers(span: &tracing::Span) -> Vec<(String, String)> {
    INJECTOR
        .get()
        .map(|inject| inject(span))
        .unwrap_or_default()
}

/// One outgoing request a grant allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The manifest entry it matched, as written back (bounded labels).
    pub grant: Arc<str>,
    /// The response status, or `None` if no response came (refused
    /// connection, private address, timeout, TLS failure).
    pub status: Option<u16>,
    /// From the call until the response head (or the failure).
    pub duration: Duration,
}

impl HttpRequest {
    /// `1xx` … `5xx`, or `error` when no response came.
    pub fn status_class(&self) -> &'static str {
        match self.status.map(|s| s / 100) {
            Some(1) => "1xx",
            Some(2) => "2xx",
            Some(3) => "3xx",
            Some(4) => "4xx",
            Some(5) => "5xx",
            _ => "error",
        }
    }
}

/// What one job may reach: its plugin's grants and the job's budgets.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    grants: Arc<Grants>,
    max_requests: u32,
    max_response_bytes: usize,
    request_timeout: Duration,
}

impl Policy {
    pub(crate) fn new(grants: Arc<Grants>, limits: &Limits) -> Self {
        Self {
            grants,
            max_requests: limits.max_requests,
            max_response_bytes: limits.max_response_bytes,
            request_timeout: Duration::from_millis(limits.request_timeout_ms),
        }
    }
}

/// What a job's requests share with their in-flight futures.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Requests a grant allowed, including those still in flight.
    started: AtomicU32,
    /// Response body bytes read so far.
    read: AtomicUsize,
    /// The allowed requests that finished (bounded by `max_requests`).
    done: Mutex<Vec<HttpRequest>>,
}

impl Ledger {
    fn record(&self, request: HttpRequest) {
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
    }
}

/// Kiln's `wasi:http` hooks for one store: the only way a request leaves.
pub(crate) struct Outbound {
    policy: Policy,
    audit: Audit,
    ledger: Arc<Ledger>,
    deadline: Instant,
}

impl Outbound {
    pub(crate) fn new(policy: Policy, audit: Audit, deadline: Instant) -> Self {
        Self {
            policy,
            audit,
            ledger: Arc::default(),
            deadline,
        }
    }

    /// Readies it for a warm instance's next job: that job's audit and
    /// deadline, and a fresh budget; the grants stay.
    pub(crate) fn next_job(&mut self, audit: Audit, deadline: Instant) {
        self.audit = audit;
        self.ledger = Arc::default();
        self.deadline = deadline;
    }

    /// The allowed requests that finished so far, leaving none.
    pub(crate) fn take_requests(&mut self) -> Vec<HttpRequest> {
        std::mem::take(
            &mut *self
                .ledger
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Checks a request against the grants and the budget; the matching
    /// grant, or the denial's detail.
    fn admit(
        &self,
        scheme: Option<Scheme>,
        host: &str,
        port: Option<u16>,
    ) -> Result<(OutboundGrant, RequestHost, u16), String> {
        let (Some(scheme), Some(parsed)) = (scheme, RequestHost::parse(host)) else {
            return Err(format!("{host}: not an http(s) URL with a host"));
        };
        let port = port.unwrap_or_else(|| scheme.default_port());
        let asked = format!("{}://{host}:{port}", scheme.as_str());
        let Some(grant) = self
            .policy
            .grants
            .outbound
            .iter()
            .find(|g| g.allows(scheme, &parsed, port))
        else {
            return Err(format!("{asked}: no outbound grant"));
        };
        let started = self.ledger.started.fetch_add(1, Ordering::Relaxed);
        if started >= self.policy.max_requests {
            self.ledger.started.fetch_sub(1, Ordering::Relaxed);
            return Err(format!(
                "{asked}: max_requests ({}) reached",
                self.policy.max_requests
            ));
        }
        Ok((grant.clone(), parsed, port))
    }
}

type Response = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<Response, Error>> + Send> {
        let uri = request.uri();
        let scheme = match uri.scheme_str() {
            Some("http") => Some(Scheme::Http),
            Some("https") => Some(Scheme::Https),
            _ => None,
        };
        let host = uri.host().unwrap_or_default().to_owned();
        let admitted = self.admit(scheme, &host, uri.port_u16());
        let (grant, parsed, port) = match admitted {
            Ok(admitted) => admitted,
            Err(detail) => {
                self.audit.deny(Denial::new(Capability::Http, &detail));
                return Box::new(async { Err(Error::HttpRequestDenied) });
            }
        };
        // The request's own timeouts may shorten the budget's, and the
        // job's deadline bounds them all.
        let mut timeout = self.policy.request_timeout;
        for t in options
            .iter()
            .flat_map(|o| [o.connect_timeout, o.first_byte_timeout])
            .flatten()
        {
            timeout = timeout.min(t);
        }
        let until = (Instant::now() + timeout).min(self.deadline);
        let target = send::Target {
            scheme: scheme.unwrap_or(Scheme::Https),
            host: parsed,
            port,
            allow_private: self.policy.grants.allow_private_outbound,
            grant,
        };
        let body_budget = send::BodyBudget {
            ledger: self.ledger.clone(),
            limit: self.policy.max_response_bytes,
        };
        // wasmtime-wasi-http spawns the returned future on a task of its
        // own, where no span is current: the client span's parent is the
        // span the guest's call runs in (the job's), taken here.
        Box::new(send::send(
            request,
            tracing::Span::current(),
            target,
            tokio::time::Instant::from_std(until),
            body_budget,
            self.audit.clone(),
            self.ledger.clone(),
        ))
    }
}
