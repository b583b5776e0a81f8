//! Broker-wide failures while a worker is busy: the jobs queue deleted,
//! the broker application stopped and started, a disk alarm, a connection
//! that goes silent; and hostile
//! jobs mixed into normal ones, whose assertion is about timing. These touch
//! the whole broker or need a quiet machine, so they live in a test binary
//! of their own (cargo runs test binaries one at a time) and run one at a
//! time within it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_integration_tests::broker::{
    Broker, Received, TestQueue, URL, WorkerProc, consume, job, queue_exists, rabbitmqctl,
};
use kiln_integration_tests::serial;
use lapin::options::BasicAckOptions;
use lapin::{Connection, ConnectionProperties};

/// Publishes uppercase jobs `ids` whose replies go to the durable queue
/// `replies`, on a connection of its own (a blocked publisher must not
/// block the reader).
async fn publish(queue: &str, replies: &str, ids: impl Iterator<Item = String>) -> HashSet<String> {
    let input = "x".repeat(200);
    let jobs: Vec<(String, Vec<u8>)> = ids
        .map(|id| (id.clone(), job(&id, "uppercase", &input)))
        .collect();
    let broker = Broker::connect().await;
    broker.publish_many(queue, &jobs, replies).await;
    broker.close().await;
    jobs.into_iter().map(|(id, _)| id).collect()
}

/// Publishes jobs `{prefix}0` to `{prefix}{n - 1}` (see `publish`) and
/// waits until `{prefix}{under_way}` is answered; returns the ids and the
/// replies seen so far.
async fn publish_under_way(
    queue: &str,
    replies: &str,
    prefix: &str,
    n: usize,
    under_way: usize,
) -> (HashSet<String>, HashSet<String>) {
    let ids = publish(queue, replies, (0..n).map(|i| format!("{prefix}{i}"))).await;
    let mut seen = HashSet::new();
    collect(
        replies,
        &HashSet::from([format!("{prefix}{under_way}")]),
        &mut seen,
        Duration::from_secs(30),
    )
    .await;
    (ids, seen)
}

/// Collects replies (see `collect`) and asserts that every job in `ids`
/// was answered.
async fn assert_none_lost(
    replies: &str,
    ids: &HashSet<String>,
    seen: &mut HashSet<String>,
    timeout: Duration,
) {
    collect(replies, ids, seen, timeout).await;
    let missing: Vec<_> = ids.difference(seen).take(5).collect();
    assert!(missing.is_empty(), "lost jobs, e.g. {missing:?}");
}

/// Collects reply job ids from the durable queue `replies` until `want` are
/// all seen or `timeout` passes, reconnecting whenever the broker goes away.
async fn collect(
    replies: &str,
    want: &HashSet<String>,
    seen: &mut HashSet<String>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    while !want.is_subset(seen) && Instant::now() < deadline {
        let Ok(conn) = Connection::connect(URL, ConnectionProperties::default()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        let Ok(mut consumer) = consume(&ch, replies).await else {
            continue;
        };
        while !want.is_subset(seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(Duration::from_secs(2)), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                    seen.insert(v["job_id"].as_str().unwrap().to_owned());
                    let _ = d.ack(BasicAckOptions::default()).await;
                }
                Ok(Some(Err(_)) | None) => break,
                Err(_) if Instant::now() >= deadline => break,
                Err(_) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_queue_deleted_and_redeclared_mid_stream() {
    let _serial = serial().await;
    let q = TestQueue::new("deleted");
    let replies = q.durable_reply_queue().await;
    let worker = WorkerProc::spawn(&q, &[]).await;
    let (first, mut seen) = publish_under_way(&q, &replies, "a", 2_000, 10).await;

    // Deleting the queue cancels the consumer (basic.cancel) and drops
    // whatever it held: the worker must notice, re-declare and resume.
    q.delete().await;
    assert!(worker.wait_ready(true, Duration::from_secs(30)).await);
    let started = Instant::now();
    // The queue comes back when the worker re-declares it.
    while !queue_exists(&q).await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never re-declared its queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = publish(&q, &replies, (0..500).map(|i| format!("b{i}"))).await;
    collect(&replies, &second, &mut seen, Duration::from_secs(60)).await;
    assert!(
        second.is_subset(&seen),
        "jobs published after the re-declare were not all answered"
    );
    assert!(!first.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_stop_app_and_start_app_mid_stream_loses_nothing() {
    let _serial = serial().await;
    let q = TestQueue::new("stopapp");
    let replies = q.durable_reply_queue().await;
    let worker = WorkerProc::spawn(&q, &[]).await;
    let (ids, mut seen) = publish_under_way(&q, &replies, "s", 5_000, 100).await;

    rabbitmqctl(&["stop_app"]);
    let not_ready = worker.wait_ready(false, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    assert!(not_ready, "readyz stayed true while the broker was down");
    assert!(
        worker.wait_ready(true, Duration::from_secs(60)).await,
        "worker did not reconnect"
    );
    assert_none_lost(&replies, &ids, &mut seen, Duration::from_secs(120)).await;
    worker.stop().await;
}

/// Restores the broker's disk limit even if the test fails.
struct DiskAlarm(String);

impl DiskAlarm {
    fn raise() -> Self {
        let out = Command::new("rabbitmqctl")
            .args(["eval", "rabbit_disk_monitor:get_disk_free_limit()."])
            .output()
            .unwrap();
        let original = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            original.parse::<u64>().is_ok(),
            "cannot read the disk limit: {original:?}"
        );
        // Far above any free space: the alarm goes off at the next check.
        rabbitmqctl(&["set_disk_free_limit", "100000GB"]);
        Self(original)
    }
}

impl Drop for DiskAlarm {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["set_disk_free_limit", &self.0, "-q"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_alarm_blocks_publishing_then_work_resumes_and_sigterm_stays_on_time() {
    let _serial = serial().await;
    let q = TestQueue::new("disk");
    let replies = q.durable_reply_queue().await;
    let env = [("KILN__AMQP__SHUTDOWN_TIMEOUT_MS", "3000")];
    let worker = WorkerProc::spawn(&q, &env).await;
    let (ids, mut seen) = publish_under_way(&q, &replies, "d", 3_000, 100).await;

    let alarm = DiskAlarm::raise();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Publishing is blocked, but the worker stays up and healthy.
    assert!(
        worker.ready(),
        "worker reported not ready during a disk alarm"
    );
    // SIGTERM still exits on time: shutdown_timeout (3 s), plus at most 2 s
    // before and 2 s after it for a broker that does not answer, plus slack.
    let started = Instant::now();
    let status = worker.stop().await;
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "exit took {:?}",
        started.elapsed()
    );

    drop(alarm);
    let worker = WorkerProc::spawn(&q, &[]).await;
    assert_none_lost(&replies, &ids, &mut seen, Duration::from_secs(120)).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_jobs_do_not_hold_up_normal_jobs() {
    // Timing-sensitive: here, where nothing else runs beside it.
    let _serial = serial().await;
    let q = TestQueue::new("hostile");
    // Spinners yield to the runtime at every epoch tick, so with more job
    // slots than spinners, normal jobs flow while they spin.
    let env = [
        ("KILN__SANDBOX__LIMITS__TIMEOUT_MS", "3000"),
        // Enough fuel that the spinners run into their deadline.
        ("KILN__SANDBOX__LIMITS__FUEL", "1000000000000"),
        ("KILN__PIPELINE__CONCURRENCY", "8"),
        ("KILN__PIPELINE__MAX_ATTEMPTS", "1"),
    ];
    let worker = WorkerProc::spawn(&q, &env).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let mut jobs = Vec::new();
    for i in 0..200 {
        let mut add = |id: String, plugin: &str| jobs.push((id.clone(), job(&id, plugin, "x")));
        if i % 50 == 0 {
            add(format!("spin{i}"), "hostile-spin");
            add(format!("bomb{i}"), "hostile-membomb");
        }
        add(format!("n{i}"), "uppercase");
    }
    // Published in one go (confirms awaited at the end), so every normal job
    // is queued long before the first spinner's deadline.
    broker.publish_many(&q, &jobs, &replies.name).await;
    let got = replies.take(jobs.len(), Duration::from_secs(60)).await;
    assert_eq!(got.len(), jobs.len());
    let position = |prefix: &str, last: bool| {
        let matches = |r: &&Received| {
            r.correlation_id
                .as_deref()
                .is_some_and(|c| c.starts_with(prefix))
        };
        if last {
            got.iter().rposition(|r| matches(&r))
        } else {
            got.iter().position(|r| matches(&r))
        }
        .unwrap()
    };
    let (last_normal, first_spin) = (position("n", true), position("spin", false));
    assert_eq!(got[first_spin].json()["error"]["kind"], "timeout");
    // Every normal job was answered before the first spinner hit its deadline.
    assert!(
        last_normal < first_spin,
        "a normal job waited for a spinner ({last_normal} vs {first_spin})"
    );
    worker.stop().await;
}

/// A TCP proxy in front of the broker that can freeze the connections open
/// so far: their bytes stop flowing both ways while the sockets stay open,
/// as behind a dead NAT entry, or under a consumer that silently stops
/// delivering. New connections flow normally. `cut` then closes the frozen
/// ones, so the broker requeues what they held.
struct FreezingProxy {
    port: u16,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
    frozen_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut_below: tokio::sync::watch::Sender<u64>,
}

impl FreezingProxy {
    async fn start() -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let next_id = Arc::new(AtomicU64::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let (cut_below, cut) = tokio::sync::watch::channel(0);
        let (ids, frozen) = (next_id.clone(), frozen_below.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    continue;
                };
                let id = ids.fetch_add(1, SeqCst);
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                for (rx, tx) in [(client_rx, server_tx), (server_rx, client_tx)].map(|(r, t)| {
                    (
                        Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        t,
                    )
                }) {
                    let (frozen, mut cut) = (frozen.clone(), cut.clone());
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let (mut rx, mut tx) = (rx, tx);
                        let mut buf = vec![0; 64 << 10];
                        loop {
                            let n = tokio::select! {
                                r = rx.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                                _ = cut.wait_for(|c| *c > id) => return,
                            };
                            if id < frozen.load(SeqCst) {
                                // Hold the bytes until the connection is cut.
                                let _ = cut.wait_for(|c| *c > id).await;
                                return;
                            }
                            if tx.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            port,
            next_id,
            frozen_below,
            cut_below,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn connections(&self) -> u64 {
        self.next_id.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Freezes every connection opened so far.
    fn freeze(&self) {
        self.frozen_below
            .store(self.connections(), std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every frozen connection.
    fn cut(&self) {
        let below = self.frozen_below.load(std::sync::atomic::Ordering::SeqCst);
        self.cut_below.send_replace(below);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connection_is_detected_by_the_stall_watchdog_and_nothing_is_lost() {
    let _serial = serial().await;
    let q = TestQueue::new("silent");
    let replies = q.durable_reply_queue().await;
    let proxy = FreezingProxy::start().await;
    let worker = WorkerProc::spawn_at(
        &proxy.url(),
        &q,
        &["uppercase"],
        &[("KILN__AMQP__STALL_TIMEOUT_MS", "1500")],
    )
    .await;
    let (ids, mut seen) = publish_under_way(&q, &replies, "s", 3_000, 50).await;

    // The worker's connection goes silent: no error, no close, no delivery.
    let before = proxy.connections();
    proxy.freeze();
    let frozen_at = Instant::now();
    assert!(
        worker.wait_ready(false, Duration::from_secs(20)).await,
        "the worker never noticed its connection went silent"
    );
    let noticed = frozen_at.elapsed();
    // It reconnects (through the proxy, on a new connection) and resumes.
    assert!(worker.wait_ready(true, Duration::from_secs(30)).await);
    assert!(proxy.connections() > before, "no new connection");
    // The broker requeues what the silent connection held once it closes.
    proxy.cut();
    assert_none_lost(&replies, &ids, &mut seen, Duration::from_secs(90)).await;
    assert!(
        noticed < Duration::from_secs(10),
        "noticed only after {noticed:?} (stall timeout 1.5 s)"
    );
    assert!(worker.stop().await.success());
}
