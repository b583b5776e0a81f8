//! The pipeline: the one place that joins the job records of
//! `kiln-protocol` with the sandbox of `kiln-sandbox`.
//!
//! It decodes a job, resolves its plugin, runs it, builds the reply, and
//! applies the outcome table to say what should happen next. Both the
//! embedded runner (`kiln run --jobs`) and the broker consumer drive jobs
//! through [`Pipeline::handle`], so they cannot disagree on an outcome.
//!
//! The plugins are read through a [`SharedRegistry`] handle that hot reload
//! ([`crate::reload`]) may swap: each job loads it once, takes the
//! `Arc<Plugin>` it routes to, and runs on that version to the end.

use std::sync::Arc;

use arc_swap::ArcSwap;
use kiln_protocol::{
    DecodeLimits, Envelope, ErrorKind, Handled, InstanceUse, ItemOk, Job, JobError, Payload, Reply,
    ReplyBody, RetryPolicy, Success, decode_job, disposition, encode_reply_checked,
};
use kiln_sandbox::{JobContext, JobFailure, Output, PluginErrorKind, Registry, ResolveError};

use crate::config::KilnConfig;
use crate::metrics::JobMetrics;
use crate::plugins::SharedRegistry;

/// Decodes, runs and answers jobs against the plugins of a registry.
#[derive(Debug)]
pub struct Pipeline {
    registry: SharedRegistry,
    decode: DecodeLimits,
    policy: RetryPolicy,
    max_reply_bytes: usize,
    metrics: Option<JobMetrics>,
}

impl Pipeline {
    /// A pipeline over `registry` (see [`Pipeline::shared_registry`] to
    /// swap it later).
    pub fn new(
        registry: Arc<Registry>,
        decode: DecodeLimits,
        policy: RetryPolicy,
        max_reply_bytes: usize,
    ) -> Self {
        Self {
            registry: Arc::new(ArcSwap::new(registry)),
            decode,
            policy,
            max_reply_bytes,
            metrics: None,
        }
    }

    /// The pipeline a config describes, over an already loaded registry.
    pub fn from_config(config: &KilnConfig, registry: Arc<Registry>) -> Self {
        Self::new(
            registry,
            DecodeLimits {
                max_input_bytes: config.sandbox.limits.max_input_bytes,
                max_body_bytes: config.pipeline.max_body_bytes,
            },
            config.pipeline.retry_policy(),
            config.pipeline.max_reply_bytes,
        )
    }

    /// Counts every job in `metrics` (`kiln worker`'s `/metrics`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: JobMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The plugins this pipeline serves now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// The handle jobs read the registry through; storing a registry in it
    /// serves every job that starts afterwards.
    pub fn shared_registry(&self) -> &SharedRegistry {
        &self.registry
    }

    /// The instruments it counts jobs in, if any ([`Pipeline::with_metrics`]).
    pub fn metrics(&self) -> Option<&JobMetrics> {
        self.metrics.as_ref()
    }

    /// The retry policy of the outcome table.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Handles attempt `attempt` (1-based) of the job in `body`.
    pub async fn handle(&self, body: &[u8], envelope: &Envelope<'_>, attempt: u32) -> Handled {
        let _in_flight = self.metrics.as_ref().map(JobMetrics::in_flight);
        match decode_job(body, envelope, &self.decode) {
            Ok(job) => self.run(&job, attempt).await,
            Err(e) => self.finish(e.into(), attempt),
        }
    }

    /// Runs attempt `attempt` of a decoded job.
    pub async fn run(&self, job: &Job, attempt: u32) -> Handled {
        // One load per job; the guard is gone before the job runs, and the
        // job keeps the version it got even if a reload swaps the registry.
        let routed = self
            .registry
            .load()
            .route(&job.plugin, job.version.as_ref(), &job.job_id)
            .cloned();
        let plugin = match routed {
            Ok(p) => p,
            Err(e) => {
                let kind = match e {
                    ResolveError::Unknown { .. } => ErrorKind::UnknownPlugin,
                    ResolveError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
                };
                let reply =
                    Reply::error(&job.job_id, &job.plugin, JobError::new(kind, e.to_string()));
                return self.finish(reply, attempt);
            }
        };
        // The job's span (the broker's), if any, learns which plugin ran it.
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record(kiln_protocol::span::PLUGIN, plugin.name());
            span.record(
                kiln_protocol::span::PLUGIN_VERSION,
                tracing::field::display(plugin.version()),
            );
        }
        let ctx = JobContext {
            job_id: Arc::from(job.job_id.as_str()),
            config: Arc::new(job.config.clone()),
            timeout_ms: job.timeout_ms,
        };
        let version = plugin.version().to_string();
        let (body, duration, fuel_used, instantiation, denials, http, reused) = match &job.payload {
            Payload::Single(input) => {
                let run = plugin.process(&ctx, input).await;
                let body = match run.result {
                    Ok(out) => ReplyBody::Ok(success(out, run.duration, run.fuel_used)),
                    Err(f) => ReplyBody::Error(job_error(f)),
                };
                (
                    body,
                    run.duration,
                    run.fuel_used,
                    run.instantiation,
                    run.denials,
                    run.http,
                    run.reused,
                )
            }
            Payload::Batch(inputs) => {
                let run = plugin.process_batch(&ctx, inputs).await;
                let body = match run.result {
                    Ok(results) => ReplyBody::Batch {
                        results: results
                            .into_iter()
                            .map(|r| r.map(item).map_err(job_error))
                            .collect(),
                        duration_us: micros(run.duration),
                        fuel_used: run.fuel_used,
                    },
                    Err(f) => ReplyBody::Error(job_error(f)),
                };
                (
                    body,
                    run.duration,
                    run.fuel_used,
                    run.instantiation,
                    run.denials,
                    run.http,
                    run.reused,
                )
            }
        };
        if let Some(m) = &self.metrics {
            m.job_ran(plugin.name(), &version, duration, fuel_used, instantiation);
            m.capabilities_denied(plugin.name(), &denials);
            m.http_requests(plugin.name(), &http);
            if reused {
                m.instance_reused(plugin.name());
            }
        }
        // Only plugins that may reuse instances say which one ran the job.
        let instance = (plugin.reuse_jobs() > 1).then_some(if reused {
            InstanceUse::Reused
        } else {
            InstanceUse::Fresh
        });
        let reply = Reply {
            job_id: job.job_id.clone(),
            plugin: plugin.name().to_owned(),
            plugin_version: Some(version),
            instance,
            http_requests: u32::try_from(http.len()).unwrap_or(u32::MAX),
            body,
        };
        self.finish(reply, attempt)
    }

    fn finish(&self, reply: Reply, attempt: u32) -> Handled {
        let (encoded, replaced) = encode_reply_checked(&reply, self.max_reply_bytes);
        // The reply that goes out may have been swapped for `output-too-large`.
        let (reply, error) = match replaced {
            Some(e) => {
                let kind = e.kind;
                (
                    Reply {
                        body: ReplyBody::Error(e),
                        ..reply
                    },
                    Some(kind),
                )
            }
            None => {
                let kind = reply.error_kind();
                (reply, kind)
            }
        };
        let disposition = disposition(error.map_or(Ok(()), Err), attempt, &self.policy);
        if let Some(m) = &self.metrics {
            m.job_handled(&reply.plugin, reply.plugin_version.as_deref(), error);
        }
        Handled {
            job_id: reply.job_id.clone(),
            reply,
            encoded,
            error,
            disposition,
        }
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn item(out: Output) -> ItemOk {
    ItemOk {
        output: out.output,
        metadata: out.metadata.into_iter().collect(),
    }
}

fn success(out: Output, duration: std::time::Duration, fuel_used: u64) -> Success {
    Success {
        output: out.output,
        metadata: out.metadata.into_iter().collect(),
        duration_us: micros(duration),
        fuel_used,
    }
}

/// Maps a sandbox failure onto the protocol's error record.
pub fn job_error(failure: JobFailure) -> JobError {
    let kind = match &failure {
        JobFailure::Plugin { kind, .. } => match kind {
            PluginErrorKind::InvalidInput => ErrorKind::InvalidInput,
            PluginErrorKind::UnsupportedFormat => ErrorKind::UnsupportedFormat,
            PluginErrorKind::InternalError => ErrorKind::InternalError,
        },
        JobFailure::Timeout { .. } => ErrorKind::Timeout,
        JobFailure::FuelExhausted { .. } => ErrorKind::FuelExhausted,
        JobFailure::MemoryLimit { .. } => ErrorKind::MemoryLimit,
        JobFailure::Trap { .. } => ErrorKind::Trap,
        JobFailure::InputTooLarge { .. } => ErrorKind::PayloadTooLarge,
        JobFailure::OutputTooLarge { .. } => ErrorKind::OutputTooLarge,
        JobFailure::Internal(_) => ErrorKind::Internal,
    };
    let message = match failure {
        // The plugin's own message stands alone; the kind is in the record.
        JobFailure::Plugin { message, .. } => message,
        other => other.to_string(),
    };
    JobError { kind, message }
}
