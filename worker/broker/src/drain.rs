//! The graceful drain of a session on shutdown: stop consuming, requeue
//! what was prefetched but not started, let in-flight jobs finish within
//! the shutdown timeout (or until the drain is aborted), requeue the rest,
//! send the last acks and close.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use lapin::Connection;
use lapin::options::BasicCancelOptions;
use lapin::types::ShortString;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::session::{Deliveries, Lane};

/// How long shutdown waits for the broker to answer a cancel, requeue or
/// close before leaving the rest to the end of the connection.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the drain of a session needs.
pub(crate) struct Drain<'a> {
    pub(crate) conn: &'a Connection,
    /// One per jobs queue consumed (one per shard): its channel and settler.
    pub(crate) lanes: Vec<Lane>,
    /// Their settlers' tasks, in the same order.
    pub(crate) settling: Vec<JoinHandle<()>>,
    /// The deliveries of every lane, merged.
    pub(crate) deliveries: &'a mut Deliveries,
    /// The deliveries being handled, by lane and delivery tag.
    pub(crate) inflight: &'a Mutex<HashSet<(usize, u64)>>,
    /// The consumer tag (the same on every lane's channel).
    pub(crate) tag: &'a str,
    /// How long in-flight jobs may take to finish (`shutdown_timeout_ms`).
    pub(crate) timeout: Duration,
    /// Turns true to stop waiting for in-flight jobs (a second signal).
    pub(crate) abort: watch::Receiver<bool>,
}

/// Graceful drain: cancel the consumers and requeue what was prefetched
/// but not started (together bounded by [`CLOSE_TIMEOUT`]), let in-flight
/// jobs finish (reply and ack) within the shutdown timeout (or until
/// `abort` turns true), requeue
/// whatever is still unfinished, send the last acks and close (again
/// bounded by [`CLOSE_TIMEOUT`]). A broker that stops reading (a disk or
/// memory alarm) therefore delays the exit by at most twice that: what
/// could not be requeued is requeued by the broker when the connection
/// ends.
pub(crate) async fn drain(session: Drain<'_>, mut tasks: JoinSet<()>) {
    let Drain {
        conn,
        lanes,
        settling,
        deliveries,
        inflight,
        tag,
        timeout,
        mut abort,
    } = session;
    tracing::info!(in_flight = tasks.len(), "draining");
    let mut requeued = 0;
    let stop_consuming = async {
        for lane in &lanes {
            let cancel = lane.channel.basic_cancel(
                ShortString::from(tag.to_owned()),
                BasicCancelOptions::default(),
            );
            if let Err(error) = cancel.await {
                tracing::warn!(queue = %lane.topology.jobs, %error, "cannot cancel the consumer");
            }
        }
        // Deliveries already buffered were never started: requeue at once.
        // (A lane's end, its cancel, is skipped: the other lanes may still
        // hold buffered deliveries.)
        while let Ok(Some((index, next))) =
            tokio::time::timeout(Duration::from_millis(50), deliveries.next()).await
        {
            if let (Some(Ok(delivery)), Some(lane)) = (next, lanes.get(index)) {
                lane.settler.requeue(delivery.delivery_tag);
                requeued += 1;
            }
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
    let wait = tokio::time::timeout(timeout, async {
        while tasks.join_next().await.is_some() {}
    });
    let finished = tokio::select! {
        finished = wait => finished.is_ok(),
        () = async {
            // No abort sender (none was given): wait for the timeout alone.
            if abort.wait_for(|a| *a).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(in_flight = tasks.len(), "drain aborted: requeueing the jobs in flight now");
            false
        }
    };
    let mut left = 0;
    if !finished {
        tasks.abort_all();
        // Joined, the aborted tasks hold no settler handle any more.
        while tasks.join_next().await.is_some() {}
        let unfinished = std::mem::take(&mut *inflight.lock().unwrap_or_else(|e| e.into_inner()));
        left = unfinished.len();
        for (index, delivery_tag) in unfinished {
            if let Some(lane) = lanes.get(index) {
                lane.settler.requeue(delivery_tag);
            }
        }
    }
    // The last handles: each settler sends what is queued, then ends.
    let channels: Vec<_> = lanes.into_iter().map(|lane| lane.channel).collect();
    let finish = async {
        for settled in settling {
            let _ = settled.await;
        }
        for channel in &channels {
            let _ = channel.close(200, ShortString::from("shutdown")).await;
        }
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
