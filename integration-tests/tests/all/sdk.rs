//! The Rust SDK's author loop, end to end: `kiln new plugin` (plain and
//! `--batch`), the one build command its README gives, then `kiln plugins`
//! and `kiln run`.
//!
//! The crates are scaffolded inside this checkout (under the plugins
//! workspace's `target/`), so they get the relative path dependency on the
//! SDK, and built with the plugins workspace's target directory and
//! lockfile, so the SDK's dependencies are already compiled.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::scaffold::BUILD_COMMAND;
use serde_json::Value;

use crate::cli::{kiln, stdout_json};

/// The plugins workspace's target directory.
fn plugins_target() -> PathBuf {
    // artifacts() is <target>/wasm32-wasip2/release.
    kiln_integration_tests::artifacts()
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Scaffolds `name` in a fresh directory inside this checkout, builds it
/// with `cargo build --release --target wasm32-wasip2`, and returns a
/// plugins directory holding `<name>.wasm` and `<name>.toml`, as the
/// README says to ship them.
fn scaffold_and_build(name: &str, batch: bool) -> (tempfile::TempDir, PathBuf) {
    let target = plugins_target();
    let work = tempfile::Builder::new()
        .prefix("sdk-test-")
        .tempdir_in(&target)
        .unwrap();
    let mut new = Command::new(env!("CARGO_BIN_EXE_kiln-under-test"));
    new.args(["new", "plugin", name, "--dir"]).arg(work.path());
    if batch {
        new.arg("--batch");
    }
    let out = new.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crate_dir = work.path().join(name);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(BUILD_COMMAND), "{stdout}");

    // Inside the checkout, the SDK is a relative path dependency (and
    // `kiln new` has nothing to warn about).
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cargo_toml: toml::Table =
        toml::from_str(&std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap()).unwrap();
    let sdk = cargo_toml["dependencies"]["kiln-plugin"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no path dependency on the SDK: {cargo_toml}"));
    assert!(Path::new(sdk).is_relative(), "{sdk}");

    // The plugins workspace's lockfile pins the SDK's dependencies to the
    // versions already built in the shared target directory.
    let repo_lock = target.parent().unwrap().join("Cargo.lock");
    std::fs::copy(&repo_lock, crate_dir.join("Cargo.lock")).unwrap();

    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Build as from a shell: drop what the outer cargo set for this test.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            )
        {
            cargo.env_remove(key);
        }
    }
    let out = cargo
        .args(BUILD_COMMAND.split(' ').skip(1))
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{}` failed in {}:\n{}",
        BUILD_COMMAND,
        crate_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );

    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let wasm = target
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::copy(&wasm, plugins.join(format!("{name}.wasm"))).unwrap();
    // Keep the shared artifacts directory to the plugins workspace's own.
    std::fs::remove_file(&wasm).unwrap();
    let _ = std::fs::remove_file(wasm.with_extension("d"));
    std::fs::copy(
        crate_dir.join(format!("{name}.toml")),
        plugins.join(format!("{name}.toml")),
    )
    .unwrap();
    (work, plugins)
}

/// What every scaffolded plugin does: uppercase, `suffix` from the config,
/// `invalid-input` for an empty input; name and version from Cargo.toml.
fn check_single_jobs(name: &str, plugins: &Path, cache: &Path) {
    let out = kiln(plugins, cache, &["run", name, "--input", "hello sdk"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = stdout_json(&out);
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["plugin"], name);
    assert_eq!(reply["plugin_version"], "0.1.0");
    assert_eq!(reply["output"], "HELLO SDK");
    assert_eq!(reply["metadata"]["chars"], "9");

    let out = kiln(
        plugins,
        cache,
        &["run", name, "--input", "hi", "--config", "suffix=!"],
    );
    assert_eq!(stdout_json(&out)["output"], "HI!");

    let out = kiln(plugins, cache, &["run", name, "--input", ""]);
    assert_eq!(out.status.code(), Some(1));
    let reply = stdout_json(&out);
    assert_eq!(reply["error"]["kind"], "invalid-input", "{reply}");
    assert_eq!(reply["error"]["message"], "empty input");
}

fn exports(name: &str, plugins: &Path, cache: &Path) -> Value {
    let out = kiln(plugins, cache, &["plugins", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let listing = stdout_json(&out);
    let plugin = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {listing}"));
    plugin["exports"].clone()
}

#[test]
fn scaffolded_plugin_builds_and_runs() {
    let name = "sdk-plain";
    let (work, plugins) = scaffold_and_build(name, false);
    let cache = work.path().join("cache");
    assert_eq!(
        exports(name, &plugins, &cache),
        serde_json::json!(["plugin"])
    );
    check_single_jobs(name, &plugins, &cache);
}

#[test]
fn scaffolded_batch_plugin_builds_and_runs_batches() {
    let name = "sdk-batch";
    let (work, plugins) = scaffold_and_build(name, true);
    let cache = work.path().join("cache");
    assert_eq!(
        exports(name, &plugins, &cache),
        serde_json::json!(["plugin", "batch"])
    );
    check_single_jobs(name, &plugins, &cache);

    // A batch job: one call to process-batch, one result per input, in order.
    let jobs = work.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        format!(r#"{{"job_id":"b","plugin":"{name}","inputs":["ab","","c d"]}}"#),
    )
    .unwrap();
    let out_path = work.path().join("replies.jsonl");
    let out = kiln(
        &plugins,
        &cache,
        &[
            "run",
            "--jobs",
            jobs.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ],
    );
    let replies = std::fs::read_to_string(&out_path).unwrap();
    let reply: Value = serde_json::from_str(replies.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: {replies:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let results = reply["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {reply}"));
    assert_eq!(results.len(), 3, "{reply}");
    assert_eq!(results[0]["output"], "AB", "{reply}");
    assert_eq!(results[1]["error"]["kind"], "invalid-input", "{reply}");
    assert_eq!(results[2]["output"], "C D", "{reply}");
}
