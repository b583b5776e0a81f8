//! The `kiln` binary end to end: `run`, `run --jobs`, `plugins`,
//! `precompile`, and bad config.

use std::path::Path;
use std::process::{Command, Output};

use kiln_integration_tests::plugin_dir;
use serde_json::Value;

/// The `kiln` command line (built by cargo for this package's tests).
fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln-under-test")
}

/// Runs the CLI with `--plugins` and `--cache` set (shared with `scaffold.rs`).
pub(crate) fn kiln(plugins: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(kiln_bin())
        .arg("--plugins")
        .arg(plugins)
        .arg("--cache")
        .arg(cache)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The command's stdout as JSON, or a panic showing both streams.
pub(crate) fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The first run compiles the plugin and says so before it starts; the
/// next one loads it from the cache and says nothing.
#[test]
fn run_says_when_a_first_compile_is_under_way() {
    let plugins = plugin_dir(&["uppercase"]);
    let cache = tempfile::tempdir().unwrap();
    let run = || {
        kiln(
            plugins.path(),
            cache.path(),
            &["run", "uppercase", "--input", "hi"],
        )
    };
    let first = run();
    assert!(first.status.success());
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains("compiling uppercase (0.1 MB), once"),
        "{stderr}"
    );
    let second = run();
    assert!(second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!stderr.contains("compiling"), "{stderr}");
}

#[test]
fn run_one_job() {
    let plugins = plugin_dir(&["uppercase", "reverse"]);
    let cache = tempfile::tempdir().unwrap();
    let out = kiln(
        plugins.path(),
        cache.path(),
        &["run", "uppercase", "--input", "hello"],
    );
    assert!(out.status.success());
    let reply = stdout_json(&out);
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["output"], "HELLO");

    // A typed error, and a non-zero exit.
    let out = kiln(
        plugins.path(),
        cache.path(),
        &["run", "reverse", "--input", ""],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"]["kind"], "invalid-input");

    let out = kiln(
        plugins.path(),
        cache.path(),
        &["run", "nope", "--input", "x"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"]["kind"], "unknown-plugin");
}

#[test]
fn run_reads_stdin_and_files() {
    use std::io::Write;
    let plugins = plugin_dir(&["uppercase"]);
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(kiln_bin())
        .args(["--cache"])
        .arg(cache.path())
        .arg("--plugins")
        .arg(plugins.path())
        .args(["run", "uppercase"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout_json(&out)["output"], "FROM STDIN");

    let file = cache.path().join("in.txt");
    std::fs::write(&file, "from a file").unwrap();
    let out = kiln(
        plugins.path(),
        cache.path(),
        &["run", "uppercase", "--file", file.to_str().unwrap()],
    );
    assert_eq!(stdout_json(&out)["output"], "FROM A FILE");
}

#[test]
fn run_jobs_file_through_the_embedded_pipeline() {
    let plugins = plugin_dir(&["uppercase", "wordcount"]);
    let work = tempfile::tempdir().unwrap();
    let jobs = work.path().join("jobs.jsonl");
    let mut lines: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"job_id":"j{i}","plugin":"uppercase","input":"job {i}"}}"#))
        .collect();
    lines.push(r#"{"job_id":"b","plugin":"wordcount","inputs":["a b","c"]}"#.into());
    lines.push("this is not json".into());
    lines.push(String::new());
    std::fs::write(&jobs, lines.join("\n")).unwrap();
    let out_path = work.path().join("replies.jsonl");
    let out = kiln(
        plugins.path(),
        work.path(),
        &[
            "run",
            "--jobs",
            jobs.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
            "--concurrency",
            "4",
        ],
    );
    // One job failed (bad-request), so the exit code says so.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 502);
    let mut ids: Vec<_> = replies
        .iter()
        .map(|r| r["job_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 502, "every job answered exactly once");
    for r in &replies {
        if let Some(id) = r["job_id"].as_str().and_then(|id| id.strip_prefix('j')) {
            assert_eq!(r["output"], format!("JOB {id}"));
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("502 jobs"), "{stderr}");
    assert!(stderr.contains("ok: 501"), "{stderr}");
    assert!(stderr.contains("bad-request: 1"), "{stderr}");
    // The malformed record went to the dead-letter file, with its reason.
    let dead = std::fs::read_to_string(work.path().join("replies.jsonl.dead.jsonl")).unwrap();
    let dead: Value = serde_json::from_str(dead.trim()).unwrap();
    assert_eq!(dead["error"]["kind"], "bad-request");
    assert_eq!(dead["body"], "this is not json");
}

#[test]
fn plugins_lists_versions_exports_cache_and_errors() {
    let plugins = plugin_dir(&["uppercase", "wordcount", "invalid-wrong-types"]);
    let cache = tempfile::tempdir().unwrap();
    let out = kiln(plugins.path(), cache.path(), &["plugins", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a load error makes the exit non-zero"
    );
    let listing = stdout_json(&out);
    let list = listing["plugins"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "uppercase");
    assert_eq!(list[0]["cache"], "compiled");
    assert_eq!(list[1]["exports"], serde_json::json!(["plugin", "batch"]));
    assert!(
        listing["errors"][0]
            .as_str()
            .unwrap()
            .contains("invalid_wrong_types")
    );

    // Second start: from the cache.
    let out = kiln(plugins.path(), cache.path(), &["plugins", "--json"]);
    assert_eq!(stdout_json(&out)["plugins"][0]["cache"], "hit");
}

/// `kiln plugins --worker URL` shows what a running worker serves, its
/// reload errors included, and follows its hot reloads. (The worker needs
/// no broker for that: it keeps reconnecting to a closed port meanwhile.)
#[test]
fn plugins_asks_a_running_worker_what_it_serves() {
    let plugins = plugin_dir(&["uppercase", "invalid-wrong-types"]);
    let cache = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut worker = Command::new(kiln_bin())
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--cache")
        .arg(cache.path())
        .args(["worker", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .args(["--queue", "kiln-test-plugins-worker"])
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .env("KILN__RELOAD__POLL_MS", "200")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let ask = || {
        kiln(
            plugins.path(),
            cache.path(),
            &["plugins", "--json", "--worker", &url],
        )
    };
    // Until `until` holds of an answer, for up to 30 s.
    let wait_for = |until: &dyn Fn(&Output) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = ask();
            if until(&out) || std::time::Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };

    let out = wait_for(&|out| !out.stdout.is_empty());
    let listing = stdout_json(&out);
    assert_eq!(out.status.code(), Some(1), "the worker has a load error");
    assert_eq!(listing["plugins"][0]["name"], "uppercase");
    assert_eq!(listing["plugins"].as_array().map(Vec::len), Some(1));
    assert!(
        listing["errors"][0]
            .as_str()
            .unwrap()
            .contains("invalid_wrong_types"),
        "{listing}"
    );

    // The broken file goes: the running worker's reload clears its error.
    std::fs::remove_file(plugins.path().join("invalid_wrong_types.wasm")).unwrap();
    let out = wait_for(&|out| out.status.success());
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stdout_json(&out)["errors"], serde_json::json!([]));

    // Nothing listens any more: a clear error, not a listing.
    let out = ask();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot ask the worker"));
}

#[test]
fn precompile_fills_a_baked_dir() {
    let plugins = plugin_dir(&["uppercase"]);
    let cache = tempfile::tempdir().unwrap();
    let baked = tempfile::tempdir().unwrap();
    let out = kiln(
        plugins.path(),
        cache.path(),
        &["precompile", "--out", baked.path().to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cwasm = std::fs::read_dir(baked.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert_eq!(cwasm, 1);

    // A worker pointed at the baked dir starts warm, even with no writable cache.
    let config = cache.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!("[sandbox.cache]\nbaked_dir = {:?}\n", baked.path()),
    )
    .unwrap();
    let out = kiln(
        plugins.path(),
        cache.path(),
        &[
            "--config-file",
            config.to_str().unwrap(),
            "plugins",
            "--json",
        ],
    );
    assert_eq!(stdout_json(&out)["plugins"][0]["cache"], "baked");
}

/// The image bakes its cache as root and runs as uid 65532: the baked
/// entries must load for that user as they are, not be recompiled.
#[test]
fn baked_cache_loads_for_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: switching to uid 65532 needs root (CI runs as root)");
        return;
    }
    let open = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let plugins = plugin_dir(&["uppercase"]);
    let root_cache = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let baked = image.path().join("baked");
    let writable = image.path().join("writable");
    std::fs::create_dir(&writable).unwrap();
    let out = kiln(
        plugins.path(),
        root_cache.path(),
        &["precompile", "--out", baked.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the image holds: directories anyone may enter, the binary, the
    // plugins, and a writable cache the user owns; the baked files as
    // `kiln precompile` wrote them.
    let bin = image.path().join("kiln");
    std::fs::copy(kiln_bin(), &bin).unwrap();
    for dir in [image.path(), plugins.path(), &baked] {
        open(dir, 0o755);
    }
    open(&writable, 0o777);
    let config = image.path().join("kiln.toml");
    std::fs::write(&config, format!("[sandbox.cache]\nbaked_dir = {baked:?}\n")).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65532", "--regid", "65532", "--clear-groups"])
        .arg(&bin)
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--cache")
        .arg(&writable)
        .arg("--config-file")
        .arg(&config)
        .args(["plugins", "--json"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout_json(&out)["plugins"][0]["cache"],
        "baked",
        "{stderr}"
    );
    assert!(!stderr.contains("rejected"), "{stderr}");
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let plugins = plugin_dir(&["uppercase"]);
    let cache = tempfile::tempdir().unwrap();
    let config = cache.path().join("kiln.toml");
    std::fs::write(&config, "[pipeline]\nconcurency = 4\n").unwrap();
    let out = kiln(
        plugins.path(),
        cache.path(),
        &["--config-file", config.to_str().unwrap(), "plugins"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("concurency"));
}

#[test]
fn config_check_prints_the_effective_config_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("amqp-url");
    std::fs::write(&secret, "amqp://kiln:hunter2@rabbit.example:5672/%2f\n").unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nconcurrency = 3\n[amqp]\nprefetch = 7\nurl_file = {:?}\n",
            secret.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(kiln_bin())
        .args(["--config-file", config.to_str().unwrap(), "config", "check"])
        // The environment layer wins over the file.
        .env("KILN__AMQP__PREFETCH", "9")
        // A Kubernetes service variable must not break the strict config.
        .env("KILN_SERVICE_HOST", "10.0.0.1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {:?}", out.stderr);
    let printed: toml::Table = stdout.parse().unwrap();
    assert_eq!(printed["pipeline"]["concurrency"].as_integer(), Some(3));
    assert_eq!(printed["amqp"]["prefetch"].as_integer(), Some(9));
    assert_eq!(
        printed["amqp"]["url"].as_str(),
        Some("amqp://kiln:***@rabbit.example:5672/%2f")
    );
    assert!(!stdout.contains("hunter2"));

    // The same check fails with exit 2, naming the key, on an impossible value.
    let out = Command::new(kiln_bin())
        .args(["--config-file", config.to_str().unwrap(), "config", "check"])
        .env("KILN__AMQP__PREFETCH", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("amqp.prefetch"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
