//! The supervised session: the [`Worker`] connects, declares the topology,
//! consumes with a prefetch window and a job-slot semaphore, spawns one
//! delivery task per message ([`crate::delivery`]), and watches for a
//! consumer that went silent (the stall watchdog); a lost connection,
//! channel or consumer ends the session, and the worker reconnects with
//! backoff. On shutdown the session ends with the drain ([`crate::drain`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use tokio::sync::{Semaphore, watch};

use crate::config::AmqpConfig;
use crate::delivery::{Job, JobHandler};
use crate::drain::{CLOSE_TIMEOUT, Drain, drain};
use crate::publisher::Publisher;
use crate::settle::Settler;
use crate::stats::WorkerStats;
use crate::topology::Topology;
use crate::{BrokerError, NoTraceHeaders, TraceHeaders};

/// The consumer side of `kiln worker`.
pub struct Worker<H> {
    config: AmqpConfig,
    topology: Topology,
    handler: Arc<H>,
    concurrency: usize,
    ready: watch::Sender<bool>,
    stats: Arc<WorkerStats>,
    trace: Arc<dyn TraceHeaders>,
    abort: watch::Receiver<bool>,
}

/// Why a session with the broker ended.
enum SessionEnd {
    /// Shutdown was requested and the drain is complete.
    Drained,
    /// The connection, channel or consumer was lost.
    Lost(String),
}

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
            abort: watch::Sender::new(false).subscribe(),
        }
    }

    /// Cuts a drain short: once `abort` turns true during the drain, the
    /// jobs still in flight are requeued at once instead of being waited
    /// for up to `shutdown_timeout_ms` (the second SIGTERM of a two-stage
    /// shutdown). Without it, the drain always waits.
    #[must_use]
    pub fn with_abort(mut self, abort: watch::Receiver<bool>) -> Self {
        self.abort = abort;
        self
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
    /// The backoff has full jitter ([`reconnect_delay`]), so a fleet that
    /// lost the same broker does not reconnect in lockstep.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        let initial = Duration::from_millis(self.config.reconnect_initial_ms);
        let max = Duration::from_millis(self.config.reconnect_max_ms);
        let mut attempt = 0;
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
                        attempt = 0;
                    }
                    let delay = reconnect_delay(initial, max, attempt, fastrand::f64());
                    tracing::warn!(url = %self.config.redacted_url(), %error, attempt, retry_in = ?delay, "broker session lost, reconnecting");
                    let mut stop = shutdown.clone();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stopped(&mut stop) => return,
                    }
                    attempt = attempt.saturating_add(1);
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
        tracing::info!(url = %self.config.redacted_url(), connection = %name, "connected");
        let setup = async {
            self.topology.declare(&conn).await?;
            let publisher =
                Publisher::start(conn.create_channel().await.map_err(BrokerError::Channel)?)
                    .await?;
            let probe = conn.create_channel().await.map_err(BrokerError::Channel)?;
            // One channel per jobs queue (per shard), each with its own
            // prefetch window; the job slots are shared.
            let mut lanes = Vec::new();
            let mut streams = Vec::new();
            for (index, topology) in self.topology.consumed().into_iter().enumerate() {
                let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
                channel
                    .basic_qos(self.config.prefetch, BasicQosOptions::default())
                    .await
                    .map_err(BrokerError::Channel)?;
                let consumer = channel
                    .basic_consume(
                        ShortString::from(topology.jobs.clone()),
                        ShortString::from(name.clone()),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(BrokerError::Channel)?;
                streams.push(lane_deliveries(index, consumer));
                lanes.push((topology, channel));
            }
            Ok::<_, BrokerError>((
                publisher,
                probe,
                lanes,
                futures::stream::select_all(streams),
            ))
        };
        let (publisher, probe, lanes, mut deliveries) = match setup.await {
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
        let queues: Vec<&str> = lanes.iter().map(|(t, _)| t.jobs.as_str()).collect();
        tracing::info!(queues = ?queues, connection = %name, prefetch = self.config.prefetch, "ready");
        self.ready.send_replace(true);

        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut settling = Vec::with_capacity(lanes.len());
        let lanes: Vec<Lane> = lanes
            .into_iter()
            .map(|(topology, channel)| {
                let (settler, settled) = Settler::start(channel.clone(), self.stats.clone());
                settling.push(settled);
                Lane {
                    topology,
                    channel,
                    settler,
                }
            })
            .collect();
        // What every job of a lane shares, made once per lane: a delivery
        // then costs one reference count, not a clone of the topology's
        // queue names and of the channel handles.
        let jobs: Vec<Arc<Job<H>>> = lanes
            .iter()
            .map(|lane| {
                Arc::new(Job {
                    handler: self.handler.clone(),
                    publisher: publisher.clone(),
                    settler: lane.settler.clone(),
                    topology: lane.topology.clone(),
                    stats: self.stats.clone(),
                    delivery_limit: self.config.delivery_limit,
                    trace: self.trace.clone(),
                })
            })
            .collect();
        let inflight: Arc<Mutex<HashSet<(usize, u64)>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        let stall = Duration::from_millis(self.config.stall_timeout_ms);
        let mut last_delivery = vec![Instant::now(); lanes.len()];
        let mut watchdog = tokio::time::interval(stall.max(Duration::from_millis(100)) / 2);

        // A second receiver for waits nested inside the loop's own select.
        let mut stop = shutdown.clone();
        let end = loop {
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break None,
                next = deliveries.next() => {
                    // Reap finished jobs here rather than in a branch of
                    // this select, which would wake the loop once per job.
                    reap(&mut tasks);
                    let (index, delivery) = match next {
                        Some((index, Some(Ok(d)))) => (index, d),
                        Some((index, Some(Err(e)))) => break Some(format!("consumer error on {}: {e}", lane_queue(&lanes, index))),
                        Some((index, None)) => break Some(format!("consumer of {} cancelled by the broker", lane_queue(&lanes, index))),
                        None => break Some("every consumer ended".to_owned()),
                    };
                    let Some(lane) = lanes.get(index) else { continue };
                    if let Some(last) = last_delivery.get_mut(index) {
                        *last = Instant::now();
                    }
                    tracing::debug!(queue = %lane.topology.jobs, delivery_tag = delivery.delivery_tag, free_slots = slots.available_permits(), "delivery received");
                    let permit = tokio::select! {
                        p = slots.clone().acquire_owned() => p,
                        () = stopped(&mut stop) => {
                            lane.settler.requeue(delivery.delivery_tag);
                            break None;
                        }
                    };
                    let Ok(permit) = permit else { break None };
                    inflight.lock().unwrap_or_else(|e| e.into_inner()).insert((index, delivery.delivery_tag));
                    let Some(job) = jobs.get(index).cloned() else { continue };
                    let inflight = inflight.clone();
                    tasks.spawn(async move {
                        let tag = delivery.delivery_tag;
                        job.process(delivery, permit).await;
                        inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&(index, tag));
                    });
                }
                _ = watchdog.tick() => {
                    if slots.available_permits() == 0 {
                        continue;
                    }
                    let mut lost = None;
                    for (lane, last) in lanes.iter().zip(last_delivery.iter_mut()) {
                        if last.elapsed() < stall {
                            continue;
                        }
                        // Bounded: on a connection that went silent the
                        // probe's answer never comes either.
                        let declare = probe.queue_declare(ShortString::from(lane.topology.jobs.clone()), QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() }, FieldTable::default());
                        match tokio::time::timeout(stall, declare).await {
                            Ok(Ok(q)) if q.message_count() > 0 => lost = Some(format!("consumer of {} stalled: {} ready messages, none delivered for {stall:?}", lane.topology.jobs, q.message_count())),
                            Ok(Ok(_)) => *last = Instant::now(),
                            Ok(Err(e)) => lost = Some(format!("probe of {} failed: {e}", lane.topology.jobs)),
                            Err(_) => lost = Some(format!("connection silent: no delivery and no answer to a queue probe for {stall:?}")),
                        }
                        if lost.is_some() {
                            break;
                        }
                    }
                    if lost.is_some() {
                        break lost;
                    }
                }
            }
        };

        match end {
            Some(lost) => {
                // Unacked deliveries are requeued by the broker when the
                // channels go; in-flight jobs finish but cannot ack.
                tasks.abort_all();
                for settled in &settling {
                    settled.abort();
                }
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    conn.close(200, ShortString::from("reconnecting")),
                )
                .await;
                SessionEnd::Lost(lost)
            }
            None => {
                self.ready.send_replace(false);
                let session = Drain {
                    conn: &conn,
                    lanes,
                    settling,
                    deliveries: &mut deliveries,
                    inflight: &inflight,
                    tag: &name,
                    timeout: Duration::from_millis(self.config.shutdown_timeout_ms),
                    abort: self.abort.clone(),
                };
                drain(session, tasks).await;
                SessionEnd::Drained
            }
        }
    }
}

/// One jobs queue a session consumes (the one, or a shard): its topology,
/// its channel (with its own prefetch window) and the settler that acks on
/// that channel.
pub(crate) struct Lane {
    /// The jobs queue and its dead-letter and delay queues.
    pub(crate) topology: Topology,
    /// The channel its consumer is on.
    pub(crate) channel: lapin::Channel,
    /// Acks and requeues on that channel.
    pub(crate) settler: Settler,
}

/// Every lane's deliveries, merged: each item is the lane's index and its
/// consumer's next item, or `None` once that consumer ended (the broker
/// cancelled it: its queue was deleted).
pub(crate) type Deliveries = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (usize, Option<lapin::Result<lapin::message::Delivery>>)>,
>;

/// The deliveries of lane `index`'s consumer, ending with `(index, None)`.
fn lane_deliveries(
    index: usize,
    consumer: lapin::Consumer,
) -> futures::stream::BoxStream<'static, (usize, Option<lapin::Result<lapin::message::Delivery>>)> {
    consumer
        .map(move |next| (index, Some(next)))
        .chain(futures::stream::once(async move { (index, None) }))
        .boxed()
}

/// The jobs queue of lane `index`, for messages.
fn lane_queue(lanes: &[Lane], index: usize) -> &str {
    lanes
        .get(index)
        .map_or("?", |lane| lane.topology.jobs.as_str())
}

/// The wait before reconnect attempt `attempt` (0 for the first):
/// exponential backoff with full jitter, a uniform draw between zero and
/// `min(cap, initial · 2^attempt)`. `sample` is that uniform draw in
/// `[0, 1)` (clamped), so the function is pure and the caller picks the
/// randomness.
fn reconnect_delay(initial: Duration, cap: Duration, attempt: u32, sample: f64) -> Duration {
    let ceiling = initial
        .saturating_mul(2_u32.saturating_pow(attempt))
        .min(cap);
    ceiling.mul_f64(sample.clamp(0.0, 1.0))
}

/// Resolves once shutdown is requested (or its sender is gone), holding
/// no borrow of the value, so the futures that wait on it stay `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(10);

    /// Many draws for the same attempt, with a seeded generator.
    fn draws(attempt: u32) -> Vec<Duration> {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..2_000)
            .map(|_| reconnect_delay(INITIAL, CAP, attempt, rng.f64()))
            .collect()
    }

    #[test]
    fn delays_spread_over_the_whole_step() {
        for attempt in 0..8 {
            let step = INITIAL.saturating_mul(1 << attempt).min(CAP);
            let delays = draws(attempt);
            let (Some(min), Some(max)) = (delays.iter().min(), delays.iter().max()) else {
                panic!("no draws");
            };
            assert!(
                *min < step / 10,
                "attempt {attempt}: min {min:?} of {step:?}"
            );
            assert!(
                *max > step.mul_f64(0.9),
                "attempt {attempt}: max {max:?} of {step:?}"
            );
            assert!(
                *max <= step,
                "attempt {attempt}: max {max:?} above {step:?}"
            );
        }
    }

    #[test]
    fn the_cap_holds() {
        for attempt in [5, 10, 31, 32, 64, u32::MAX] {
            assert!(reconnect_delay(INITIAL, CAP, attempt, 1.0) <= CAP);
            assert_eq!(
                reconnect_delay(INITIAL, CAP, attempt, 0.999_999),
                CAP.mul_f64(0.999_999)
            );
        }
        assert_eq!(reconnect_delay(INITIAL, CAP, 0, 0.0), Duration::ZERO);
        assert_eq!(reconnect_delay(INITIAL, CAP, 1, 0.5), INITIAL);
        assert!(reconnect_delay(INITIAL, CAP, 0, 2.0) <= INITIAL);
    }
}
