//! `kiln worker`'s wiring: the broker consumer of `kiln-broker` driving the
//! pipeline, hot reload of its plugins ([`crate::reload`]), the HTTP
//! endpoints (`/healthz`, `/readyz`, `/plugins`, `/metrics`), and signal
//! handling. With the pipeline, the one module where the broker and the
//! sandbox meet.

use std::sync::Arc;

use kiln_broker::{JobHandler, Topology, TraceHeaders, Worker};
use kiln_protocol::{Envelope, Handled};
use kiln_sandbox::{Registry, Sandbox};
use tokio::sync::watch;

use crate::config::KilnConfig;
use crate::metrics::broker::BrokerCounters;
use crate::metrics::{Exposition, JobMetrics};
use crate::pipeline::Pipeline;
use crate::plugins::{PluginsReport, SharedRegistry};
use crate::reload::Reloader;

impl JobHandler for Pipeline {
    async fn handle(&self, body: &[u8], envelope: &Envelope<'_>, attempt: u32) -> Handled {
        Pipeline::handle(self, body, envelope, attempt).await
    }

    fn waited(&self, handled: &Handled, wait: std::time::Duration) {
        if let Some(metrics) = self.metrics() {
            metrics.queue_waited(&handled.reply.plugin, wait);
        }
    }
}

/// Runs the worker over the plugins of `registry` until SIGTERM or SIGINT,
/// then drains and returns success. A second SIGTERM or SIGINT during the
/// drain requeues the jobs in flight at once and returns failure. Hot reload loads changed plugins into
/// `sandbox`, the one `registry` was loaded with (one engine, one pool, one
/// ticker). `syncer`, when `[registry] plugins` is set, keeps the registry
/// plugins in step (its plugins load through the same hot reload). `trace` carries trace context through the AMQP headers (see
/// [`crate::telemetry`]).
pub async fn run(
    config: &KilnConfig,
    sandbox: Arc<Sandbox>,
    registry: Arc<Registry>,
    syncer: Option<crate::oci::Syncer>,
    trace: Arc<dyn TraceHeaders>,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    if trace.enabled() {
        // Plugins' outgoing HTTP requests carry their client span's context.
        kiln_sandbox::http::set_trace_injector(crate::telemetry::w3c_http_headers);
    }
    let jobs = JobMetrics::new(&registry);
    let loaded: Vec<String> = registry
        .plugins()
        .map(|p| format!("{}@{}", p.name(), p.version()))
        .collect();
    if registry.is_empty() {
        tracing::error!(dir = %config.plugins_dir.0.display(), "no plugin loaded; the worker stays unready until one is");
    }
    let pipeline = Arc::new(Pipeline::from_config(config, registry).with_metrics(jobs.clone()));
    let plugins = pipeline.shared_registry().clone();
    let topology = Topology::new(&config.amqp, pipeline.policy());
    let concurrency = config.pipeline.effective_concurrency();
    let (abort_tx, abort_rx) = watch::channel(false);
    let worker = Worker::new(config.amqp.clone(), topology, pipeline, concurrency)
        .with_trace_headers(trace)
        .with_abort(abort_rx.clone());
    let exposition = Arc::new(
        Exposition::new(&jobs, plugins.clone())
            .with_collector(BrokerCounters::new(worker.stats(), &jobs)),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let address = listener.local_addr()?;
    let mut reloader = Reloader::new(
        &config.plugins_dir.0,
        config.reload.clone(),
        sandbox,
        plugins.clone(),
    )
    .with_metrics(jobs.clone());
    let mut required = Vec::new();
    let mut syncer_task = None;
    if let Some(syncer) = syncer {
        let syncer = syncer.with_metrics(jobs.clone());
        reloader = reloader.with_registry(&syncer.store().plugins_dir(), syncer.shared());
        required = syncer.required();
        syncer_task = Some(syncer.spawn(stop_rx.clone()));
    }
    let reloader = reloader.spawn(stop_rx.clone());
    let probes = Probes {
        consuming: worker.readiness(),
        required,
        plugins,
        metrics: exposition,
    };
    // The endpoints outlive the drain: `/readyz` says 503 while draining,
    // and `/healthz` keeps answering so a long drain is not taken for a hang.
    let (done_tx, done_rx) = watch::channel(false);
    let http = tokio::spawn(serve_http(listener, probes, done_rx));

    let signals = tokio::spawn(shutdown_signals(stop_tx, abort_tx));

    let cache = &config.sandbox.cache;
    tracing::info!(
        url = %config.amqp.redacted_url(),
        queue = %config.amqp.queue,
        shards = config.amqp.shards,
        shard_ids = ?config.amqp.shard_ids,
        prefetch = config.amqp.prefetch,
        concurrency,
        plugins = %loaded.join(","),
        cache = %cache.dir.as_ref().map_or_else(|| "memory only".to_owned(), |d| d.display().to_string()),
        baked_cache = %cache.baked_dir.as_ref().map_or_else(|| "none".to_owned(), |d| d.display().to_string()),
        http = %address,
        "worker starting"
    );
    for warning in config.warnings(crate::config::cgroup_memory_limit()) {
        tracing::warn!(%warning, "config does not fit the container");
    }
    // The consumer runs as a task on the runtime's workers, not on the
    // thread blocked in `main`: the jobs it spawns then start on the worker
    // it runs on, instead of each waking another thread.
    if let Err(error) = tokio::spawn(async move { worker.run(stop_rx).await }).await {
        tracing::error!(%error, "the consumer task failed");
    }
    reloader.abort();
    if let Some(syncer) = syncer_task {
        syncer.abort();
    }
    signals.abort();
    let _ = done_tx.send(true);
    if tokio::time::timeout(std::time::Duration::from_secs(1), http)
        .await
        .is_err()
    {
        tracing::warn!("http server did not stop in time");
    }
    if *abort_rx.borrow() {
        tracing::warn!("worker stopped by a second signal, in-flight jobs requeued");
        return Ok(std::process::ExitCode::FAILURE);
    }
    tracing::info!("worker stopped, exit");
    Ok(std::process::ExitCode::SUCCESS)
}

/// What the HTTP endpoints report.
struct Probes {
    /// Connected to the broker and consuming, not draining.
    consuming: watch::Receiver<bool>,
    /// The plugins serving now (ready only with at least one).
    plugins: SharedRegistry,
    /// The registry plugin files that must be serving before the worker is
    /// ready (`[registry] plugins` less `ready_without`).
    required: Vec<std::path::PathBuf>,
    metrics: Arc<Exposition>,
}

/// `/healthz`: the process and its async runtime answer (the handler runs
/// on the runtime the jobs use). `/readyz`: connected to the broker,
/// consuming, not draining, and a plugin loaded now (503 otherwise, with the
/// reason). `/plugins`: what `kiln plugins --json` shows, for the plugins
/// serving now (hot reloads and reload errors included). `/metrics`: the
/// OpenMetrics text of [`Exposition`].
async fn serve_http(
    listener: tokio::net::TcpListener,
    probes: Probes,
    mut stop: watch::Receiver<bool>,
) {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let Probes {
        consuming,
        plugins,
        required,
        metrics,
    } = probes;
    let served = plugins.clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let consuming = *consuming.borrow();
                let registry = plugins.load();
                let plugins_loaded = !registry.is_empty();
                let required_loaded = required
                    .iter()
                    .all(|path| registry.plugins().any(|p| p.path() == path));
                async move {
                    match (plugins_loaded, consuming) {
                        (true, true) if !required_loaded => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: a registry plugin is not loaded (see /plugins)",
                        ),
                        (true, true) => (StatusCode::OK, "ready"),
                        (false, _) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: no plugin loaded",
                        ),
                        (true, false) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: not consuming (connecting, reconnecting or draining)",
                        ),
                    }
                }
            }),
        )
        .route(
            "/plugins",
            get(move || {
                let report = serde_json::to_string(&PluginsReport::of(&served.load()));
                async move {
                    match report {
                        Ok(json) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/json")],
                            json,
                        ),
                        Err(error) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain")],
                            format!("cannot write the plugins report: {error}"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text) }
            }),
        );
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    if let Err(error) = serve.await {
        tracing::error!(%error, "http server failed");
    }
}

/// The two-stage shutdown: the first SIGTERM or SIGINT sets `stop` (drain),
/// a second one sets `abort` (requeue the jobs in flight now).
async fn shutdown_signals(stop: watch::Sender<bool>, abort: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        // Holding the senders: dropped, they would read as a shutdown.
        std::future::pending::<()>().await;
        return;
    };
    let mut next = async || {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    let first = next().await;
    tracing::info!(
        signal = first,
        "shutdown requested, draining; signal again to requeue the jobs in flight now"
    );
    stop.send_replace(true);
    let second = next().await;
    tracing::warn!(signal = second, "second signal, aborting the drain");
    abort.send_replace(true);
}
