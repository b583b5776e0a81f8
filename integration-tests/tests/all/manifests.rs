//! Plugin manifests (`<stem>.toml` beside `<stem>.wasm`): identity, limits
//! within the operator's caps, config, grants, and per-plugin concurrency.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_integration_tests::{config, ctx, kiln, plugin_dir, stdout_of};
use kiln_sandbox::{Caps, Limits, LoadError, Plugin, Sandbox};

/// Writes `manifest` beside the copy of `crate_name` in a fresh plugins
/// directory, and loads that one file.
async fn load_with(
    sandbox: &Sandbox,
    crate_name: &str,
    manifest: &str,
) -> (tempfile::TempDir, Result<Plugin, LoadError>) {
    let dir = plugin_dir(&[crate_name]);
    let wasm = dir
        .path()
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    std::fs::write(wasm.with_extension("toml"), manifest).unwrap();
    let loaded = sandbox.load_file(&wasm).await;
    (dir, loaded)
}

fn sandbox_with(caps: Caps) -> Sandbox {
    let mut config = config(Limits::default());
    config.caps = caps;
    Sandbox::new(config).unwrap()
}

/// `hostile-spin` with `[limits]` `limits` in its manifest, in a sandbox
/// whose operator raised the fuel cap, so the manifest may ask for more;
/// with the sandbox and the plugins directory, to keep.
async fn spin_with(manifest: &str, limits: &str) -> (Sandbox, tempfile::TempDir, Plugin) {
    let sandbox = sandbox_with(Caps {
        fuel: Some(1_000_000_000_000),
        ..Caps::default()
    });
    let manifest =
        format!("name = \"hostile-spin\"\nversion = \"1.0.0\"\n{manifest}[limits]\n{limits}");
    let (dir, spin) = load_with(&sandbox, "hostile-spin", &manifest).await;
    (sandbox, dir, spin.unwrap())
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_open_exactly_the_listed_directory_and_variables() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "kiln:x:1000:1000::/home/kiln\n").unwrap();
    let sandbox = sandbox_with(Caps {
        allowed_dirs: vec![root.path().to_path_buf()],
        ..Caps::default()
    });
    let (_dir, snoop) = load_with(
        &sandbox,
        "hostile-snoop",
        &format!(
            "name = \"hostile-snoop\"\nversion = \"1.0.0\"\n\
             [grants.dirs]\n{} = \"/etc\"\n[grants.env]\nHOME = \"/home/kiln\"\n",
            toml_path(&etc)
        ),
    )
    .await;
    let run = snoop.unwrap().process(&ctx("snoop", &[]), "x").await;
    let report: serde_json::Value = serde_json::from_str(&run.result.unwrap().output).unwrap();
    assert_eq!(report["file"], "ok: kiln:x:1000:1000::/h", "{report}");
    assert_eq!(report["home"], "ok: /home/kiln", "{report}");
    // Only the granted variable: the host's environment is not passed on.
    assert_eq!(report["env_count"], 1, "{report}");
    // No network grant exists.
    for denied in ["tcp", "udp", "dns"] {
        assert!(
            report[denied].as_str().unwrap().starts_with("error"),
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_beyond_the_caps_or_naming_another_plugin_are_refused() {
    let sandbox = sandbox_with(Caps::default());
    for (manifest, needles) in [
        (
            "name = \"uppercase\"\nversion = \"1.0.0\"\n[limits]\ntimeout_ms = 60000\n",
            &[
                "uppercase",
                "limits.timeout_ms",
                "10000",
                "sandbox.caps.timeout_ms",
            ][..],
        ),
        (
            "name = \"uppercase\"\nversion = \"1.0.0\"\n[grants.dirs]\n\"/etc\" = \"/etc\"\n",
            &["grants.dirs", "/etc", "allowed roots"][..],
        ),
        (
            "name = \"lowercase\"\nversion = \"1.0.0\"\n",
            &["lowercase@1.0.0", "uppercase@1.0.0"][..],
        ),
        (
            "name = \"uppercase\"\nversion = \"1.0.0\"\nsecret = true\n",
            &["secret"][..],
        ),
    ] {
        let (_dir, loaded) = load_with(&sandbox, "uppercase", manifest).await;
        let error = loaded.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, LoadError::Manifest { .. }), "{text}");
        for needle in needles {
            assert!(text.contains(needle), "{manifest:?}: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_limits_and_config_apply_to_the_plugin() {
    let limits = "timeout_ms = 200\nfuel = 1000000000000\n";
    let (sandbox, _dir, spin) = spin_with("description = \"spins\"\n", limits).await;
    assert_eq!(spin.description(), "spins");
    assert_eq!(spin.limits().timeout_ms, 200);
    let started = Instant::now();
    let run = spin.process(&ctx("spin", &[]), "x").await;
    assert!(
        matches!(
            run.result,
            Err(kiln_sandbox::JobFailure::Timeout { deadline_ms: 200 })
        ),
        "{:?}",
        run.result
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // `[config]` is served through get-config; the job's own config wins.
    let (_dir, markdown) = load_with(
        &sandbox,
        "markdown",
        "name = \"markdown\"\nversion = \"1.0.0\"\n[config]\nsmart_punctuation = \"true\"\n",
    )
    .await;
    let markdown = markdown.unwrap();
    let quoted = |config: &[(&str, &str)]| {
        let markdown = &markdown;
        let ctx = ctx("md", config);
        async move {
            markdown
                .process(&ctx, "\"hi\"")
                .await
                .result
                .unwrap()
                .output
        }
    };
    assert!(
        quoted(&[]).await.contains('\u{201c}'),
        "manifest config applied"
    );
    assert!(
        !quoted(&[("smart_punctuation", "false")])
            .await
            .contains('\u{201c}'),
        "job config wins"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_makes_jobs_of_that_plugin_take_turns() {
    let limits = "timeout_ms = 300\nfuel = 1000000000000\nmax_concurrency = 1\n";
    let (_sandbox, _dir, spin) = spin_with("", limits).await;
    let spin = std::sync::Arc::new(spin);
    let started = Instant::now();
    let jobs: Vec<_> = (0..2)
        .map(|i| {
            let spin = spin.clone();
            tokio::spawn(async move { spin.process(&ctx(&format!("s{i}"), &[]), "x").await })
        })
        .collect();
    for job in jobs {
        assert!(job.await.unwrap().result.is_err());
    }
    // One after the other: two deadlines, not one.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

/// `versioned` 1.0.0 (stable, its manifest declaring `canary`) and 1.1.0.
fn canary_dir(percent: u8) -> tempfile::TempDir {
    let dir = plugin_dir(&["versioned-1-0", "versioned-1-1"]);
    std::fs::write(
        dir.path().join("versioned_1_0.toml"),
        format!(
            "name = \"versioned\"\nversion = \"1.0.0\"\n\
             canary = {{ version = \"1.1.0\", percent = {percent} }}\n"
        ),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_takes_its_share_of_unpinned_jobs_by_job_id() {
    let dir = canary_dir(10);
    let registry = sandbox_with(Caps::default())
        .load_dir(dir.path())
        .await
        .unwrap();
    assert!(registry.errors().is_empty(), "{:?}", registry.errors());
    let version = |id: &str, req: Option<&str>| {
        let req = req.map(|r| semver::VersionReq::parse(r).unwrap());
        registry
            .route("versioned", req.as_ref(), id)
            .unwrap()
            .version()
            .to_string()
    };
    let canaries = (0..10_000)
        .filter(|i| version(&format!("job-{i}"), None) == "1.1.0")
        .count();
    // 1,000 expected; the binomial sd is 30.
    assert!((850..=1_150).contains(&canaries), "{canaries} of 10,000");
    // The same job (a retry) meets the same version.
    for i in 0..200 {
        let id = format!("job-{i}");
        assert_eq!(version(&id, None), version(&id, None));
    }
    // A job that names a version gets it, canary or not.
    assert!((0..100).all(|i| version(&format!("job-{i}"), Some("=1.1.0")) == "1.1.0"));
    assert!((0..100).all(|i| version(&format!("job-{i}"), Some("~1.0")) == "1.0.0"));
}

#[test]
fn canary_split_through_kiln_run() {
    let dir = canary_dir(25);
    let work = tempfile::tempdir().unwrap();
    let jobs = work.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..2_000)
        .map(|i| format!(r#"{{"job_id":"c{i}","plugin":"versioned","input":"x"}}"#))
        .collect();
    std::fs::write(&jobs, lines.join("\n")).unwrap();
    let out = stdout_of(
        kiln()
            .arg("--plugins")
            .arg(dir.path())
            .arg("--cache")
            .arg(work.path())
            .args(["run", "--jobs", jobs.to_str().unwrap()]),
    );
    let replies: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 2_000);
    let canary = replies
        .iter()
        .filter(|r| r["plugin_version"] == "1.1.0")
        .inspect(|r| assert_eq!(r["output"], "1.1.0:x"))
        .count();
    // 500 expected; the binomial sd is about 19.
    assert!((400..=600).contains(&canary), "{canary} of 2,000");
}
