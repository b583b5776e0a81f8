//! Sharded job queues (`[amqp] shards = N`): a consistent-hash exchange
//! named like the jobs queue, bound to `<queue>.s0` … `<queue>.s<N-1>`.
//! Needs the broker's `rabbitmq_consistent_hash_exchange` plugin (`.ci/run`
//! enables it).

use std::collections::HashSet;
use std::time::Duration;

use kiln_integration_tests::broker::{
    self, Broker, TestQueue, WorkerProc, delete_queue, job, queue_exists,
};

use super::connection;
use kiln_integration_tests::{kiln, stdout_of};
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};

const SHARDS: u16 = 4;

/// The topology Kiln declares for the sharded test queue `q`.
fn sharded_topology(q: &TestQueue) -> kiln_broker::Topology {
    let config = kiln_broker::AmqpConfig {
        queue: q.name().to_owned(),
        shards: SHARDS,
        ..kiln_broker::AmqpConfig::default()
    };
    kiln_broker::Topology::new(&config, &kiln_protocol::RetryPolicy::default())
}

/// The ready messages of every shard of `q`, in shard order.
async fn shard_depths(q: &TestQueue) -> Vec<u32> {
    let conn = connection().await;
    let channel = conn.create_channel().await.unwrap();
    let mut depths = Vec::new();
    for i in 0..SHARDS {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(
                ShortString::from(q.shard(i)),
                passive,
                FieldTable::default(),
            )
            .await
            .unwrap();
        depths.push(queue.message_count());
    }
    let _ = conn.close(200, ShortString::from("done")).await;
    depths
}

/// `n` uppercase jobs `<prefix><i>`.
fn jobs(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i}");
            let body = job(&id, "uppercase", &"x".repeat(200));
            (id, body)
        })
        .collect()
}

fn ids(jobs: &[(String, Vec<u8>)]) -> HashSet<String> {
    jobs.iter().map(|(id, _)| id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sharded_round_trip_spreads_jobs_over_every_shard() {
    let q = TestQueue::sharded("shards-rt", SHARDS);
    let (key, shards) = q.shards_env();
    // Declared the way the worker does, before any worker: the exchange
    // spreads jobs by their id over the four shards.
    let conn = connection().await;
    sharded_topology(&q).declare(&conn).await.unwrap();
    let _ = conn.close(200, ShortString::from("done")).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let stream = jobs("rt", 400);
    broker
        .publish_many_sharded(&q, &stream, &replies.name)
        .await;
    let depths = shard_depths(&q).await;
    assert_eq!(depths.iter().sum::<u32>(), 400, "{depths:?}");
    assert!(depths.iter().all(|&d| d >= 40), "uneven: {depths:?}");

    let worker = WorkerProc::spawn(&q, &[(key, shards.as_str())]).await;
    replies
        .assert_all_answered(&ids(&stream), &[], Duration::from_secs(60))
        .await;
    assert_eq!(shard_depths(&q).await, [0; SHARDS as usize]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_on_four_shards_lose_nothing_when_one_is_killed() {
    let q = TestQueue::sharded("shards-kill", SHARDS);
    let (key, shards) = q.shards_env();
    let mut first = WorkerProc::spawn(&q, &[(key, shards.as_str())]).await;
    let second = WorkerProc::spawn(&q, &[(key, shards.as_str())]).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let stream = jobs("k", 6_000);
    broker
        .publish_many_sharded(&q, &stream, &replies.name)
        .await;
    let answered = replies.take(1_000, Duration::from_secs(60)).await;
    assert_eq!(answered.len(), 1_000);
    first.kill9();
    // The survivor consumes every shard: the killed worker's unacked
    // deliveries come back to it.
    replies
        .assert_all_answered(&ids(&stream), &answered, Duration::from_secs(120))
        .await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_shard_queue_is_redeclared_and_consumed_again() {
    let q = TestQueue::sharded("shards-del", SHARDS);
    let (key, shards) = q.shards_env();
    let worker = WorkerProc::spawn(&q, &[(key, shards.as_str())]).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let stream = jobs("d", 3_000);
    broker
        .publish_many_sharded(&q, &stream, &replies.name)
        .await;
    let answered = replies.take(300, Duration::from_secs(60)).await;
    assert_eq!(answered.len(), 300);
    // An operator deletes one shard mid-stream (its jobs go with it).
    let deleted = q.shard(2);
    delete_queue(&deleted).await;
    // The broker cancels that shard's consumer; the worker reconnects and
    // declares the shard (and its binding) again.
    let started = std::time::Instant::now();
    while !queue_exists(&deleted).await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{deleted} was not declared again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(worker.wait_ready(true, Duration::from_secs(30)).await);
    // It is consumed again: jobs published to it directly, and through
    // the exchange (which binds it again), are answered.
    let direct = jobs("direct", 50);
    broker.publish_many(&deleted, &direct, &replies.name).await;
    let routed = jobs("routed", 200);
    broker
        .publish_many_sharded(&q, &routed, &replies.name)
        .await;
    let after: HashSet<String> = ids(&direct).union(&ids(&routed)).cloned().collect();
    let got = replies
        .take_until_ids(&after, &[], Duration::from_secs(60))
        .await;
    let answered: HashSet<String> = got.iter().map(|r| r.job_id()).collect();
    assert!(
        after.is_subset(&answered),
        "{} of {} unanswered after the shard came back",
        after.difference(&answered).count(),
        after.len()
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_routes_by_key_and_waits_on_shards() {
    let q = TestQueue::sharded("shards-enq", SHARDS);
    let (key, shards) = q.shards_env();
    let dir = tempfile::tempdir().unwrap();
    // One tenant's jobs all go to one shard, whichever it is.
    let keyed = dir.path().join("keyed.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            format!(r#"{{"job_id":"t{i}","key":"tenant-a","plugin":"reverse","input":"ab{i}"}}"#)
        })
        .collect();
    std::fs::write(&keyed, lines.join("\n")).unwrap();
    stdout_of(
        kiln()
            .args(["enqueue", "--amqp-url", broker::URL, "--queue", &q])
            .arg(&keyed)
            .env(key, shards.as_str()),
    );
    let mut depths = shard_depths(&q).await;
    depths.sort_unstable();
    assert_eq!(depths, [0, 0, 0, 40], "one key, one shard");

    // Jobs without a key spread; --wait collects every reply.
    let worker = WorkerProc::spawn(&q, &[(key, shards.as_str())]).await;
    let plain = dir.path().join("plain.jsonl");
    let lines: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"job_id":"p{i}","plugin":"uppercase","input":"p{i}"}}"#))
        .collect();
    std::fs::write(&plain, lines.join("\n")).unwrap();
    let out = dir.path().join("replies.jsonl");
    let status = broker::enqueue(&q, &plain, &out)
        .env(key, shards.as_str())
        .status()
        .unwrap();
    assert!(status.success());
    let rows: HashSet<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["output"].to_string())
        .collect();
    assert_eq!(rows.len(), 300);
    assert!(rows.contains("\"P299\""), "{:?}", rows.iter().next());
    // The keyed jobs (no reply_to) answered to the one results queue.
    let broker = Broker::connect().await;
    let results = broker
        .drain(&q.results(), 40, Duration::from_secs(30))
        .await;
    assert_eq!(results.len(), 40);
    assert!(results.iter().all(|r| {
        r.json()["output"]
            .as_str()
            .is_some_and(|o| o.ends_with("ba"))
    }));
    worker.stop().await;
}

/// Runs `kiln dlq ARGS` on the sharded `q` and returns its stdout.
fn dlq(q: &TestQueue, args: &[&str]) -> String {
    let (key, shards) = q.shards_env();
    stdout_of(
        kiln()
            .args(["dlq", "--amqp-url", broker::URL, "--queue", q])
            .args(args)
            .env(key, shards),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_lists_and_replays_every_shard() {
    let q = TestQueue::sharded("shards-dlq", SHARDS);
    let (key, shards) = q.shards_env();
    // The first worker lacks `reverse`: its jobs are dead-lettered, each
    // in its own shard's dead-letter queue.
    let worker = WorkerProc::spawn_with(&q, &["uppercase"], &[(key, shards.as_str())]).await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let letters: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let id = format!("r{i}");
            let body = job(&id, "reverse", &format!("ab{i}"));
            (id, body)
        })
        .collect();
    broker
        .publish_many_sharded(&q, &letters, &replies.name)
        .await;
    let first = replies.take(12, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 12);
    worker.stop().await;
    let mut holding = 0;
    for i in 0..SHARDS {
        let dead = format!("{}.dead", q.shard(i));
        if queue_depth(&dead).await > 0 {
            holding += 1;
        }
    }
    assert!(holding >= 2, "12 dead letters in {holding} shard(s)");

    let listed: HashSet<String> = dlq(&q, &["list", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["job_id"].to_string())
        .collect();
    assert_eq!(listed.len(), 12, "{listed:?}");

    let worker =
        WorkerProc::spawn_with(&q, &["uppercase", "reverse"], &[(key, shards.as_str())]).await;
    let replayed = dlq(&q, &["replay", "--all"]);
    assert_eq!(replayed.lines().count(), 12, "{replayed}");
    let got = replies.take(12, Duration::from_secs(30)).await;
    let outputs: HashSet<String> = got
        .iter()
        .map(|r| r.json()["output"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: HashSet<String> = (0..12)
        .map(|i| format!("ab{i}").chars().rev().collect())
        .collect();
    assert_eq!(outputs, expected);
    assert_eq!(dlq(&q, &["list", "--json"]).lines().count(), 0);
    worker.stop().await;
}

/// The ready messages of `queue`.
async fn queue_depth(queue: &str) -> u32 {
    let conn = connection().await;
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let depth = channel
        .queue_declare(
            ShortString::from(queue.to_owned()),
            passive,
            FieldTable::default(),
        )
        .await
        .map_or(0, |q| q.message_count());
    let _ = conn.close(200, ShortString::from("done")).await;
    depth
}
