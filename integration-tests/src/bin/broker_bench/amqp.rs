//! The broker side of the harness: connections, queue declarations, the
//! confirming publisher and the reply consumer that times every job.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::{QueueType, Workload};

/// Opens a connection named `name` (the name shows in the broker's tools).
pub(crate) async fn connect(url: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Awaits a closing step for at most 10 s, ignoring its result: cleanup
/// must never hang the harness.
pub(crate) async fn quietly<T>(step: impl std::future::Future<Output = T>) {
    let _ = tokio::time::timeout(Duration::from_secs(10), step).await;
}

/// The declaration arguments of a jobs queue of type `qt`.
pub(crate) fn queue_args(qt: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if qt == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    args
}

/// Declares a durable jobs queue of type `qt` (quorum: durable, not
/// exclusive, not auto-delete, `x-queue-type: quorum`; classic: durable).
pub(crate) async fn declare_jobs_queue(conn: &Connection, name: &str, qt: QueueType) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.queue_declare(name.into(), durable(), queue_args(qt))
        .await
        .with_context(|| format!("declaring {qt} queue {name}"))?;
    quietly(ch.close(200, "OK".into())).await;
    Ok(())
}

/// Declares the reply queue: classic, durable, deleted by the harness.
pub(crate) async fn declare_reply_queue(conn: &Connection, name: &str) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.queue_declare(name.into(), durable(), FieldTable::default())
        .await
        .with_context(|| format!("declaring reply queue {name}"))?;
    quietly(ch.close(200, "OK".into())).await;
    Ok(())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// The consumer count of `queue`, or `None` when it does not exist (a
/// passive declare; the broker closes the channel when the queue is absent,
/// so each probe uses a channel of its own).
pub(crate) async fn consumer_count(conn: &Connection, queue: &str) -> Result<Option<u32>> {
    let ch = conn.create_channel().await?;
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
    {
        Ok(q) => {
            quietly(ch.close(200, "OK".into())).await;
            Ok(Some(q.consumer_count()))
        }
        Err(_) => Ok(None),
    }
}

/// Waits until `queue` exists and has at least one consumer. `alive` is
/// asked on every round whether the system under test is still running
/// (`Err(reason)` when it is not).
pub(crate) async fn wait_for_consumer(
    conn: &Connection,
    queue: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> std::result::Result<(), String>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Err(reason) = alive() {
            bail!("{reason}");
        }
        if let Some(n) = consumer_count(conn, queue).await?
            && n > 0
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no consumer on {queue} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes a queue (deleting a missing queue is not an error for RabbitMQ).
pub(crate) async fn delete_queue(conn: &Connection, name: &str) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("deleting queue {name}"))?;
    quietly(ch.close(200, "OK".into())).await;
    Ok(())
}

/// Deletes an exchange.
pub(crate) async fn delete_exchange(conn: &Connection, name: &str) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await
        .with_context(|| format!("deleting exchange {name}"))?;
    quietly(ch.close(200, "OK".into())).await;
    Ok(())
}

/// What the jobs look like on the wire, and how a reply is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// A Kiln job record; the reply is the body upper-cased, byte for byte.
    Echo,
    /// A Kiln job record; the reply is a Kiln reply record: same `job_id`,
    /// `status: ok`, the input upper-cased.
    Kiln,
    /// A Celery task message (protocol 2, JSON, as `apply_async` sends it)
    /// for `tasks.upper`; the reply is the `rpc://` backend's result:
    /// `status: SUCCESS`, the input upper-cased.
    Celery,
}

#[derive(Deserialize)]
struct CeleryResult {
    status: String,
    #[serde(default)]
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct KilnReply {
    job_id: String,
    status: String,
    #[serde(default)]
    output: Option<String>,
}

impl Format {
    /// The body and properties of job `i`.
    fn message(self, w: &Workload, i: usize, reply_to: &ShortString) -> (String, BasicProperties) {
        let id: ShortString = w.job_id(i).into();
        let props = BasicProperties::default()
            .with_correlation_id(id.clone())
            .with_reply_to(reply_to.clone())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        match self {
            Format::Echo | Format::Kiln => (w.body(i), props.with_message_id(id)),
            Format::Celery => {
                let (body, headers) = w.celery_task(i);
                let props = props
                    .with_content_encoding("utf-8".into())
                    .with_priority(0)
                    .with_headers(headers);
                (body, props)
            }
        }
    }

    /// `None` when the reply is right, else what is wrong with it.
    fn check(self, w: &Workload, i: usize, data: &[u8]) -> Option<String> {
        match self {
            Format::Celery => {
                let ok = match serde_json::from_slice::<CeleryResult>(data) {
                    Ok(r) => {
                        r.status == "SUCCESS"
                            && r.result.as_str() == Some(w.input(i).to_uppercase().as_str())
                    }
                    Err(_) => false,
                };
                (!ok).then(|| {
                    format!(
                        "result for {} is wrong: {}",
                        w.job_id(i),
                        String::from_utf8_lossy(data)
                    )
                })
            }
            Format::Echo => {
                let expected = w.body(i).to_ascii_uppercase();
                (data != expected.as_bytes()).then(|| {
                    format!(
                        "echo reply for {} differs: {}",
                        w.job_id(i),
                        String::from_utf8_lossy(data)
                    )
                })
            }
            Format::Kiln => {
                let reply: KilnReply = match serde_json::from_slice(data) {
                    Ok(r) => r,
                    Err(e) => {
                        return Some(format!(
                            "reply for {} is not a reply record ({e}): {}",
                            w.job_id(i),
                            String::from_utf8_lossy(data)
                        ));
                    }
                };
                let ok = reply.job_id == w.job_id(i)
                    && reply.status == "ok"
                    && reply.output.as_deref() == Some(w.input(i).to_uppercase().as_str());
                (!ok).then(|| {
                    format!(
                        "reply for {} is wrong: {}",
                        w.job_id(i),
                        String::from_utf8_lossy(data)
                    )
                })
            }
        }
    }
}

/// The settings of one load run.
pub(crate) struct LoadSpec<'a> {
    pub url: &'a str,
    pub jobs_queue: &'a str,
    /// A sharded jobs queue's consistent-hash exchange: jobs go there,
    /// routed by their id (Kiln's default key), instead of to `jobs_queue`.
    pub exchange: Option<&'a str>,
    pub reply_queue: &'a str,
    pub workload: &'a Workload,
    pub jobs: usize,
    pub max_unconfirmed: usize,
    pub stall: Duration,
    pub deadline: Duration,
    pub format: Format,
}

/// What the reply consumer saw.
#[derive(Debug, Default)]
pub(crate) struct LoadOutcome {
    /// Distinct jobs answered.
    pub received: u64,
    /// Replies that were not right (counted in `received`).
    pub errors: u64,
    /// Second and later replies for a job already answered.
    pub duplicates: u64,
    /// Replies whose correlation id is not one of this run's jobs.
    pub foreign: u64,
    /// First publish to last new reply.
    pub seconds: f64,
    /// First publish to last publisher confirm.
    pub publish_seconds: f64,
    /// Per-job latency in microseconds (reply received − publish), unsorted.
    pub latencies_us: Vec<u64>,
    /// Why the run stopped short, or the first wrong reply.
    pub notes: Vec<String>,
}

/// Publishes `spec.jobs` jobs with confirms (at most `max_unconfirmed`
/// outstanding) while the reply consumer collects every reply, matched by
/// correlation id. Returns when every job is answered, when no reply came
/// for `stall`, or at `deadline`.
pub(crate) async fn run_load(spec: &LoadSpec<'_>) -> Result<LoadOutcome> {
    let n = spec.jobs;
    let pub_conn = connect(spec.url, "kiln-bench-publisher").await?;
    let reply_conn = connect(spec.url, "kiln-bench-replies").await?;

    // The reply consumer is running before the first job is published.
    let reply_ch = reply_conn.create_channel().await?;
    let mut replies = reply_ch
        .basic_consume(
            spec.reply_queue.into(),
            "kiln-bench-replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("consuming the reply queue")?;

    let pub_ch = pub_conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("confirm.select")?;

    // Publish times in ns since `epoch`, plus one (0 = not yet published).
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let mut publisher = tokio::spawn(publish_all(
        pub_ch.clone(),
        spec.jobs_queue.to_owned(),
        spec.exchange.map(str::to_owned),
        spec.reply_queue.to_owned(),
        spec.workload.clone(),
        spec.format,
        n,
        spec.max_unconfirmed,
        sent_at.clone(),
        stop.clone(),
        epoch,
    ));
    let mut publisher_done = false;

    let mut out = LoadOutcome {
        latencies_us: Vec::with_capacity(n),
        ..LoadOutcome::default()
    };
    let mut seen = vec![false; n];
    let mut last_reply = epoch;
    let hard_deadline = epoch + spec.deadline;
    while (out.received as usize) < n {
        let now = Instant::now();
        if now >= hard_deadline {
            out.notes.push(format!(
                "run deadline of {:?} reached with {} of {n} replies",
                spec.deadline, out.received
            ));
            break;
        }
        let wait = spec.stall.min(hard_deadline - now);
        tokio::select! {
            res = &mut publisher, if !publisher_done => {
                publisher_done = true;
                match res {
                    Ok(Ok(secs)) => out.publish_seconds = secs,
                    Ok(Err(e)) => {
                        out.notes.push(format!("publisher failed: {e:#}"));
                        break;
                    }
                    Err(e) => {
                        out.notes.push(format!("publisher task failed: {e}"));
                        break;
                    }
                }
            }
            next = tokio::time::timeout(wait, replies.next()) => match next {
                Err(_) => {
                    if Instant::now() < hard_deadline {
                        out.notes.push(format!(
                            "no reply for {:?}: stopped with {} of {n} replies",
                            spec.stall, out.received
                        ));
                        break;
                    }
                }
                Ok(None) => {
                    out.notes.push("the reply consumer was cancelled".into());
                    break;
                }
                Ok(Some(Err(e))) => {
                    out.notes.push(format!("reply consumer failed: {e}"));
                    break;
                }
                Ok(Some(Ok(delivery))) => {
                    let now = Instant::now();
                    let idx = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .and_then(|c| spec.workload.index_of(c.as_str()))
                        .filter(|&i| i < n);
                    let Some(i) = idx else {
                        out.foreign += 1;
                        continue;
                    };
                    if seen[i] {
                        out.duplicates += 1;
                        continue;
                    }
                    seen[i] = true;
                    out.received += 1;
                    last_reply = now;
                    let sent = sent_at[i].load(Ordering::Acquire);
                    let elapsed = now.duration_since(epoch).as_nanos() as u64;
                    out.latencies_us.push(elapsed.saturating_sub(sent.saturating_sub(1)) / 1_000);
                    if let Some(problem) = spec.format.check(spec.workload, i, &delivery.data) {
                        out.errors += 1;
                        if out.errors == 1 {
                            out.notes.push(format!("first wrong reply: {problem}"));
                        }
                    }
                }
            }
        }
    }
    out.seconds = last_reply.duration_since(epoch).as_secs_f64();

    stop.store(true, Ordering::Release);
    if !publisher_done {
        match tokio::time::timeout(Duration::from_secs(5), &mut publisher).await {
            Ok(Ok(Ok(secs))) => out.publish_seconds = secs,
            Ok(Ok(Err(e))) => out.notes.push(format!("publisher failed: {e:#}")),
            Ok(Err(e)) => out.notes.push(format!("publisher task failed: {e}")),
            Err(_) => {
                publisher.abort();
                out.notes
                    .push("publisher still waiting for confirms; aborted".into());
            }
        }
    }
    if out.publish_seconds == 0.0 {
        out.publish_seconds = epoch.elapsed().as_secs_f64();
    }
    quietly(reply_ch.close(200, "OK".into())).await;
    quietly(reply_conn.close(200, "OK".into())).await;
    quietly(pub_conn.close(200, "OK".into())).await;
    Ok(out)
}

/// The one publishing task of the publisher channel: publishes jobs in
/// order, with at most `max_unconfirmed` awaiting their confirm. Returns
/// the seconds from `epoch` to the last confirm.
#[allow(clippy::too_many_arguments)]
async fn publish_all(
    ch: Channel,
    queue: String,
    exchange: Option<String>,
    reply_to: String,
    workload: Workload,
    format: Format,
    n: usize,
    max_unconfirmed: usize,
    sent_at: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> Result<f64> {
    let window = Arc::new(Semaphore::new(max_unconfirmed.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, PublisherConfirm, OwnedSemaphorePermit)>();
    // Confirms arrive in publish order; one task awaits them in turn.
    let confirmer = tokio::spawn(async move {
        while let Some((i, confirm, permit)) = rx.recv().await {
            let confirmation = confirm
                .await
                .with_context(|| format!("waiting for the confirm of job {i}"))?;
            drop(permit);
            if !confirmation.is_ack() {
                bail!("job {i} was not confirmed: {confirmation:?}");
            }
        }
        Ok::<_, anyhow::Error>(epoch.elapsed().as_secs_f64())
    });
    let queue_key: ShortString = queue.as_str().into();
    let exchange_name: ShortString = exchange.as_deref().unwrap_or("").into();
    let reply_to: ShortString = reply_to.as_str().into();
    for (i, slot) in sent_at.iter().enumerate().take(n) {
        let permit = window.clone().acquire_owned().await?;
        if stop.load(Ordering::Acquire) {
            break;
        }
        let (body, props) = format.message(&workload, i, &reply_to);
        slot.store(epoch.elapsed().as_nanos() as u64 + 1, Ordering::Release);
        let routing_key = match exchange {
            Some(_) => workload.job_id(i).as_str().into(),
            None => queue_key.clone(),
        };
        let confirm = ch
            .basic_publish(
                exchange_name.clone(),
                routing_key,
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .with_context(|| format!("publishing job {i}"))?;
        if tx.send((i, confirm, permit)).is_err() {
            break;
        }
    }
    drop(tx);
    confirmer.await?
}
