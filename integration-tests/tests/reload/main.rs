//! Hot reload of the plugins directory by a real `kiln worker` on the local
//! RabbitMQ, while a steady stream of jobs for `versioned` flows: a plain
//! non-atomic copy over the plugin file, a Kubernetes-style `..data`
//! symlink swap, a broken file then a fixed one, and the file removed; and
//! SIGHUP rescanning when the watcher and the poll are off.
//!
//! The worker runs one job at a time, so replies in job order show exactly
//! where each version took over. Timing-sensitive, so the tests run one at
//! a time, in a binary of their own.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_integration_tests::broker::{Broker, Replies, TestQueue, URL, WorkerProc};
use kiln_integration_tests::serial;

/// The bytes of a built fixture (`versioned-1-0`, `versioned-1-1`).
fn fixture(crate_name: &str) -> Vec<u8> {
    std::fs::read(kiln_integration_tests::artifact(crate_name)).unwrap()
}

/// A `kiln worker` on a plugins directory the test owns.
struct Worker {
    proc: WorkerProc,
    _cache: tempfile::TempDir,
}

impl Worker {
    async fn spawn(queue: &str, plugins: &Path, env: &[(&str, &str)]) -> Self {
        let cache = tempfile::tempdir().unwrap();
        let mut all = vec![
            ("RUST_LOG", "warn,kiln::reload=info"),
            ("KILN__LOG__FORMAT", "text"),
            // One job at a time: job order is the order plugins are routed.
            ("KILN__PIPELINE__CONCURRENCY", "1"),
            ("KILN__RELOAD__SETTLE_MS", "500"),
        ];
        all.extend_from_slice(env);
        let proc = WorkerProc::start(URL, queue, plugins, cache.path(), &all)
            .until_ready()
            .await;
        Self {
            proc,
            _cache: cache,
        }
    }

    /// The raw HTTP response to `GET path`.
    fn get(&self, path: &str) -> Option<String> {
        self.proc.get(path)
    }

    /// A sample of `/metrics` (0 when the series is absent).
    fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    fn failed_reloads(&self) -> f64 {
        self.metric("kiln_plugin_reloads_total{result=\"failed\"}")
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.proc.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// What a job's reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// `ok`, with the version that served it (from the output).
    Ok(String),
    /// An error reply, with its kind.
    Error(String),
}

fn job(i: usize) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"job_id": format!("r{i}"), "plugin": "versioned", "input": i.to_string()}),
    )
    .unwrap()
}

/// Publishes a job for `versioned` every 10 ms until stopped.
struct Stream {
    next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    fn start(broker: Arc<Broker>, queue: String, replies: String) -> Self {
        let next = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (next.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let i = n.load(Ordering::SeqCst);
                broker.publish(&queue, job(i), Some(&replies), None).await;
                n.store(i + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { next, stop, task }
    }

    /// The index the next job will have.
    fn mark(&self) -> usize {
        self.next.load(Ordering::SeqCst)
    }

    /// Stops publishing; returns how many jobs were sent.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.next.load(Ordering::SeqCst)
    }
}

/// The replies so far, by job index.
struct Collector {
    replies: Replies,
    got: BTreeMap<usize, Outcome>,
}

impl Collector {
    async fn poll(&mut self, wait: Duration) {
        for r in self.replies.take(10_000, wait).await {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let id = body["job_id"].as_str().unwrap();
            let i: usize = id.strip_prefix('r').unwrap().parse().unwrap();
            let outcome = if body["status"] == "ok" {
                let output = body["output"].as_str().unwrap();
                let (version, input) = output.split_once(':').unwrap();
                assert_eq!(input, i.to_string(), "{body}");
                Outcome::Ok(version.to_owned())
            } else {
                Outcome::Error(body["error"]["kind"].as_str().unwrap_or("?").to_owned())
            };
            let previous = self.got.insert(i, outcome);
            assert!(previous.is_none(), "two replies for {id}");
        }
    }

    /// Waits until a job at index `from` or later got `want`.
    async fn wait_for(&mut self, from: usize, want: &Outcome, timeout: Duration) {
        let started = Instant::now();
        while !self.got.range(from..).any(|(_, o)| o == want) {
            assert!(
                started.elapsed() < timeout,
                "no job from r{from} on got {want:?} within {timeout:?}; last: {:?}",
                self.got.iter().next_back()
            );
            self.poll(Duration::from_millis(100)).await;
        }
    }

    /// Waits (20 s at most) until a job from `from` on got `want`, then
    /// keeps collecting for 300 ms.
    async fn switched(&mut self, from: usize, want: &Outcome) {
        self.wait_for(from, want, Duration::from_secs(20)).await;
        self.run_for(Duration::from_millis(300)).await;
    }

    /// Keeps collecting for `d`.
    async fn run_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.poll(Duration::from_millis(100)).await;
        }
    }

    /// In jobs `range`, the outcomes are `before` then `after`, switching
    /// once (monotone, and `after` shows up), or only `before` when `after`
    /// is `None`.
    fn assert_switch(
        &self,
        range: std::ops::Range<usize>,
        before: &Outcome,
        after: Option<&Outcome>,
    ) {
        let outcomes: Vec<(usize, &Outcome)> = range
            .clone()
            .map(|i| {
                (
                    i,
                    self.got
                        .get(&i)
                        .unwrap_or_else(|| panic!("r{i} unanswered")),
                )
            })
            .collect();
        let switch = outcomes
            .iter()
            .position(|(_, o)| *o != before)
            .unwrap_or(outcomes.len());
        if let Some((i, o)) = outcomes[switch..].iter().find(|(_, o)| Some(*o) != after) {
            panic!(
                "jobs {range:?}: expected {before:?} then {after:?}; r{i} got {o:?} (switch at r{})",
                range.start + switch
            );
        }
        if after.is_some() {
            assert!(
                switch < outcomes.len(),
                "jobs {range:?}: never switched to {after:?}"
            );
        }
    }
}

fn ok(version: &str) -> Outcome {
    Outcome::Ok(version.to_owned())
}

/// Writes `bytes` over `path` in place (truncate, then 4 KiB chunks with
/// pauses well under the worker's 500 ms settle period), as a plain `cp`
/// of a large file over a slow disk would.
async fn slow_copy(bytes: &[u8], path: &Path) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    for chunk in bytes.chunks(4096) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// Replaces the symlink (or file) `link` with a symlink to `target`
/// atomically: a new link beside it, renamed over it, as the kubelet does.
fn swap_symlink(target: &str, link: &Path) {
    let tmp = link.with_file_name("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// A `..<timestamp>` directory holding `versioned.wasm` with `bytes`.
fn data_dir(plugins: &Path, name: &str, bytes: &[u8]) {
    let dir = plugins.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("versioned.wasm"), bytes).unwrap();
}

/// A new release, as the kubelet puts it in place: `..data` swapped to a
/// new `..<timestamp>` directory holding `versioned.wasm` with `bytes`.
fn release(plugins: &Path, name: &str, bytes: &[u8]) {
    data_dir(plugins, name, bytes);
    swap_symlink(name, &plugins.join("..data"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_job_is_lost_across_copies_symlink_swaps_a_broken_file_and_a_removal() {
    let _serial = serial().await;
    let (v10, v11) = (fixture("versioned-1-0"), fixture("versioned-1-1"));
    assert!(v10.len() > 8 * 4096, "the copy should take several chunks");
    let plugins = tempfile::tempdir().unwrap();
    let wasm: PathBuf = plugins.path().join("versioned.wasm");
    std::fs::write(&wasm, &v10).unwrap();

    let q = TestQueue::new("reload");
    let worker = Worker::spawn(&q, plugins.path(), &[]).await;
    let broker = Arc::new(Broker::connect().await);
    let mut replies = Collector {
        replies: broker.reply_queue().await,
        got: BTreeMap::new(),
    };
    let stream = Stream::start(broker.clone(), q.to_string(), replies.replies.name.clone());
    replies
        .wait_for(0, &ok("1.0.0"), Duration::from_secs(30))
        .await;
    replies.run_for(Duration::from_millis(300)).await;

    // 1. A plain, non-atomic copy of 1.1.0 over the serving file.
    let copy = stream.mark();
    slow_copy(&v11, &wasm).await;
    replies.switched(copy, &ok("1.1.0")).await;
    assert_eq!(
        worker.failed_reloads(),
        0.0,
        "a half-written file was loaded (or reported broken)"
    );

    // 2. The Kubernetes layout: versioned.wasm -> ..data/versioned.wasm,
    //    ..data -> ..2026_01 (1.0.0), put in place by one rename; then
    //    ..data swapped to ..2026_02 (1.1.0).
    let layout = stream.mark();
    data_dir(plugins.path(), "..2026_01", &v10);
    std::os::unix::fs::symlink("..2026_01", plugins.path().join("..data")).unwrap();
    let link = plugins.path().join("versioned.wasm.link");
    std::os::unix::fs::symlink("..data/versioned.wasm", &link).unwrap();
    std::fs::rename(&link, &wasm).unwrap();
    replies.switched(layout, &ok("1.0.0")).await;

    let swap = stream.mark();
    release(plugins.path(), "..2026_02", &v11);
    replies.switched(swap, &ok("1.1.0")).await;
    assert_eq!(worker.failed_reloads(), 0.0);

    // 3. A broken release (garbage bytes) swapped in: 1.1.0 keeps serving,
    //    and the failure is counted once and shown; then a fixed one.
    let broken = stream.mark();
    release(
        plugins.path(),
        "..2026_03",
        b"\0asm garbage, not a component",
    );
    let started = Instant::now();
    while worker.failed_reloads() < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the broken file was never reported"
        );
        replies.poll(Duration::from_millis(100)).await;
    }
    assert_eq!(worker.metric("kiln_plugin_load_errors"), 1.0);
    replies.run_for(Duration::from_millis(1_500)).await;
    assert_eq!(worker.failed_reloads(), 1.0, "reported more than once");

    let fixed = stream.mark();
    release(plugins.path(), "..2026_04", &v10);
    replies.switched(fixed, &ok("1.0.0")).await;
    assert_eq!(worker.metric("kiln_plugin_load_errors"), 0.0);

    // 4. Removed: new jobs get unknown-plugin.
    let removed = stream.mark();
    std::fs::remove_file(&wasm).unwrap();
    let unknown = Outcome::Error("unknown-plugin".into());
    replies.switched(removed, &unknown).await;

    let sent = stream.finish().await;
    let ids: HashSet<String> = (0..sent).map(|i| format!("r{i}")).collect();
    let started = Instant::now();
    while replies.got.len() < sent && started.elapsed() < Duration::from_secs(30) {
        replies.poll(Duration::from_millis(200)).await;
    }
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| {
            let i: usize = id[1..].parse().unwrap();
            !replies.got.contains_key(&i)
        })
        .take(5)
        .collect();
    assert!(missing.is_empty(), "jobs lost, e.g. {missing:?}");

    replies.assert_switch(0..copy, &ok("1.0.0"), None);
    replies.assert_switch(copy..layout, &ok("1.0.0"), Some(&ok("1.1.0")));
    replies.assert_switch(layout..swap, &ok("1.1.0"), Some(&ok("1.0.0")));
    replies.assert_switch(swap..broken, &ok("1.0.0"), Some(&ok("1.1.0")));
    // The broken file never served: 1.1.0 answers until the fix.
    replies.assert_switch(broken..fixed, &ok("1.1.0"), None);
    replies.assert_switch(fixed..removed, &ok("1.1.0"), Some(&ok("1.0.0")));
    replies.assert_switch(removed..sent, &ok("1.0.0"), Some(&unknown));
    // One load per change, nothing reloaded that did not change.
    assert_eq!(
        worker.metric("kiln_plugin_reloads_total{result=\"loaded\"}"),
        4.0,
        "{:?}",
        worker.get("/metrics")
    );
    assert_eq!(
        worker.metric("kiln_plugin_reloads_total{result=\"removed\"}"),
        1.0
    );
}

/// Sends job `next` (then counts it) and waits for its outcome.
async fn send(broker: &Broker, queue: &str, next: &mut usize, replies: &mut Collector) -> Outcome {
    let i = *next;
    *next += 1;
    let name = replies.replies.name.clone();
    broker.publish(queue, job(i), Some(&name), None).await;
    let started = Instant::now();
    while !replies.got.contains_key(&i) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no reply to r{i}"
        );
        replies.poll(Duration::from_millis(50)).await;
    }
    replies.got[&i].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rescans_when_the_watcher_and_the_poll_are_off() {
    let _serial = serial().await;
    let plugins = tempfile::tempdir().unwrap();
    let wasm = plugins.path().join("versioned.wasm");
    std::fs::write(&wasm, fixture("versioned-1-0")).unwrap();
    let q = TestQueue::new("reload-hup");
    let worker = Worker::spawn(
        &q,
        plugins.path(),
        &[
            ("KILN__RELOAD__WATCH", "false"),
            ("KILN__RELOAD__POLL_MS", "0"),
        ],
    )
    .await;
    let broker = Broker::connect().await;
    let mut replies = Collector {
        replies: broker.reply_queue().await,
        got: BTreeMap::new(),
    };
    let mut next = 0;
    assert_eq!(
        send(&broker, &q, &mut next, &mut replies).await,
        ok("1.0.0")
    );

    // Replaced atomically; nothing watches, so 1.0.0 keeps serving.
    let tmp = plugins.path().join("versioned.wasm.tmp");
    std::fs::write(&tmp, fixture("versioned-1-1")).unwrap();
    std::fs::rename(&tmp, &wasm).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        send(&broker, &q, &mut next, &mut replies).await,
        ok("1.0.0"),
        "reloaded without SIGHUP"
    );

    worker.hangup();
    let started = Instant::now();
    loop {
        if send(&broker, &q, &mut next, &mut replies).await == ok("1.1.0") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "SIGHUP did not reload the plugin"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker survived its SIGHUP and still serves.
    assert_eq!(
        send(&broker, &q, &mut next, &mut replies).await,
        ok("1.1.0")
    );
}
