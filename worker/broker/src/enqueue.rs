//! `kiln enqueue`: publish job records with confirms and a bounded window,
//! and optionally wait for every reply.
//!
//! **Resumable.** Each job is published with `message_id` and
//! `correlation_id` set to its job id, which is stable (the record's
//! `job_id`, else the deterministic default of `kiln-protocol`), and
//! with the AMQP `timestamp` of its publish, from which a worker measures
//! how long it waited (`kiln_job_queue_wait_seconds`). With
//! `--wait`, replies go to a durable queue named after the run's input
//! (`<queue>.replies.<hash>`), so replies that arrive while `kiln enqueue`
//! is down wait for it. A re-run reads the output file first, skips every
//! job already answered there, re-publishes the rest (a job may then run
//! twice: at-least-once), collects replies from the same queue, and writes
//! each job id once. The output therefore ends with exactly one row per job.
//! The reply queue expires (`x-expires`) once unused for
//! [`EnqueueOptions::reply_expires`], so an abandoned run's queue goes away
//! while a re-run within that time still finds it.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kiln_protocol::{Envelope, Reply, job_id_from_body};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeleteOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection};
use tracing::Instrument as _;

use crate::headers::{KEY_HEADER, text};
use crate::{BrokerError, Topology, TraceHeaders};

/// One job to publish.
#[derive(Debug, Clone)]
pub struct OutgoingJob {
    /// Its stable id (message and correlation id).
    pub job_id: String,
    /// The record's `key`, if any: sent as the `x-kiln-key` header, and
    /// the routing key on a sharded jobs queue (else the job id).
    pub key: Option<String>,
    /// The job record.
    pub body: Vec<u8>,
}

impl OutgoingJob {
    /// A job from a JSONL record: its `job_id`, or the deterministic default.
    /// Its `key` too, when the record has one.
    pub fn from_record(body: Vec<u8>) -> Self {
        let (job_id, key) = peek(&body);
        let job_id = job_id.unwrap_or_else(|| job_id_from_body(&body, &Envelope::default()));
        Self { job_id, key, body }
    }

    /// The routing key on a sharded jobs queue: the key, else the job id.
    pub fn routing_key(&self) -> &str {
        kiln_protocol::routing_key(self.key.as_deref(), &self.job_id)
    }
}

/// The record's `job_id` and `key`, each when present and not empty.
fn peek(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Peek {
        job_id: Option<String>,
        key: Option<String>,
    }
    let Ok(peek) = serde_json::from_slice::<Peek>(body) else {
        return (None, None);
    };
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    (non_empty(peek.job_id), non_empty(peek.key))
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
    /// How long the reply queue may go unused (no consumer, no
    /// redeclare) before the broker deletes it (`x-expires`).
    pub reply_expires: Duration,
}

/// The arguments of a reply queue that expires after `expires` unused.
fn reply_queue_arguments(expires: Duration) -> FieldTable {
    let mut args = FieldTable::default();
    let ms = i64::try_from(expires.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    args
}

/// Declares the reply queue `queue` (expiring after `expires` unused) on a
/// channel of its own. One declared by an older Kiln without `x-expires`
/// (406 PRECONDITION_FAILED) is used as it is, and deleted as before once
/// every reply is in.
async fn declare_reply_queue(
    conn: &Connection,
    queue: &str,
    expires: Duration,
) -> Result<(), BrokerError> {
    let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
    match crate::topology::declare(&channel, queue, reply_queue_arguments(expires)).await {
        Ok(()) => {
            let _ = channel.close(200, ShortString::from("declared")).await;
            Ok(())
        }
        Err(BrokerError::Declare { source, .. })
            if crate::topology::is_soft_error(&source, &AMQPSoftError::PRECONDITIONFAILED) =>
        {
            tracing::warn!(queue, "reply queue exists without x-expires: used as it is");
            let fresh = conn.create_channel().await.map_err(BrokerError::Channel)?;
            crate::topology::declare_passive(&fresh, queue).await?;
            let _ = fresh.close(200, ShortString::from("declared")).await;
            Ok(())
        }
        Err(error) => Err(error),
    }
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
    topology.declare(&conn).await?;
    if let Some(q) = &options.reply_queue {
        declare_reply_queue(&conn, q, options.reply_expires).await?;
    }
    let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
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
            .with_correlation_id(ShortString::from(job.job_id.clone()))
            // The publish time, for the worker's queue wait
            // (`kiln_job_queue_wait_seconds`).
            .with_timestamp(crate::delivery::unix_now());
        if let Some(q) = &options.reply_queue {
            props = props.with_reply_to(ShortString::from(q.clone()));
        }
        let (exchange, routing_key) = topology.route(job.routing_key());
        let mut headers = FieldTable::default();
        if let Some(key) = &job.key {
            headers.insert(KEY_HEADER.into(), text(key));
        }
        let span = tracing::info_span!(
            "publish",
            otel.name = %format_args!("publish {}", topology.jobs),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation = "publish",
            messaging.operation.type = "send",
            messaging.destination.name = %topology.jobs,
            messaging.rabbitmq.destination.routing_key = %routing_key,
            messaging.message.id = %job.job_id,
            messaging.message.body.size = job.body.len(),
            kiln.job_id = %job.job_id,
        );
        if trace.enabled() && !span.is_disabled() {
            trace.inject(&span, &mut headers);
        }
        if !headers.inner().is_empty() {
            props = props.with_headers(headers);
        }
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange.to_owned()),
                ShortString::from(routing_key.to_owned()),
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
        assert_eq!(d.key, None);
    }

    #[test]
    fn the_key_routes_and_defaults_to_the_job_id() {
        let keyed = OutgoingJob::from_record(
            br#"{"job_id":"j1","key":"t7","plugin":"p","input":"x"}"#.to_vec(),
        );
        assert_eq!(
            (keyed.key.as_deref(), keyed.routing_key()),
            (Some("t7"), "t7")
        );
        let bare = OutgoingJob::from_record(br#"{"job_id":"j1","key":"","plugin":"p"}"#.to_vec());
        assert_eq!((bare.key.as_deref(), bare.routing_key()), (None, "j1"));
    }

    #[test]
    fn reply_queues_expire() {
        let args = reply_queue_arguments(Duration::from_secs(3_600));
        assert_eq!(
            args.inner().get("x-expires"),
            Some(&AMQPValue::LongLongInt(3_600_000))
        );
        // The broker refuses 0.
        let args = reply_queue_arguments(Duration::ZERO);
        assert_eq!(
            args.inner().get("x-expires"),
            Some(&AMQPValue::LongLongInt(1))
        );
    }
}
