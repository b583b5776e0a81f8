//! `kiln enqueue`: publish job records with confirms and a bounded window,
//! and optionally wait for every reply.
//!
//! **Resumable.** Each job is published with `message_id` and
//! `correlation_id` set to its job id, which is stable (the record's
//! `job_id`, else the deterministic default of `kiln-protocol`). With
//! `--wait`, replies go to a durable queue named after the run's input
//! (`<queue>.replies.<hash>`), so replies that arrive while `kiln enqueue`
//! is down wait for it. A re-run reads the output file first, skips every
//! job already answered there, re-publishes the rest (a job may then run
//! twice: at-least-once), collects replies from the same queue, and writes
//! each job id once. The output therefore ends with exactly one row per job.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kiln_protocol::{Envelope, Reply, job_id_from_body};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use tracing::Instrument as _;

use crate::{BrokerError, Topology, TraceHeaders};

/// One job to publish.
#[derive(Debug, Clone)]
pub struct OutgoingJob {
    /// Its stable id (message and correlation id).
    pub job_id: String,
    /// The job record.
    pub body: Vec<u8>,
}

impl OutgoingJob {
    /// A job from a JSONL record: its `job_id`, or the deterministic default.
    pub fn from_record(body: Vec<u8>) -> Self {
        let job_id = serde_json_job_id(&body)
            .unwrap_or_else(|| job_id_from_body(&body, &Envelope::default()));
        Self { job_id, body }
    }
}

fn serde_json_job_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        job_id: Option<String>,
    }
    serde_json::from_slice::<Id>(body)
        .ok()?
        .job_id
        .filter(|id| !id.is_empty())
}

/// Where `enqueue` sends replies and how many it may have unconfirmed.
#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    /// The AMQP URL.
    pub url: String,
    /// Unconfirmed publishes allowed at once.
    pub window: usize,
    /// With `Some`, the durable reply queue to collect replies from.
    pub reply_queue: Option<String>,
}

/// Publishes `jobs` (skipping `skip`), with confirms, through `topology`.
/// Each publish runs in a `publish` span (a producer span under the OTel
/// messaging conventions) whose context `trace` injects into the job's
/// headers. Returns how many were published.
pub async fn publish_jobs(
    options: &EnqueueOptions,
    topology: &Topology,
    jobs: &[OutgoingJob],
    skip: &HashSet<String>,
    trace: &dyn TraceHeaders,
    mut progress: impl FnMut(),
) -> Result<usize, BrokerError> {
    let conn = crate::connect(
        &options.url,
        &format!("kiln-enqueue-{}", std::process::id()),
    )
    .await?;
    let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
    topology.declare(&channel).await?;
    if let Some(q) = &options.reply_queue {
        channel
            .queue_declare(
                ShortString::from(q.clone()),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| BrokerError::Declare {
                queue: q.clone(),
                source,
            })?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::Channel)?;
    let mut pending = FuturesUnordered::new();
    let mut published = 0;
    // One task publishes on this channel; confirms are awaited in a window.
    for job in jobs.iter().filter(|j| !skip.contains(&j.job_id)) {
        while pending.len() >= options.window.max(1) {
            settle(pending.next().await)?;
        }
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(job.job_id.clone()))
            .with_correlation_id(ShortString::from(job.job_id.clone()));
        if let Some(q) = &options.reply_queue {
            props = props.with_reply_to(ShortString::from(q.clone()));
        }
        let span = tracing::info_span!(
            "publish",
            otel.name = %format_args!("publish {}", topology.jobs),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation = "publish",
            messaging.operation.type = "send",
            messaging.destination.name = %topology.jobs,
            messaging.rabbitmq.destination.routing_key = %topology.jobs,
            messaging.message.id = %job.job_id,
            messaging.message.body.size = job.body.len(),
            kiln.job_id = %job.job_id,
        );
        if trace.enabled() && !span.is_disabled() {
            let mut headers = FieldTable::default();
            trace.inject(&span, &mut headers);
            props = props.with_headers(headers);
        }
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(topology.jobs.clone()),
                BasicPublishOptions::default(),
                &job.body,
                props,
            )
            .instrument(span)
            .await
            .map_err(BrokerError::Channel)?;
        pending.push(confirm);
        published += 1;
        progress();
    }
    while let Some(c) = pending.next().await {
        settle(Some(c))?;
    }
    let _ = conn.close(200, ShortString::from("done")).await;
    Ok(published)
}

fn settle(confirm: Option<lapin::Result<Confirmation>>) -> Result<(), BrokerError> {
    match confirm {
        None | Some(Ok(Confirmation::Ack(_))) => Ok(()),
        Some(Ok(Confirmation::Nack(_))) => Err(BrokerError::Nacked),
        Some(Ok(Confirmation::NotRequested)) => Err(BrokerError::NotConfirmed),
        Some(Err(e)) => Err(BrokerError::Channel(e)),
    }
}

/// Consumes replies from `queue` until every id in `waiting` has one (or
/// `idle` passes with none), calling `on_reply` once per job id.
pub async fn collect_replies(
    url: &str,
    queue: &str,
    mut waiting: HashSet<String>,
    idle: Duration,
    mut on_reply: impl FnMut(&str, &[u8], Option<&Reply>) -> std::io::Result<()>,
) -> Result<HashSet<String>, BrokerError> {
    let conn = crate::connect(url, &format!("kiln-enqueue-replies-{}", std::process::id())).await?;
    let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue.to_owned()),
            ShortString::from("kiln-enqueue"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Channel)?;
    while !waiting.is_empty() {
        let next = match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(BrokerError::Channel(e)),
            Ok(None) | Err(_) => break,
        };
        let reply: Option<Reply> = serde_json::from_slice(&next.data).ok();
        let id = next
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .or_else(|| reply.as_ref().map(|r| r.job_id.clone()))
            .unwrap_or_default();
        // Duplicates (a job run twice) are acked and not written again.
        if waiting.remove(&id) {
            on_reply(&id, &next.data, reply.as_ref())
                .map_err(|e| BrokerError::Output(e.to_string()))?;
        }
        next.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
    }
    if waiting.is_empty() {
        let _ = channel
            .queue_delete(
                ShortString::from(queue.to_owned()),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, ShortString::from("done")).await;
    Ok(waiting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_come_from_the_record_or_its_hash() {
        let a = OutgoingJob::from_record(br#"{"job_id":"j1","plugin":"p","input":"x"}"#.to_vec());
        assert_eq!(a.job_id, "j1");
        let b = OutgoingJob::from_record(br#"{"plugin":"p","input":"x"}"#.to_vec());
        let c = OutgoingJob::from_record(br#"{"plugin":"p","input":"x"}"#.to_vec());
        assert_eq!(b.job_id, c.job_id);
        assert!(b.job_id.starts_with("sha256:"));
        let d = OutgoingJob::from_record(b"not json".to_vec());
        assert!(d.job_id.starts_with("sha256:"));
    }
}
