//! `kiln worker`: the broker consumer of `kiln-broker` driving the
//! pipeline, the health endpoints, and signal handling.

use std::sync::Arc;

use kiln_broker::{JobHandler, Topology, Worker};
use kiln_protocol::{Envelope, Handled};
use tokio::sync::watch;

use crate::config::KilnConfig;
use crate::pipeline::Pipeline;

impl JobHandler for Pipeline {
    async fn handle(&self, body: &[u8], envelope: &Envelope<'_>, attempt: u32) -> Handled {
        Pipeline::handle(self, body, envelope, attempt).await
    }
}

/// Runs the worker until SIGTERM or SIGINT, then drains and returns.
pub async fn run(config: &KilnConfig, pipeline: Arc<Pipeline>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let topology = Topology::new(&config.amqp, pipeline.policy());
    let concurrency = config.pipeline.effective_concurrency();
    let worker = Worker::new(config.amqp.clone(), topology, pipeline, concurrency);

    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "health endpoints listening");
    let health = tokio::spawn(serve_health(listener, worker.readiness(), stop_rx.clone()));

    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    tracing::info!(url = %config.amqp.redacted_url(), queue = %config.amqp.queue, concurrency, "worker starting");
    for warning in config.warnings(crate::config::cgroup_memory_limit()) {
        tracing::warn!(%warning, "config does not fit the container");
    }
    worker.run(stop_rx).await;
    health.abort();
    tracing::info!("worker stopped");
    Ok(())
}

/// `/healthz`: the process and its runtime answer. `/readyz`: connected to
/// the broker, consuming, and not draining (503 otherwise).
async fn serve_health(
    listener: tokio::net::TcpListener,
    ready: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        );
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    if let Err(error) = serve.await {
        tracing::error!(%error, "health server failed");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
