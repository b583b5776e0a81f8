//! The at-least-once consumer: one supervised connection, bounded
//! concurrency, reply-then-ack, retries through delay queues, dead letters
//! with the reason, reconnects, and a graceful drain.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_protocol::{Disposition, Envelope, Handled};
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::Instrument as _;

use crate::config::AmqpConfig;
use crate::publisher::Publisher;
use crate::settle::Settler;
use crate::topology::Topology;
use crate::{BrokerError, NoTraceHeaders, TraceHeaders};

/// How long shutdown waits for the broker to answer a cancel, requeue or
/// close before leaving the rest to the end of the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Header carrying the 1-based attempt number of a retried job.
pub const ATTEMPT_HEADER: &str = "x-kiln-attempt";
/// Header carrying the error kind of a dead letter.
pub const ERROR_KIND_HEADER: &str = "x-kiln-error-kind";
/// Header carrying the error message of a dead letter.
pub const ERROR_MESSAGE_HEADER: &str = "x-kiln-error-message";

/// Runs one job: whoever joins the broker to the sandbox implements this.
pub trait JobHandler: Send + Sync + 'static {
    /// Handles attempt `attempt` (1-based) of the job in `body`.
    fn handle(
        &self,
        body: &[u8],
        envelope: &Envelope<'_>,
        attempt: u32,
    ) -> impl Future<Output = Handled> + Send;
}

/// Counters and state the worker exposes (readiness, metrics).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Jobs acked after their reply (or retry, or dead letter) was confirmed.
    pub acked: std::sync::atomic::AtomicU64,
    /// Retries scheduled.
    pub retried: std::sync::atomic::AtomicU64,
    /// Jobs dead-lettered.
    pub dead_lettered: std::sync::atomic::AtomicU64,
    /// Replies the broker returned as unroutable.
    pub unroutable_replies: std::sync::atomic::AtomicU64,
    /// Reconnections after a lost connection or consumer.
    pub reconnects: std::sync::atomic::AtomicU64,
}

/// The consumer side of `kiln worker`.
pub struct Worker<H> {
    config: AmqpConfig,
    topology: Topology,
    handler: Arc<H>,
    concurrency: usize,
    ready: watch::Sender<bool>,
    stats: Arc<WorkerStats>,
    trace: Arc<dyn TraceHeaders>,
}

/// Why a session with the broker ended.
enum SessionEnd {
    /// Shutdown was requested and the drain is complete.
    Drained,
    /// The connection, channel or consumer was lost.
    Lost(String),
}

use std::sync::atomic::Ordering::Relaxed;

impl<H: JobHandler> Worker<H> {
    /// A worker for `topology`, running at most `concurrency` jobs at once.
    pub fn new(
        config: AmqpConfig,
        topology: Topology,
        handler: Arc<H>,
        concurrency: usize,
    ) -> Self {
        Self {
            config,
            topology,
            handler,
            concurrency: concurrency.max(1),
            ready: watch::Sender::new(false),
            stats: Arc::default(),
            trace: Arc::new(NoTraceHeaders),
        }
    }

    /// Propagates trace context: each job's span continues the trace in
    /// its delivery's headers, and its reply carries the job's context.
    #[must_use]
    pub fn with_trace_headers(mut self, trace: Arc<dyn TraceHeaders>) -> Self {
        self.trace = trace;
        self
    }

    /// Readiness: connected, consuming, and not draining.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown` resolves, reconnecting with backoff
    /// whenever the connection, channel or consumer is lost; then drains.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        let mut delay = Duration::from_millis(self.config.reconnect_initial_ms);
        let max = Duration::from_millis(self.config.reconnect_max_ms);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            match self.session(shutdown.clone()).await {
                SessionEnd::Drained => return,
                SessionEnd::Lost(error) => {
                    self.ready.send_replace(false);
                    self.stats.reconnects.fetch_add(1, Relaxed);
                    // A session that ran a while resets the backoff.
                    if started.elapsed() > max {
                        delay = Duration::from_millis(self.config.reconnect_initial_ms);
                    }
                    tracing::warn!(url = %self.config.redacted_url(), %error, retry_in = ?delay, "broker session lost, reconnecting");
                    let mut stop = shutdown.clone();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stopped(&mut stop) => return,
                    }
                    delay = (delay * 2).min(max);
                }
            }
        }
    }

    async fn session(&self, mut shutdown: watch::Receiver<bool>) -> SessionEnd {
        let name = self.config.connection_name();
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(name.clone().into_bytes()));
        let conn = match Connection::connect(&self.config.url, props).await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(format!("cannot connect: {e}")),
        };
        let setup = async {
            let consume = conn.create_channel().await.map_err(BrokerError::Channel)?;
            self.topology.declare(&consume).await?;
            consume
                .basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await
                .map_err(BrokerError::Channel)?;
            let publisher =
                Publisher::start(conn.create_channel().await.map_err(BrokerError::Channel)?)
                    .await?;
            let probe = conn.create_channel().await.map_err(BrokerError::Channel)?;
            let consumer = consume
                .basic_consume(
                    ShortString::from(self.topology.jobs.clone()),
                    ShortString::from(name.clone()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(BrokerError::Channel)?;
            Ok::<_, BrokerError>((consume, publisher, probe, consumer))
        };
        let (consume, publisher, probe, mut consumer) = match setup.await {
            Ok(s) => s,
            Err(e) => {
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    conn.close(200, ShortString::from("setup failed")),
                )
                .await;
                return SessionEnd::Lost(e.to_string());
            }
        };
        tracing::info!(queue = %self.topology.jobs, connection = %name, prefetch = self.config.prefetch, "consuming");
        self.ready.send_replace(true);

        let slots = Arc::new(Semaphore::new(self.concurrency));
        let (settler, settling) = Settler::start(consume.clone(), self.stats.clone());
        let inflight: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        let stall = Duration::from_millis(self.config.stall_timeout_ms);
        let mut last_delivery = Instant::now();
        let mut watchdog = tokio::time::interval(stall.max(Duration::from_millis(100)) / 2);

        // A second receiver for waits nested inside the loop's own select.
        let mut stop = shutdown.clone();
        let end = loop {
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break None,
                next = consumer.next() => {
                    // Reap finished jobs here rather than in a branch of
                    // this select, which would wake the loop once per job.
                    reap(&mut tasks);
                    let delivery = match next {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => break Some(format!("consumer error: {e}")),
                        None => break Some("consumer cancelled by the broker".to_owned()),
                    };
                    last_delivery = Instant::now();
                    tracing::debug!(delivery_tag = delivery.delivery_tag, free_slots = slots.available_permits(), "delivery received");
                    let permit = tokio::select! {
                        p = slots.clone().acquire_owned() => p,
                        () = stopped(&mut stop) => {
                            settler.requeue(delivery.delivery_tag);
                            break None;
                        }
                    };
                    let Ok(permit) = permit else { break None };
                    inflight.lock().unwrap_or_else(|e| e.into_inner()).insert(delivery.delivery_tag);
                    let job = Job {
                        handler: self.handler.clone(),
                        publisher: publisher.clone(),
                        settler: settler.clone(),
                        topology: self.topology.clone(),
                        stats: self.stats.clone(),
                        delivery_limit: self.config.delivery_limit,
                        trace: self.trace.clone(),
                    };
                    let inflight = inflight.clone();
                    tasks.spawn(async move {
                        let tag = delivery.delivery_tag;
                        job.process(delivery, permit).await;
                        inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&tag);
                    });
                }
                _ = watchdog.tick() => {
                    if last_delivery.elapsed() >= stall && slots.available_permits() > 0 {
                        // Bounded: on a connection that went silent the
                        // probe's answer never comes either.
                        let declare = probe.queue_declare(ShortString::from(self.topology.jobs.clone()), QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() }, FieldTable::default());
                        match tokio::time::timeout(stall, declare).await {
                            Ok(Ok(q)) if q.message_count() > 0 => break Some(format!("consumer stalled: {} ready messages, none delivered for {stall:?}", q.message_count())),
                            Ok(Ok(_)) => last_delivery = Instant::now(),
                            Ok(Err(e)) => break Some(format!("queue probe failed: {e}")),
                            Err(_) => break Some(format!("connection silent: no delivery and no answer to a queue probe for {stall:?}")),
                        }
                    }
                }
            }
        };

        match end {
            Some(lost) => {
                // Unacked deliveries are requeued by the broker when the
                // channel goes; in-flight jobs finish but cannot ack.
                tasks.abort_all();
                settling.abort();
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    conn.close(200, ShortString::from("reconnecting")),
                )
                .await;
                SessionEnd::Lost(lost)
            }
            None => {
                self.ready.send_replace(false);
                let session = Session {
                    conn: &conn,
                    channel: &consume,
                    consumer: &mut consumer,
                    settler,
                    settling,
                    inflight: &inflight,
                    tag: &name,
                };
                self.drain(session, tasks).await;
                SessionEnd::Drained
            }
        }
    }

    /// Graceful drain: cancel the consumer and requeue what was prefetched
    /// but not started (together bounded by [`CLOSE_TIMEOUT`]), let
    /// in-flight jobs finish (reply and ack) within the shutdown timeout,
    /// requeue whatever is still unfinished, send the last acks and close
    /// (again bounded by [`CLOSE_TIMEOUT`]). A broker that stops reading (a
    /// disk or memory alarm) therefore delays the exit by at most twice
    /// that: what could not be requeued is requeued by the broker when the
    /// connection ends.
    async fn drain(&self, session: Session<'_>, mut tasks: tokio::task::JoinSet<()>) {
        let Session {
            conn,
            channel,
            consumer,
            settler,
            settling,
            inflight,
            tag,
        } = session;
        tracing::info!(in_flight = tasks.len(), "draining");
        let mut requeued = 0;
        let stop_consuming = async {
            let cancel = channel.basic_cancel(
                ShortString::from(tag.to_owned()),
                BasicCancelOptions::default(),
            );
            if let Err(error) = cancel.await {
                tracing::warn!(%error, "cannot cancel the consumer");
            }
            // Deliveries already buffered were never started: requeue at once.
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_millis(50), consumer.next()).await
            {
                settler.requeue(delivery.delivery_tag);
                requeued += 1;
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, stop_consuming)
            .await
            .is_err()
        {
            tracing::warn!(
                "broker did not answer the cancel in time; it requeues prefetched jobs when the connection ends"
            );
        }
        let timeout = Duration::from_millis(self.config.shutdown_timeout_ms);
        let finished = tokio::time::timeout(timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        let mut left = 0;
        if finished.is_err() {
            tasks.abort_all();
            // Joined, the aborted tasks hold no settler handle any more.
            while tasks.join_next().await.is_some() {}
            let unfinished =
                std::mem::take(&mut *inflight.lock().unwrap_or_else(|e| e.into_inner()));
            left = unfinished.len();
            for delivery_tag in unfinished {
                settler.requeue(delivery_tag);
            }
        }
        // The last handle: the settler sends what is queued, then ends.
        drop(settler);
        let finish = async {
            let _ = settling.await;
            let _ = channel.close(200, ShortString::from("shutdown")).await;
            let _ = conn.close(200, ShortString::from("shutdown")).await;
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, finish).await.is_err() {
            tracing::warn!(
                "broker did not answer close in time; it requeues unacked jobs when the connection ends"
            );
        }
        tracing::info!(
            requeued_unstarted = requeued,
            requeued_unfinished = left,
            "drained"
        );
    }
}

/// Resolves once shutdown is requested (or its sender is gone), holding
/// no borrow of the value, so the futures that wait on it stay `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// What the drain of a session needs.
struct Session<'a> {
    conn: &'a Connection,
    channel: &'a lapin::Channel,
    consumer: &'a mut lapin::Consumer,
    settler: Settler,
    settling: tokio::task::JoinHandle<()>,
    inflight: &'a Mutex<HashSet<u64>>,
    tag: &'a str,
}

/// Collects the jobs that have finished, without waiting; a job task that
/// panicked is logged (its delivery stays unacked until the channel ends,
/// when the broker redelivers it).
fn reap(tasks: &mut tokio::task::JoinSet<()>) {
    while let Some(done) = tasks.try_join_next() {
        if let Err(error) = done
            && error.is_panic()
        {
            tracing::error!(%error, "a job task panicked");
        }
    }
}

/// What one delivery's task needs.
struct Job<H> {
    handler: Arc<H>,
    publisher: Publisher,
    settler: Settler,
    topology: Topology,
    stats: Arc<WorkerStats>,
    delivery_limit: u32,
    trace: Arc<dyn TraceHeaders>,
}

impl<H: JobHandler> Job<H> {
    /// Runs the job while holding its `slot`, then frees the slot before
    /// the reply's confirm and the ack: the concurrency limit bounds the
    /// sandboxes running, not round trips to the broker (prefetch bounds
    /// those).
    async fn process(self, delivery: Delivery, slot: OwnedSemaphorePermit) {
        let Incoming {
            envelope,
            attempt,
            redeliveries,
        } = Incoming::read(&delivery.properties);
        // The job's span, after the OTel messaging conventions. With its
        // level filtered out (the default `warn`, and no trace export) the
        // macro evaluates none of the fields and this costs a branch.
        let span = tracing::info_span!(
            "job",
            otel.name = %format_args!("process {}", self.topology.jobs),
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation = "process",
            messaging.operation.type = "process",
            messaging.destination.name = %self.topology.jobs,
            messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
            messaging.message.id = envelope.message_id,
            messaging.message.conversation_id = envelope.correlation_id,
            messaging.message.body.size = delivery.data.len(),
            kiln.job_id = tracing::field::Empty,
            kiln.attempt = attempt,
            kiln.plugin = tracing::field::Empty,
            kiln.plugin_version = tracing::field::Empty,
            kiln.outcome = tracing::field::Empty,
        );
        if self.trace.enabled() && !span.is_disabled() {
            self.trace
                .extract(delivery.properties.headers().as_ref(), &span);
        }
        async {
            let handled = if redeliveries.saturating_add(1) >= self.delivery_limit {
                // The broker would dead-letter it silently on the next delivery:
                // answer and dead-letter it ourselves, with the reason.
                poison(&delivery.data, &envelope, redeliveries)
            } else {
                self.handler
                    .handle(&delivery.data, &envelope, attempt)
                    .await
            };
            drop(slot);
            let span = tracing::Span::current();
            span.record("kiln.job_id", handled.job_id.as_str());
            span.record(
                "kiln.outcome",
                handled.error.map_or("ok", kiln_protocol::ErrorKind::as_str),
            );
            // Only a confirmed outcome acks the job; the settler sends the
            // ack (coalesced with others), this task does not wait for it.
            match self.dispose(&delivery, &handled, attempt).await {
                Ok(()) => self.settler.ack(delivery.delivery_tag),
                Err(error) => {
                    tracing::warn!(%error, "publish not confirmed, requeueing the job");
                    self.settler.requeue(delivery.delivery_tag);
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Publishes what the disposition calls for, each confirmed.
    async fn dispose(
        &self,
        delivery: &Delivery,
        handled: &Handled,
        attempt: u32,
    ) -> Result<(), BrokerError> {
        match handled.disposition {
            Disposition::Reply => self.reply(delivery, handled).await,
            Disposition::Retry { next_attempt, .. } => {
                let Some(queue) = self.topology.retry_queue(attempt) else {
                    // No delay queue for this step (policy changed): answer.
                    return self.dead_letter(delivery, handled, attempt).await;
                };
                let mut props = delivery.properties.clone();
                let mut headers = props.headers().clone().unwrap_or_default();
                headers.insert(
                    ATTEMPT_HEADER.into(),
                    AMQPValue::LongLongInt(i64::from(next_attempt)),
                );
                props = props.with_headers(headers).with_delivery_mode(2);
                self.publish(queue, delivery.data.clone(), props, false)
                    .await?;
                self.stats.retried.fetch_add(1, Relaxed);
                tracing::info!(queue, next_attempt, "job scheduled for retry");
                Ok(())
            }
            Disposition::ReplyAndDeadLetter => {
                self.reply(delivery, handled).await?;
                self.dead_letter(delivery, handled, attempt).await
            }
        }
    }

    async fn reply(&self, delivery: &Delivery, handled: &Handled) -> Result<(), BrokerError> {
        let props = &delivery.properties;
        let to = props
            .reply_to()
            .as_ref()
            .map_or(self.topology.results.as_str(), ShortString::as_str);
        let mut reply = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(handled.job_id.clone()));
        if let Some(correlation) = props.correlation_id() {
            reply = reply.with_correlation_id(correlation.clone());
        }
        if self.trace.enabled() {
            let mut headers = FieldTable::default();
            self.trace.inject(&tracing::Span::current(), &mut headers);
            if !headers.inner().is_empty() {
                reply = reply.with_headers(headers);
            }
        }
        self.publish(to, handled.encoded.clone(), reply, true).await
    }

    /// Publishes and waits for the confirm. A returned message the confirm
    /// carries is a reply whose requester's queue is gone (only replies are
    /// `mandatory`), not necessarily this publish's: nobody can receive it,
    /// and retrying would loop forever, so it is logged by its own job id,
    /// counted, and dropped.
    async fn publish(
        &self,
        to: &str,
        body: Vec<u8>,
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let returned = self
            .publisher
            .publish(to, body, properties, mandatory)
            .await?;
        if let Some(returned) = returned {
            self.stats.unroutable_replies.fetch_add(1, Relaxed);
            tracing::warn!(
                reply_to = returned.routing_key,
                job_id = returned.message_id,
                reason = returned.reply_text,
                "reply unroutable, dropped"
            );
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        handled: &Handled,
        attempt: u32,
    ) -> Result<(), BrokerError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(attempt)),
        );
        let (kind, message) = match &handled.reply.body {
            kiln_protocol::ReplyBody::Error(e) => (e.kind.as_str(), e.message.clone()),
            _ => ("unknown", String::new()),
        };
        headers.insert(
            ERROR_KIND_HEADER.into(),
            AMQPValue::LongString(LongString::from(kind.as_bytes().to_vec())),
        );
        headers.insert(
            ERROR_MESSAGE_HEADER.into(),
            AMQPValue::LongString(LongString::from(message.into_bytes())),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The timestamp says when it was dead-lettered (`kiln dlq list` shows the age).
        let mut props = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_timestamp(now);
        if props.message_id().is_none() {
            props = props.with_message_id(ShortString::from(handled.job_id.clone()));
        }
        self.publish(&self.topology.dead, delivery.data.clone(), props, false)
            .await?;
        self.stats.dead_lettered.fetch_add(1, Relaxed);
        tracing::warn!(queue = %self.topology.dead, kind, "job dead-lettered");
        Ok(())
    }
}

/// The answer for a job redelivered too often (it keeps killing workers).
fn poison(body: &[u8], envelope: &Envelope<'_>, redeliveries: u32) -> Handled {
    let job_id = kiln_protocol::job_id_from_body(body, envelope);
    let plugin = kiln_protocol::decode_job(body, envelope, &kiln_protocol::DecodeLimits::default())
        .map(|j| j.plugin)
        .unwrap_or_default();
    let error = kiln_protocol::JobError::new(
        kiln_protocol::ErrorKind::Internal,
        format!(
            "delivered {} times without being answered; giving up",
            redeliveries + 1
        ),
    );
    let reply = kiln_protocol::Reply::error(job_id.clone(), plugin, error);
    let encoded = kiln_protocol::encode_reply(&reply, usize::MAX);
    Handled {
        job_id,
        reply,
        encoded,
        error: Some(kiln_protocol::ErrorKind::Internal),
        disposition: Disposition::ReplyAndDeadLetter,
    }
}

/// What a delivery's AMQP properties say about its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// `message_id` and `correlation_id`, for the job id and the reply.
    pub envelope: Envelope<'a>,
    /// The 1-based attempt (`x-kiln-attempt`, default 1).
    pub attempt: u32,
    /// How often the broker redelivered it (`x-delivery-count`, quorum queues).
    pub redeliveries: u32,
}

impl<'a> Incoming<'a> {
    /// Reads the properties of any message, however malformed its headers.
    pub fn read(props: &'a BasicProperties) -> Self {
        let headers = props.headers().as_ref();
        Self {
            envelope: Envelope {
                message_id: props.message_id().as_ref().map(ShortString::as_str),
                correlation_id: props.correlation_id().as_ref().map(ShortString::as_str),
            },
            attempt: header_u32(headers, ATTEMPT_HEADER).unwrap_or(1).max(1),
            redeliveries: header_u32(headers, "x-delivery-count").unwrap_or(0),
        }
    }
}

/// Reads an integer header, whatever integer type the sender used.
pub fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(name)?;
    let n: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        _ => return None,
    };
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<f64>().prop_map(AMQPValue::Double),
            any::<Vec<u8>>().prop_map(|b| AMQPValue::LongString(LongString::from(b))),
            Just(AMQPValue::Void),
        ]
    }

    proptest! {
        /// Arbitrary bodies and AMQP properties never panic: they always
        /// give a typed outcome (a job, or a request error with a job id).
        #[test]
        fn any_delivery_reads_to_a_typed_outcome(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            message_id in proptest::option::of("\\PC{0,40}"),
            correlation_id in proptest::option::of("\\PC{0,40}"),
            attempt in proptest::option::of(value()),
            count in proptest::option::of(value()),
        ) {
            let mut headers = FieldTable::default();
            if let Some(v) = attempt {
                headers.insert(ATTEMPT_HEADER.into(), v);
            }
            if let Some(v) = count {
                headers.insert("x-delivery-count".into(), v);
            }
            let mut props = BasicProperties::default().with_headers(headers);
            if let Some(m) = message_id {
                props = props.with_message_id(ShortString::from(m));
            }
            if let Some(c) = correlation_id {
                props = props.with_correlation_id(ShortString::from(c));
            }
            let incoming = Incoming::read(&props);
            prop_assert!(incoming.attempt >= 1);
            match kiln_protocol::decode_job(&body, &incoming.envelope, &kiln_protocol::DecodeLimits::default()) {
                Ok(job) => prop_assert!(!job.job_id.is_empty()),
                Err(e) => prop_assert!(!e.job_id.is_empty()),
            }
            let poisoned = poison(&body, &incoming.envelope, incoming.redeliveries);
            prop_assert_eq!(poisoned.disposition, Disposition::ReplyAndDeadLetter);
        }
    }

    #[test]
    fn integer_headers_of_any_width() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongLongInt(3));
        t.insert("b".into(), AMQPValue::ShortShortUInt(2));
        t.insert(
            "c".into(),
            AMQPValue::LongString(LongString::from(b"7".to_vec())),
        );
        t.insert("d".into(), AMQPValue::LongLongInt(-1));
        t.insert("e".into(), AMQPValue::Boolean(true));
        let t = Some(&t);
        assert_eq!(header_u32(t, "a"), Some(3));
        assert_eq!(header_u32(t, "b"), Some(2));
        assert_eq!(header_u32(t, "c"), Some(7));
        assert_eq!(header_u32(t, "d"), None);
        assert_eq!(header_u32(t, "e"), None);
        assert_eq!(header_u32(t, "missing"), None);
        assert_eq!(header_u32(None, "a"), None);
    }
}
