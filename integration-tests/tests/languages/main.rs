//! `textcase` in every language (Rust, C, JavaScript, Python, Go) against
//! the one golden table, `plugins/golden/textcase.json`: every row in every
//! mode (and with no mode, the default), the config precedence (job config
//! over plugin config), the typed errors and the one log line, through
//! `kiln run --jobs` and through `kiln worker` on the local RabbitMQ.
//!
//! The Rust plugin is always built (by `build.rs`). The others come from
//! `cargo xtask plugins --all`, in `target/lang-plugins/` (or
//! `$KILN_LANG_PLUGINS`; see `kiln_integration_tests::lang_plugins_dir`). When one is missing the test says so and skips
//! it, unless `KILN_REQUIRE_LANG_PLUGINS=1` (as `.ci/plugins-languages`
//! sets), when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_integration_tests::broker::{Broker, TestQueue, URL, WorkerProc};
use kiln_integration_tests::{TEXTCASE_LANGUAGES, kiln, textcase_artifact};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The `.wasm` of each language present, Rust always; the others are
/// skipped with a message, or fail the test under
/// `KILN_REQUIRE_LANG_PLUGINS=1`.
fn plugins() -> Vec<(&'static str, PathBuf)> {
    let require = std::env::var("KILN_REQUIRE_LANG_PLUGINS").as_deref() == Ok("1");
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for lang in TEXTCASE_LANGUAGES {
        let path = textcase_artifact(lang);
        if path.is_file() {
            found.push((lang, path));
        } else {
            missing.push(path);
        }
    }
    assert!(
        found.first().map(|(l, _)| *l) == Some("rust"),
        "textcase-rust is missing: build.rs builds it with the Rust plugins"
    );
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        assert!(
            !require,
            "KILN_REQUIRE_LANG_PLUGINS=1 but language plugins are missing: {}; build them with `cargo xtask plugins --all`",
            list.join(", ")
        );
        eprintln!(
            "SKIPPED language plugins not built ({}); run `cargo xtask plugins --all` to test them (set KILN_REQUIRE_LANG_PLUGINS=1 to make this a failure)",
            list.join(", ")
        );
    }
    found
}

fn golden() -> Value {
    let path = repo_root()
        .join("plugins")
        .join("golden")
        .join("textcase.json");
    let text = std::fs::read_to_string(&path).expect("golden table readable");
    serde_json::from_str(&text).expect("golden table is JSON")
}

/// A golden value: a string, or `{"repeat", "times", "then"?}`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let unit = o["repeat"].as_str().expect("repeat is a string");
            let times = o["times"].as_u64().expect("times is a number");
            let then = o.get("then").and_then(Value::as_str).unwrap_or("");
            let mut s = unit.repeat(usize::try_from(times).expect("times fits"));
            s.push_str(then);
            s
        }
        other => panic!("bad golden value {other}"),
    }
}

/// What one job must give.
#[derive(Debug, Clone)]
enum Expect {
    Ok {
        output: String,
        words: u64,
        /// The mode named in the log line.
        mode: String,
    },
    Err {
        kind: String,
        message: String,
    },
}

/// One job and its expectation.
#[derive(Debug, Clone)]
struct Case {
    id: String,
    what: String,
    job: Value,
    expect: Expect,
}

/// Every golden row in every mode and with no mode, plus the error rows,
/// as jobs for `plugin`, with `lang`'s documented differences applied.
fn cases(lang: &str, plugin: &str) -> Vec<Case> {
    let g = golden();
    let diffs = &g["runtime_differences"][lang];
    let mut out = Vec::new();
    let modes = g["modes"].as_array().expect("modes");
    let default_mode = g["default_mode"].as_str().expect("default_mode");
    for (r, row) in g["rows"].as_array().expect("rows").iter().enumerate() {
        let name = row["name"].as_str().expect("row name");
        let input = text(&row["input"]);
        let words = row["words"].as_u64().expect("words");
        let mut mode_list: Vec<Option<&str>> = modes.iter().map(Value::as_str).collect();
        mode_list.push(None);
        for mode in mode_list {
            let m = mode.unwrap_or(default_mode);
            let expected = diffs[name][m]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| text(&row["expected"][m]));
            let mut job = json!({"plugin": plugin, "input": input});
            if let Some(mode) = mode {
                job["config"] = json!({ "mode": mode });
            }
            let id = format!("{lang}-r{r}-{}", mode.unwrap_or("default"));
            job["job_id"] = json!(id);
            out.push(Case {
                id,
                what: format!("{lang}: row {name:?}, mode {}", mode.unwrap_or("(unset)")),
                job,
                expect: Expect::Ok {
                    output: expected,
                    words,
                    mode: m.to_owned(),
                },
            });
        }
    }
    for (e, row) in g["errors"].as_array().expect("errors").iter().enumerate() {
        let id = format!("{lang}-e{e}");
        out.push(Case {
            id: id.clone(),
            what: format!("{lang}: error row {}", row["name"]),
            job: json!({"job_id": id, "plugin": plugin, "input": row["input"], "config": row["config"]}),
            expect: Expect::Err {
                kind: row["kind"].as_str().expect("kind").to_owned(),
                message: row["message"].as_str().expect("message").to_owned(),
            },
        });
    }
    out
}

/// Checks one reply record against its case; returns the failure, if any.
fn check(case: &Case, reply: &Value) -> Option<String> {
    let short = |s: &str| -> String {
        if s.chars().count() > 120 {
            format!(
                "{}… ({} bytes)",
                s.chars().take(120).collect::<String>(),
                s.len()
            )
        } else {
            s.to_owned()
        }
    };
    match &case.expect {
        Expect::Ok { output, words, .. } => {
            if reply["status"] != "ok" {
                return Some(format!("{}: expected ok, got {reply}", case.what));
            }
            let got = reply["output"].as_str().unwrap_or_default();
            if got != output {
                return Some(format!(
                    "{}: output {:?}, expected {:?}",
                    case.what,
                    short(got),
                    short(output)
                ));
            }
            if reply["metadata"] != json!({"words": words.to_string()}) {
                return Some(format!(
                    "{}: metadata {}, expected words={words}",
                    case.what, reply["metadata"]
                ));
            }
        }
        Expect::Err { kind, message } => {
            let e = &reply["error"];
            if reply["status"] != "error"
                || e["kind"] != kind.as_str()
                || e["source"] != "plugin"
                || e["message"] != message.as_str()
            {
                return Some(format!(
                    "{}: expected {kind} {message:?} from the plugin, got {reply}",
                    case.what
                ));
            }
        }
    }
    None
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A component cache shared by the tests of this binary and kept between
/// runs, filled once per process before any test uses it: compiling the
/// JS and Python components takes tens of seconds, and three tests
/// compiling them at once on two cores would only wait on each other.
fn warm_cache(plugins: &[(&str, PathBuf)]) -> PathBuf {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let cache = repo_root().join("target").join("languages-test-cache");
            std::fs::create_dir_all(&cache).expect("create the cache dir");
            let dir = plugin_dir(plugins);
            let out = kiln_on("plugins", dir.path(), &cache)
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .output()
                .expect("kiln plugins starts");
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "kiln plugins failed: {listing}");
            for (lang, _) in plugins {
                assert!(
                    listing.contains(&format!("textcase-{lang} ")),
                    "textcase-{lang} did not load: {listing}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            cache
        })
        .clone()
}

/// `kiln COMMAND --plugins PLUGINS --cache CACHE`.
fn kiln_on(command: &str, plugins: &Path, cache: &Path) -> Command {
    let mut cmd = kiln();
    cmd.arg(command)
        .arg("--plugins")
        .arg(plugins)
        .arg("--cache")
        .arg(cache);
    cmd
}

/// Copies `plugins` into a fresh plugins directory.
fn plugin_dir(plugins: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (lang, path) in plugins {
        std::fs::copy(path, dir.path().join(format!("textcase-{lang}.wasm"))).expect("copy");
    }
    dir
}

/// The golden table through `kiln run --jobs`, per language, with the log
/// line of every successful job read back from kiln's JSON logs.
#[test]
fn golden_table_through_kiln_run() {
    let plugins = plugins();
    let cache = warm_cache(&plugins);
    let dir = plugin_dir(&plugins);
    let mut failures = Vec::new();
    for (lang, _) in &plugins {
        let cases = cases(lang, &format!("textcase-{lang}"));
        let jobs = dir.path().join(format!("{lang}.jobs.jsonl"));
        let replies = dir.path().join(format!("{lang}.replies.jsonl"));
        let body: String = cases.iter().map(|c| format!("{}\n", c.job)).collect();
        std::fs::write(&jobs, body).expect("write jobs");
        let out = kiln_on("run", dir.path(), &cache)
            .arg("--jobs")
            .arg(&jobs)
            .arg("--out")
            .arg(&replies)
            .env("RUST_LOG", "kiln::plugin=info")
            .stdin(Stdio::null())
            .output()
            .expect("kiln run starts");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = std::fs::read_to_string(&replies).unwrap_or_default();
        let by_id: HashMap<String, Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| (v["job_id"].as_str().unwrap_or_default().to_owned(), v))
            .collect();
        // job id → the lines the plugin logged for it.
        let mut logs: HashMap<String, Vec<String>> = HashMap::new();
        for line in stderr.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["target"] == "kiln::plugin" {
                let f = &v["fields"];
                assert_eq!(f["plugin"], format!("textcase-{lang}"), "log line {line}");
                assert_eq!(v["level"], "INFO", "log line {line}");
                logs.entry(f["job_id"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .push(f["message"].as_str().unwrap_or_default().to_owned());
            }
        }
        for case in &cases {
            let Some(reply) = by_id.get(&case.id) else {
                failures.push(format!("{}: no reply (kiln stderr: {stderr})", case.what));
                continue;
            };
            failures.extend(check(case, reply));
            let logged = logs.remove(&case.id).unwrap_or_default();
            let want: Vec<String> = match &case.expect {
                Expect::Ok { words, mode, .. } => {
                    vec![format!("textcase: mode={mode} words={words}")]
                }
                Expect::Err { .. } => Vec::new(),
            };
            if logged != want {
                failures.push(format!(
                    "{}: logged {logged:?}, expected {want:?}",
                    case.what
                ));
            }
        }
        assert_eq!(by_id.len(), cases.len(), "{lang}: one reply per job");
    }
    assert_no_failures(&failures);
}

/// Job config wins over plugin config, which wins over the default.
#[test]
fn plugin_config_and_job_config() {
    let plugins = plugins();
    let cache = warm_cache(&plugins);
    let dir = plugin_dir(&plugins);
    let config = dir.path().join("kiln.toml");
    let mut toml = String::new();
    for (lang, _) in &plugins {
        toml.push_str(&format!(
            "[sandbox.plugin_config.textcase-{lang}]\nmode = \"upper\"\n"
        ));
    }
    std::fs::write(&config, toml).expect("write config");
    for (lang, _) in &plugins {
        for (job_mode, output) in [(None, "ÉTÉ À PARIS"), (Some("snake"), "été_à_paris")] {
            let mut cmd = kiln_on("run", dir.path(), &cache);
            cmd.arg(format!("textcase-{lang}"))
                .args(["--input", "Été à Paris"])
                .arg("--config-file")
                .arg(&config)
                .env("RUST_LOG", "error")
                .stdin(Stdio::null());
            if let Some(mode) = job_mode {
                cmd.args(["--config", &format!("mode={mode}")]);
            }
            let out = cmd.output().expect("kiln run starts");
            let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "{lang}: reply is not JSON ({e}): {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            assert_eq!(
                (reply["status"].as_str(), reply["output"].as_str()),
                (Some("ok"), Some(output)),
                "{lang}, job mode {job_mode:?}: {reply}"
            );
            assert!(out.status.success(), "{lang}: kiln run exit {}", out.status);
        }
    }
}

/// The same golden cases, every language through one `kiln worker` on the
/// local RabbitMQ; replies come back on a reply queue.
#[tokio::test(flavor = "multi_thread")]
async fn golden_table_through_the_worker() {
    let plugins = plugins();
    let cache = warm_cache(&plugins);
    let dir = plugin_dir(&plugins);
    let q = TestQueue::new("languages");
    // The default memory cap (the test workers' is lower), and time to
    // compile the JS and Python components on a cold cache.
    let env = [("KILN__SANDBOX__LIMITS__MEMORY_BYTES", "67108864")];
    let worker = WorkerProc::start(URL, &q, dir.path(), &cache, &env)
        .until_ready_within(Duration::from_secs(120))
        .await;
    let broker = Broker::connect().await;
    let replies = broker.reply_queue().await;
    let mut all: BTreeMap<String, Case> = BTreeMap::new();
    let mut jobs = Vec::new();
    for (lang, _) in &plugins {
        for case in cases(lang, &format!("textcase-{lang}")) {
            jobs.push((
                case.id.clone(),
                serde_json::to_vec(&case.job).expect("json"),
            ));
            all.insert(case.id.clone(), case);
        }
    }
    broker.publish_many(&q, &jobs, &replies.name).await;
    let got = replies.take(jobs.len(), Duration::from_secs(180)).await;
    let mut failures = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in &got {
        let reply: Value = serde_json::from_slice(&r.body).expect("reply is JSON");
        let id = reply["job_id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(r.correlation_id.as_deref(), Some(id.as_str()));
        match all.get(&id) {
            Some(case) => failures.extend(check(case, &reply)),
            None => failures.push(format!("reply for an unknown job: {reply}")),
        }
        seen.insert(id);
    }
    for id in all.keys().filter(|id| !seen.contains(*id)) {
        failures.push(format!("{}: no reply from the worker", all[id].what));
    }
    drop(worker);
    assert_no_failures(&failures);
}

/// The Go runtime's start-up runs at build time, not in every instance:
/// `cargo xtask plugins` and the Go scaffold pre-initialize the core module
/// with Wizer (docs/PLUGINS.md). Fuel counts guest instructions, so it
/// tells deterministically whether a fresh instance ran the start-up: a
/// 200 B job burned 3.1 million units with it (the runtime's `_initialize`
/// alone 3.0 million), against about 0.1 million for the job itself.
#[test]
fn go_plugins_do_not_start_their_runtime_per_job() {
    let plugins = plugins();
    let Some(go) = plugins.iter().find(|(lang, _)| *lang == "go") else {
        return;
    };
    let cache = warm_cache(&plugins);
    let dir = plugin_dir(std::slice::from_ref(go));
    let jobs = dir.path().join("jobs.jsonl");
    let replies = dir.path().join("replies.jsonl");
    let text = kiln_integration_tests::job_text(200);
    let job = json!({"job_id": "go-fuel", "plugin": "textcase-go", "input": text, "config": {"mode": "upper"}});
    std::fs::write(&jobs, format!("{job}\n")).expect("write jobs");
    let out = kiln_on("run", dir.path(), &cache)
        .arg("--jobs")
        .arg(&jobs)
        .arg("--out")
        .arg(&replies)
        .stdin(Stdio::null())
        .output()
        .expect("kiln run starts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value =
        serde_json::from_str(std::fs::read_to_string(&replies).expect("replies").trim())
            .expect("reply is JSON");
    assert_eq!(reply["output"], text.to_uppercase(), "{reply}");
    let fuel = reply["fuel_used"].as_u64().expect("fuel_used");
    assert!(
        fuel < 1_000_000,
        "a fresh textcase-go job burned {fuel} fuel: its runtime started in the instance (was it built without Wizer?)"
    );
}
