//! Warm instances (`[instances] reuse_jobs`, docs/SANDBOX.md): the cap
//! refusal, reuse itself, config never bleeding from one job to the next,
//! limits per job, the memory cap across jobs, retirement after a trap, a
//! limit or an `internal-error`, the idle timeout, a reload, and what the
//! reply and `kiln plugins` say.
//!
//! The fixture is `reuse-probe`, which counts its calls in a global (its
//! output `calls=<n> tag=<tag>` shows whether the instance served a job
//! before) and echoes the `tag` it reads through `get-config`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use kiln_integration_tests::{config, ctx, kiln, plugin_dir, serial, stdout_of};
use kiln_sandbox::{Caps, JobFailure, Limits, LoadError, Plugin, PluginErrorKind, Sandbox};

const PROBE: &str = "reuse-probe";

fn limits() -> Limits {
    Limits {
        timeout_ms: 200,
        memory_bytes: 32 << 20,
        fuel: 2_000_000_000,
        ..Limits::default()
    }
}

fn sandbox(reuse_cap: Option<u32>, idle_timeout_ms: u64) -> Sandbox {
    let mut config = config(limits());
    config.caps = Caps {
        reuse_jobs: reuse_cap,
        ..Caps::default()
    };
    config.pool.idle_timeout_ms = idle_timeout_ms;
    Sandbox::new(config).unwrap()
}

/// `reuse-probe` with `reuse_jobs` (and `extra` manifest lines) in its
/// manifest, from a fresh plugins directory (kept alive by the caller).
async fn probe(
    sandbox: &Sandbox,
    reuse_jobs: u32,
    extra: &str,
) -> (tempfile::TempDir, Result<Plugin, LoadError>) {
    let dir = plugin_dir(&[PROBE]);
    let wasm = dir.path().join("reuse_probe.wasm");
    std::fs::write(
        wasm.with_extension("toml"),
        format!(
            "name = \"reuse-probe\"\nversion = \"1.0.0\"\n{extra}[instances]\nreuse_jobs = {reuse_jobs}\n"
        ),
    )
    .unwrap();
    let loaded = sandbox.load_file(&wasm).await;
    (dir, loaded)
}

/// Runs `input` with config `tag`; the output and whether the instance was
/// reused.
async fn run(
    plugin: &Plugin,
    input: &str,
    tag: Option<&str>,
) -> (Result<String, JobFailure>, bool) {
    let config: Vec<(&str, &str)> = tag.map(|t| ("tag", t)).into_iter().collect();
    let run = plugin.process(&ctx("job", &config), input).await;
    (run.result.map(|o| o.output), run.reused)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_over_the_cap_is_refused_naming_the_key_and_the_cap() {
    // The default cap is 1.
    let (_dir, loaded) = probe(&sandbox(None, 30_000), 2, "").await;
    let err = loaded.unwrap_err().to_string();
    for needle in [
        "instances.reuse_jobs = 2",
        "cap of 1",
        "sandbox.caps.reuse_jobs",
    ] {
        assert!(err.contains(needle), "{err}");
    }
    let (_dir, loaded) = probe(&sandbox(Some(10), 30_000), 11, "").await;
    let err = loaded.unwrap_err().to_string();
    assert!(err.contains("cap of 10"), "{err}");
    // Within the cap it loads, and says so.
    let (_dir, loaded) = probe(&sandbox(Some(10), 30_000), 10, "").await;
    assert_eq!(loaded.unwrap().reuse_jobs(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn reuse_serves_up_to_n_jobs_per_instance_and_never_bleeds_config() {
    let sandbox = sandbox(Some(1000), 30_000);
    let (_dir, plugin) = probe(&sandbox, 3, "").await;
    let plugin = plugin.unwrap();
    // Three jobs in one instance: the counter proves it, and each job sees
    // its own tag, or none.
    assert_eq!(
        run(&plugin, "x", Some("a")).await,
        (Ok("calls=1 tag=a".into()), false)
    );
    assert_eq!(
        run(&plugin, "x", None).await,
        (Ok("calls=2 tag=-".into()), true)
    );
    assert_eq!(
        run(&plugin, "x", Some("c")).await,
        (Ok("calls=3 tag=c".into()), true)
    );
    // The instance served its 3 jobs: the next one is fresh.
    assert_eq!(
        run(&plugin, "x", Some("d")).await,
        (Ok("calls=1 tag=d".into()), false)
    );
    // A plugin error the guest returned on purpose does not retire it.
    let (result, reused) = run(&plugin, "invalid", None).await;
    assert!(
        matches!(
            result,
            Err(JobFailure::Plugin {
                kind: PluginErrorKind::InvalidInput,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(reused);
    assert_eq!(
        run(&plugin, "x", None).await,
        (Ok("calls=3 tag=-".into()), true)
    );

    // Without reuse (the default), every job is fresh.
    let (_dir, fresh) = probe(&sandbox, 1, "").await;
    let fresh = fresh.unwrap();
    for _ in 0..3 {
        assert_eq!(
            run(&fresh, "x", Some("t")).await,
            (Ok("calls=1 tag=t".into()), false)
        );
    }
    assert_eq!(fresh.idle_instances(), 0);
}

/// Warms an instance with two jobs, runs `bad`, checks its failure with
/// `expected`, and that the next job gets a fresh instance.
async fn retires_after(plugin: &Plugin, bad: &str, expected: impl Fn(&JobFailure) -> bool) {
    run(plugin, "x", None).await.0.unwrap();
    let (warm, reused) = run(plugin, "x", None).await;
    assert!(warm.is_ok() && reused, "warm before {bad}: {warm:?}");
    let (result, reused) = run(plugin, bad, None).await;
    let failure = result.unwrap_err();
    assert!(expected(&failure), "{bad}: {failure:?}");
    assert!(reused, "{bad} ran in the warm instance");
    assert_eq!(plugin.idle_instances(), 0, "{bad} retired the instance");
    assert_eq!(
        run(plugin, "x", Some("after")).await,
        (Ok("calls=1 tag=after".into()), false),
        "after {bad}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_a_limit_or_an_internal_error_retires_the_instance() {
    let _serial = serial().await;
    let sandbox = sandbox(Some(1000), 30_000);
    let (_dir, plugin) = probe(&sandbox, 1000, "").await;
    let plugin = plugin.unwrap();
    retires_after(
        &plugin,
        "trap",
        |f| matches!(f, JobFailure::Trap { code, .. } if code == "unreachable"),
    )
    .await;
    retires_after(&plugin, "fail", |f| {
        matches!(
            f,
            JobFailure::Plugin {
                kind: PluginErrorKind::InternalError,
                ..
            }
        )
    })
    .await;
    retires_after(&plugin, "spin", |f| {
        matches!(f, JobFailure::Timeout { deadline_ms: 200 })
    })
    .await;
    retires_after(
        &plugin,
        "grow 64",
        |f| matches!(f, JobFailure::MemoryLimit { cap, .. } if *cap == 32 << 20),
    )
    .await;

    // Fuel: a budget that runs out long before the deadline.
    let (_dir, plugin) = probe(&sandbox, 1000, "[limits]\nfuel = 50000000\n").await;
    let plugin = plugin.unwrap();
    retires_after(&plugin, "spin", |f| {
        matches!(f, JobFailure::FuelExhausted { budget: 50_000_000 })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_and_the_deadline_are_per_job_and_memory_spans_the_jobs() {
    let _serial = serial().await;
    let sandbox = sandbox(Some(1000), 30_000);
    // Fuel: what one `grow 1` job burns, then a budget for three of them;
    // twenty in one instance all succeed, each burning what the first did.
    let (_dir, plugin) = probe(&sandbox, 1, "").await;
    let one = plugin.unwrap().process(&ctx("a", &[]), "grow 1").await;
    assert!(one.result.is_ok(), "{:?}", one.result);
    let budget = one.fuel_used * 3;
    let (_dir, plugin) = probe(&sandbox, 1000, &format!("[limits]\nfuel = {budget}\n")).await;
    let plugin = plugin.unwrap();
    for i in 0..20 {
        let run = plugin.process(&ctx("f", &[]), "grow 1").await;
        assert!(run.result.is_ok(), "job {i}: {:?}", run.result);
        assert_eq!(run.reused, i > 0);
        assert!(
            run.fuel_used <= one.fuel_used * 2,
            "job {i}: {}",
            run.fuel_used
        );
    }
    // The deadline (200 ms): jobs in one instance for longer than that all
    // succeed, each on its own deadline.
    let (_dir, plugin) = probe(&sandbox, 1000, "").await;
    let plugin = plugin.unwrap();
    let started = std::time::Instant::now();
    let mut jobs = 0;
    while started.elapsed() < Duration::from_millis(400) {
        let (ok, reused) = run(&plugin, "x", None).await;
        assert!(ok.is_ok(), "job {jobs}: {ok:?}");
        // A fresh instance every 1,000 jobs.
        assert_eq!(reused, jobs % 1000 != 0, "job {jobs}");
        jobs += 1;
    }
    // Memory: the first two jobs keep 8 MiB each.
    let (_dir, plugin) = probe(&sandbox, 1000, "").await;
    let plugin = plugin.unwrap();
    for _ in 0..2 {
        let (ok, _) = run(&plugin, "grow 8", None).await;
        assert!(ok.is_ok(), "{ok:?}");
    }
    // The memory cap (32 MiB) spans the instance's jobs: 8 + 8 MiB are
    // kept, so 16 more do not fit, though they would in a fresh instance.
    let (result, reused) = run(&plugin, "grow 16", None).await;
    assert!(reused);
    assert!(
        matches!(result, Err(JobFailure::MemoryLimit { .. })),
        "{result:?}"
    );
    let (result, reused) = run(&plugin, "grow 16", None).await;
    assert!(!reused);
    assert_eq!(result.unwrap(), "calls=1 tag=-");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_are_dropped_after_the_idle_timeout() {
    let sandbox = sandbox(Some(1000), 100);
    let (_dir, plugin) = probe(&sandbox, 1000, "").await;
    let plugin = plugin.unwrap();
    let _ = run(&plugin, "x", None).await;
    assert_eq!(plugin.idle_instances(), 1);
    assert_eq!(
        run(&plugin, "x", None).await,
        (Ok("calls=2 tag=-".into()), true)
    );
    // The sweeper drops it without another job coming.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while plugin.idle_instances() > 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(plugin.idle_instances(), 0, "dropped after the idle timeout");
    assert_eq!(
        run(&plugin, "x", None).await,
        (Ok("calls=1 tag=-".into()), false)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_stay_within_the_plugins_concurrency_one_job_each() {
    let sandbox = sandbox(Some(1000), 30_000);
    let (_dir, plugin) = probe(&sandbox, 1000, "[limits]\nmax_concurrency = 2\n").await;
    let plugin = std::sync::Arc::new(plugin.unwrap());
    // Eight jobs at once, two at a time: at most two instances, each
    // serving one job at a time, so the calls of all the jobs are 1 to 4
    // in each of two instances.
    let jobs: Vec<_> = (0..8)
        .map(|_| {
            let plugin = plugin.clone();
            tokio::spawn(async move { run(&plugin, "x", None).await.0.unwrap() })
        })
        .collect();
    let mut calls = Vec::new();
    for job in jobs {
        calls.push(job.await.unwrap());
    }
    calls.sort();
    assert!(plugin.idle_instances() <= 2, "{}", plugin.idle_instances());
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for c in &calls {
        *counts.entry(c.clone()).or_default() += 1;
    }
    // Every call number appears at most twice (once per instance).
    assert!(counts.values().all(|&n| n <= 2), "{calls:?}");
    assert_eq!(counts.values().sum::<usize>(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reloaded_plugin_starts_with_fresh_instances() {
    let sandbox = sandbox(Some(1000), 30_000);
    let (dir, plugin) = probe(&sandbox, 1000, "").await;
    let plugin = plugin.unwrap();
    let _ = run(&plugin, "x", None).await;
    assert_eq!(
        run(&plugin, "x", None).await,
        (Ok("calls=2 tag=-".into()), true)
    );
    // Loading the file again, as hot reload does, gives a new plugin whose
    // first job runs in a new instance.
    let reloaded = sandbox
        .load_file(&dir.path().join("reuse_probe.wasm"))
        .await
        .unwrap();
    assert_eq!(reloaded.idle_instances(), 0);
    assert_eq!(
        run(&reloaded, "x", None).await,
        (Ok("calls=1 tag=-".into()), false)
    );
}

/// Through `kiln run --jobs`: every reply of a reusing plugin says which
/// instance ran it, and `kiln plugins` shows the setting.
#[test]
fn replies_say_fresh_or_reused_and_kiln_plugins_shows_the_setting() {
    let dir = plugin_dir(&[PROBE, "uppercase"]);
    std::fs::write(
        dir.path().join("reuse_probe.toml"),
        "name = \"reuse-probe\"\nversion = \"1.0.0\"\n[instances]\nreuse_jobs = 2\n",
    )
    .unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "plugins_dir = {:?}\n[sandbox.caps]\nreuse_jobs = 2\n[sandbox.cache]\ndir = {:?}\n[pipeline]\nconcurrency = 1\n",
            dir.path().display().to_string(),
            dir.path().join("cache").display().to_string()
        ),
    )
    .unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let mut lines = String::new();
    for i in 0..4 {
        lines.push_str(&format!(
            "{{\"job_id\":\"p{i}\",\"plugin\":\"reuse-probe\",\"input\":\"x\",\"config\":{{\"tag\":\"t{i}\"}}}}\n"
        ));
    }
    lines.push_str("{\"job_id\":\"u\",\"plugin\":\"uppercase\",\"input\":\"x\"}\n");
    std::fs::write(&jobs, lines).unwrap();
    let out = dir.path().join("replies.jsonl");
    stdout_of(kiln().arg("--config-file").arg(&config).args([
        "run",
        "--jobs",
        jobs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let replies: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_id = |id: &str| {
        replies
            .iter()
            .find(|r| r["job_id"] == id)
            .unwrap_or_else(|| panic!("no reply {id}: {replies:?}"))
    };
    // Two jobs per instance, one job at a time.
    for (id, output, instance) in [
        ("p0", "calls=1 tag=t0", "fresh"),
        ("p1", "calls=2 tag=t1", "reused"),
        ("p2", "calls=1 tag=t2", "fresh"),
        ("p3", "calls=2 tag=t3", "reused"),
    ] {
        let reply = by_id(id);
        assert_eq!(reply["output"], output, "{reply}");
        assert_eq!(reply["instance"], instance, "{reply}");
    }
    // A plugin without reuse: no field.
    assert!(by_id("u").get("instance").is_none(), "{}", by_id("u"));

    let list: serde_json::Value = serde_json::from_str(&stdout_of(
        kiln()
            .arg("--config-file")
            .arg(&config)
            .args(["plugins", "--json"]),
    ))
    .unwrap();
    let reuse: Vec<(String, u64)> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["reuse_jobs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reuse,
        [("reuse-probe".to_owned(), 2), ("uppercase".to_owned(), 1)]
    );
}
