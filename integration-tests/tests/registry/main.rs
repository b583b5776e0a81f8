//! Plugin delivery from an OCI registry, against a real one on loopback
//! (Debian's `docker-registry`, CNCF distribution 2.8; `.ci/run` installs
//! it): `kiln plugins push` then a pull by digest that runs; an artifact
//! pushed by an independent client; a wrong digest and a tampered blob
//! refused, naming the reference; a registry outage with a warm store and
//! with a cold one; basic auth through `auth_file`; and, with a `kiln
//! worker` on the local RabbitMQ, a new digest in the config rolled out
//! while jobs flow (no job fails), and a moved tag picked up on refresh.
//!
//! The tests start their own registries; the worker ones run one at a time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_integration_tests::broker::{Broker, TestQueue, URL, WorkerProc};
use kiln_integration_tests::registry::{self, RawClient, TestRegistry};
use kiln_integration_tests::{artifact, kiln, serial, stdout_of};

/// A directory with a config file, an empty plugins directory and a cache.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        std::fs::create_dir(dir.path().join("cache")).unwrap();
        Self { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("kiln.toml")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Writes `[registry]` with `plugins` and `extra` lines (atomically).
    fn write(&self, plugins: &[&str], extra: &str) {
        let list: Vec<String> = plugins.iter().map(|p| format!("{p:?}")).collect();
        let text = format!("[registry]\nplugins = [{}]\n{extra}\n", list.join(", "));
        let tmp = self.dir.path().join("kiln.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config()).unwrap();
    }

    /// `kiln --config-file … --plugins … --cache … ARGS`.
    fn kiln(&self, args: &[&str]) -> Command {
        let mut cmd = kiln();
        cmd.arg("--config-file")
            .arg(self.config())
            .arg("--plugins")
            .arg(self.plugins())
            .arg("--cache")
            .arg(self.cache())
            .args(args)
            .env_remove("RUST_LOG");
        cmd
    }
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kiln plugins push FILE REF` with no config; returns the digest printed.
fn push(file: &Path, reference: &str) -> String {
    let setup = Setup::new();
    setup.write(&[], "");
    let out = stdout_of(setup.kiln(&["plugins", "push"]).arg(file).arg(reference));
    let digest = out.trim().to_owned();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{out}");
    digest
}

/// `kiln run PLUGIN --input INPUT` with `setup`'s config: its output.
fn run(setup: &Setup, plugin: &str, input: &str) -> Output {
    output(&mut setup.kiln(&["run", plugin, "--input", input]))
}

fn skip() -> bool {
    if registry::available() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "docker-registry is not installed (.ci/run installs it)"
    );
    eprintln!("skipped: docker-registry is not installed (apt-get install docker-registry)");
    true
}

#[test]
fn a_pushed_plugin_pulls_by_digest_and_runs() {
    if skip() {
        return;
    }
    let registry = TestRegistry::start();
    let reference = registry.reference("kiln/uppercase:1.0");
    let digest = push(&artifact("uppercase"), &reference);

    // The CNCF Wasm layout, as the registry holds it.
    let manifest = registry.client().manifest("kiln/uppercase", &digest);
    assert_eq!(manifest.status, 200, "{manifest:?}");
    assert_eq!(registry::sha256(&manifest.body), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    let wasm = std::fs::read(artifact("uppercase")).unwrap();
    assert_eq!(layers[0]["digest"], registry::sha256(&wasm).as_str());
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = std::fs::read(registry.blob_file(config_digest)).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    let exports = config["component"]["exports"].to_string();
    assert!(exports.contains("kiln:plugin/plugin"), "{config}");
    assert!(config["component"]["imports"].is_array(), "{config}");

    let setup = Setup::new();
    let pinned = format!("{reference}@{digest}");
    setup.write(&[&pinned], "");
    let out = run(&setup, "uppercase", "hello registry");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HELLO REGISTRY"),
        "{}",
        text(&out)
    );

    // `kiln plugins` shows where it came from.
    let out = output(&mut setup.kiln(&["plugins", "--json"]));
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &report["plugins"][0];
    assert_eq!(row["name"], "uppercase", "{report}");
    assert_eq!(row["source"]["reference"], pinned.as_str(), "{report}");
    assert_eq!(row["source"]["digest"], digest.as_str(), "{report}");
}

#[test]
fn a_manifest_layer_travels_with_the_component() {
    if skip() {
        return;
    }
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("uppercase.toml");
    std::fs::write(
        &manifest,
        "name = \"uppercase\"\nversion = \"1.0.0\"\ndescription = \"from the registry\"\n",
    )
    .unwrap();
    let reference = registry.reference("kiln/uppercase:with-manifest");
    let out = stdout_of(
        kiln()
            .args(["plugins", "push"])
            .arg(artifact("uppercase"))
            .arg(&reference)
            .arg("--manifest")
            .arg(&manifest),
    );
    let digest = out.trim();
    let held = registry.client().manifest("kiln/uppercase", digest);
    let held: serde_json::Value = serde_json::from_slice(&held.body).unwrap();
    let layers = held["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{held}");
    assert_eq!(
        layers[1]["mediaType"],
        "application/vnd.kiln.plugin.manifest.v1+toml"
    );
    let setup = Setup::new();
    setup.write(&[&format!("{reference}@{digest}")], "");
    let out = output(&mut setup.kiln(&["plugins"]));
    assert!(out.status.success(), "{}", text(&out));
    let store_toml = std::fs::read_dir(setup.cache().join("oci/plugins"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "toml"))
        .expect("the manifest is beside the component");
    assert!(
        std::fs::read_to_string(store_toml)
            .unwrap()
            .contains("from the registry")
    );
}

/// An artifact pushed over the raw distribution API, laid out as `oras
/// push` lays one out (an empty config, `artifactType`, a titled
/// `application/wasm` layer): not Kiln's layout, and not Kiln's client.
#[test]
fn an_artifact_pushed_by_another_client_pulls_and_runs() {
    if skip() {
        return;
    }
    let registry = TestRegistry::start();
    let client = registry.client();
    let wasm = std::fs::read(artifact("reverse")).unwrap();
    let layer = client.push_blob("others/reverse", &wasm);
    let config = client.push_blob("others/reverse", b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.wasm.component.v1+wasm",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{
            "mediaType": "application/wasm",
            "digest": layer,
            "size": wasm.len(),
            "annotations": {"org.opencontainers.image.title": "reverse.wasm"}
        }],
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    });
    let body = serde_json::to_vec_pretty(&manifest).unwrap();
    let digest = client.push_manifest(
        "others/reverse",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &body,
    );
    assert_eq!(digest, registry::sha256(&body));
    let setup = Setup::new();
    setup.write(
        &[&format!(
            "{}@{digest}",
            registry.reference("others/reverse:v1")
        )],
        "",
    );
    let out = run(&setup, "reverse", "abc");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cba"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_wrong_digest_is_refused_naming_the_reference() {
    if skip() {
        return;
    }
    let registry = TestRegistry::start();
    let reference = registry.reference("kiln/uppercase:1.0");
    let digest = push(&artifact("uppercase"), &reference);
    let other = push(
        &artifact("reverse"),
        &registry.reference("kiln/reverse:1.0"),
    );
    assert_ne!(digest, other);
    // The tag's repository, pinned to a digest it does not hold.
    let wrong = format!("{reference}@{other}");
    let setup = Setup::new();
    setup.write(&[&wrong], "");
    let out = output(&mut setup.kiln(&["plugins", "--json"]));
    assert!(!out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["plugins"].as_array().unwrap().is_empty(), "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains(&wrong), "{errors}");
    let out = output(&mut setup.kiln(&["plugins", "pull", &wrong]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&wrong),
        "{}",
        text(&out)
    );

    // A tag alone is refused while digests are required.
    setup.write(&[&reference], "");
    let out = output(&mut setup.kiln(&["plugins", "--json"]));
    assert!(!out.status.success(), "{}", text(&out));
    let errors = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        errors.contains("has no digest") && errors.contains(&reference),
        "{errors}"
    );
}

#[test]
fn a_tampered_blob_is_refused_naming_the_reference() {
    if skip() {
        return;
    }
    let registry = TestRegistry::start();
    let reference = registry.reference("kiln/uppercase:1.0");
    let digest = push(&artifact("uppercase"), &reference);
    let wasm = std::fs::read(artifact("uppercase")).unwrap();
    // Same length, one byte changed, in the registry's own storage.
    let blob = registry.blob_file(&registry::sha256(&wasm));
    let mut tampered = std::fs::read(&blob).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&blob, &tampered).unwrap();
    let pinned = format!("{reference}@{digest}");
    let setup = Setup::new();
    setup.write(&[&pinned], "");
    let out = output(&mut setup.kiln(&["plugins", "pull", &pinned]));
    assert!(!out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains(&pinned), "{}", text(&out));
    assert!(said.to_lowercase().contains("digest"), "{}", text(&out));
    // Nothing unverified reached the store.
    let run = run(&setup, "uppercase", "x");
    assert!(!run.status.success(), "{}", text(&run));
}

#[test]
fn a_warm_store_serves_through_an_outage_and_a_cold_one_reports_it() {
    if skip() {
        return;
    }
    let mut registry = TestRegistry::start();
    let tag = registry.reference("kiln/uppercase:latest");
    let digest = push(&artifact("uppercase"), &tag);
    let pinned = format!("{tag}@{digest}");
    let warm = Setup::new();
    warm.write(&[&pinned, &tag], "require_digest = false");
    // `kiln plugins pull` fills the store (and the compiled cache).
    let out = output(&mut warm.kiln(&["plugins", "pull", &pinned, &tag]));
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&digest) && said.contains("compiled"),
        "{said}"
    );
    registry.stop();

    warm.write(&[&tag], "require_digest = false");
    let out = run(&warm, "uppercase", "still here");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("STILL HERE"),
        "{}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains("serving the stored copy"), "{}", text(&out));
    warm.write(&[&pinned], "");
    let out = run(&warm, "uppercase", "pinned");
    assert!(out.status.success(), "{}", text(&out));

    let cold = Setup::new();
    cold.write(&[&pinned], "");
    let out = run(&cold, "uppercase", "x");
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains(&pinned), "{}", text(&out));
}

#[test]
fn auth_file_credentials_reach_a_registry_that_requires_them() {
    if skip() {
        return;
    }
    let registry = TestRegistry::start_with_auth("kiln", "s3cret-pass");
    let setup = Setup::new();
    let reference = registry.reference("private/uppercase:1");
    // Without credentials: refused by the registry, naming the reference.
    setup.write(&[], "");
    let out = output(
        setup
            .kiln(&["plugins", "push"])
            .arg(artifact("uppercase"))
            .arg(&reference),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&reference),
        "{}",
        text(&out)
    );

    let auth = registry::auth_file(setup.dir.path(), &registry.host(), "kiln", "s3cret-pass");
    let auth_line = format!("auth_file = {:?}", auth.display().to_string());
    setup.write(&[], &auth_line);
    let out = output(
        setup
            .kiln(&["plugins", "push"])
            .arg(artifact("uppercase"))
            .arg(&reference),
    );
    assert!(out.status.success(), "{}", text(&out));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // The raw client sees it only with the password.
    let anonymous = registry.client().manifest("private/uppercase", &digest);
    assert_eq!(anonymous.status, 401);
    let authed = RawClient::new(registry.addr())
        .with_basic("kiln", "s3cret-pass")
        .manifest("private/uppercase", &digest);
    assert_eq!(authed.status, 200);

    let pinned = format!("{reference}@{digest}");
    setup.write(&[&pinned], &auth_line);
    let out = run(&setup, "uppercase", "secret");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SECRET"),
        "{}",
        text(&out)
    );
}

// ---- a worker on the local RabbitMQ --------------------------------------

/// Publishes a `versioned` job every 10 ms until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    fn start(broker: Arc<Broker>, queue: String, replies: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let i = n.load(Ordering::SeqCst);
                let job = serde_json::to_vec(&serde_json::json!({
                    "job_id": format!("r{i}"), "plugin": "versioned", "input": i.to_string()
                }))
                .unwrap();
                broker.publish(&queue, job, Some(&replies), None).await;
                n.store(i + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { stop, sent, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.sent.load(Ordering::SeqCst)
    }
}

/// Every reply's outcome by job index: the version that served it, or the
/// error kind.
fn outcomes(replies: &[kiln_integration_tests::broker::Received]) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = replies
        .iter()
        .map(|r| {
            let body = r.json();
            let i: usize = body["job_id"]
                .as_str()
                .unwrap()
                .trim_start_matches('r')
                .parse()
                .unwrap();
            let outcome = if body["status"] == "ok" {
                body["output"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned()
            } else {
                format!("error {}", body["error"])
            };
            (i, outcome)
        })
        .collect();
    out.sort();
    out
}

async fn worker(setup: &Setup, queue: &TestQueue) -> WorkerProc {
    WorkerProc::start_with_args(
        URL,
        queue.name(),
        &setup.plugins(),
        &setup.cache(),
        &[
            ("RUST_LOG", "warn,kiln::oci=info,kiln::reload=info"),
            ("KILN__PIPELINE__CONCURRENCY", "1"),
            ("KILN__RELOAD__SETTLE_MS", "100"),
        ],
        &["--config-file", setup.config().to_str().unwrap()],
    )
    .until_ready()
    .await
}

#[tokio::test]
async fn a_new_digest_in_the_config_rolls_out_while_jobs_flow() {
    if skip() {
        return;
    }
    let _serial = serial().await;
    let mut registry = TestRegistry::start();
    let old = push(
        &artifact("versioned-1-0"),
        &registry.reference("kiln/versioned:1.0"),
    );
    let new = push(
        &artifact("versioned-1-1"),
        &registry.reference("kiln/versioned:1.1"),
    );
    let setup = Setup::new();
    let old_ref = format!("{}@{old}", registry.reference("kiln/versioned:1.0"));
    let new_ref = format!("{}@{new}", registry.reference("kiln/versioned:1.1"));
    setup.write(&[&old_ref], "refresh_ms = 300");
    let queue = TestQueue::new("registry-rollout");
    let worker = worker(&setup, &queue).await;
    let broker = Arc::new(Broker::connect().await);
    let replies = broker.reply_queue().await;
    let stream = Stream::start(
        broker.clone(),
        queue.name().to_owned(),
        replies.name.clone(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    setup.write(&[&new_ref], "refresh_ms = 300");
    let started = Instant::now();
    loop {
        let plugins = worker.get("/plugins").unwrap_or_default();
        if plugins.contains(&new) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{plugins}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The registry goes away: the worker keeps serving what it has.
    registry.stop();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(worker.ready(), "ready through the outage");
    let sent = stream.finish().await;
    let got = replies.take(sent, Duration::from_secs(30)).await;
    let outcomes = outcomes(&got);
    assert_eq!(outcomes.len(), sent, "every job answered");
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| o.starts_with("error"))
        .collect();
    assert!(failed.is_empty(), "no job fails: {failed:?}");
    let versions: Vec<&str> = outcomes.iter().map(|(_, o)| o.as_str()).collect();
    let first_new = versions
        .iter()
        .position(|v| *v == "1.1.0")
        .expect("1.1.0 served");
    assert!(
        versions[..first_new].iter().all(|v| *v == "1.0.0"),
        "{versions:?}"
    );
    assert!(first_new > 0, "1.0.0 served first: {versions:?}");
    // With one job at a time, the switch is once and for all.
    assert!(
        versions[first_new..].iter().all(|v| *v == "1.1.0"),
        "{versions:?}"
    );
    worker.stop().await;
    queue.delete().await;
}

#[tokio::test]
async fn a_moved_tag_is_picked_up_on_refresh_when_digests_are_not_required() {
    if skip() {
        return;
    }
    let _serial = serial().await;
    let registry = TestRegistry::start();
    let tag = registry.reference("kiln/versioned:stable");
    let first = push(&artifact("versioned-1-0"), &tag);
    let setup = Setup::new();
    setup.write(&[&tag], "require_digest = false\nrefresh_ms = 300");
    let queue = TestQueue::new("registry-tag");
    let worker = worker(&setup, &queue).await;
    assert!(worker.get("/plugins").unwrap_or_default().contains(&first));
    let moved = push(&artifact("versioned-1-1"), &tag);
    assert_ne!(first, moved);
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let started = Instant::now();
    let mut i = 0;
    loop {
        let job = serde_json::to_vec(&serde_json::json!({
            "job_id": format!("r{i}"), "plugin": "versioned", "input": "x"
        }))
        .unwrap();
        broker
            .publish(queue.name(), job, Some(&replies.name), None)
            .await;
        let reply = replies.take(1, Duration::from_secs(10)).await;
        let outcome = outcomes(&reply);
        assert_eq!(outcome.len(), 1);
        assert!(!outcome[0].1.starts_with("error"), "{outcome:?}");
        if outcome[0].1 == "1.1.0" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the moved tag was never served"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worker.get("/plugins").unwrap_or_default().contains(&moved));
    worker.stop().await;
    queue.delete().await;
}
