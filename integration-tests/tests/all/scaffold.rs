//! `kiln new plugin --lang rust|c|js|python|go [--batch]` end to end: the
//! scaffold, its one command `./build.sh`, then `kiln plugins` and `kiln
//! run` on the `NAME.wasm` it wrote (the exports, name, version, output,
//! metadata, config, the typed error, and a batch job for `--batch`).
//!
//! The Rust crates are scaffolded inside this checkout (under the plugins
//! workspace's `target/`), so they get the relative path dependency on the
//! SDK, and built with the plugins workspace's target directory and
//! lockfile, so the SDK's dependencies are already compiled.
//!
//! The toolchains come from the shared cache that `cargo xtask plugins
//! --all` fills (`.ci/plugins-languages` runs it before the tests), so the
//! builds here install nothing. When a language's toolchain is not in the
//! cache, its test says so and skips, unless `KILN_REQUIRE_LANG_PLUGINS=1`
//! (as CI sets), when `build.sh` installs it as it would for an author.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::scaffold::{BUILD_SCRIPT, Lang};
use kiln_xtask::lang::{self, cache};
use serde_json::Value;

use crate::cli::{kiln, stdout_json};

/// The cache directories `lang`'s build.sh needs (besides Debian's clang
/// for C), by `kiln_xtask::lang`'s names.
fn needed(lang: Lang) -> Vec<PathBuf> {
    let root = lang::toolchains_dir();
    let names = match lang {
        Lang::Rust => vec![],
        Lang::C => vec![cache::wit_bindgen(), cache::crates(), cache::wasm_tools()],
        Lang::Js => vec![cache::componentize_js()],
        Lang::Python => vec![cache::componentize_py()],
        Lang::Go => vec![
            cache::go(),
            cache::wit_bindgen(),
            cache::crates(),
            cache::wasm_tools(),
        ],
    };
    let mut paths: Vec<PathBuf> = names.into_iter().map(|n| root.join(n)).collect();
    if lang == Lang::C {
        paths.extend(lang::C_TOOLCHAIN_PATHS.iter().map(PathBuf::from));
    }
    paths
}

/// Whether to test `lang`: its toolchain is cached, or it is required.
fn toolchain_ready(lang: Lang) -> bool {
    let missing: Vec<String> = needed(lang)
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() || std::env::var("KILN_REQUIRE_LANG_PLUGINS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "SKIPPED the {lang} scaffold: its toolchain is not in the cache ({}); run \
         `cargo xtask plugins --all` to fill it (set KILN_REQUIRE_LANG_PLUGINS=1 to build anyway)",
        missing.join(", ")
    );
    false
}

/// The plugins workspace's target directory (the Rust builds share it).
fn plugins_target() -> PathBuf {
    kiln_integration_tests::artifacts()
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// `kiln new plugin NAME --lang LANG [--batch]` in a fresh directory (for
/// Rust, inside this checkout, so the SDK is a path dependency), then
/// `./build.sh`. Returns the directory and the project's path.
fn scaffold_and_build(lang: Lang, name: &str, batch: bool) -> (tempfile::TempDir, PathBuf) {
    let work = if lang == Lang::Rust {
        tempfile::Builder::new()
            .prefix("scaffold-test-")
            .tempdir_in(plugins_target())
            .unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let mut new = Command::new(env!("CARGO_BIN_EXE_kiln-under-test"));
    new.args(["new", "plugin", name, "--lang", lang.as_str(), "--dir"])
        .arg(work.path());
    if batch {
        new.arg("--batch");
    }
    let out = new.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = work.path().join(name);
    if lang == Lang::Rust {
        // Inside the checkout, the SDK is a relative path dependency (and
        // `kiln new` has nothing to warn about).
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cargo_toml: toml::Table =
            toml::from_str(&std::fs::read_to_string(project.join("Cargo.toml")).unwrap()).unwrap();
        let sdk = cargo_toml["dependencies"]["kiln-plugin"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("no path dependency on the SDK: {cargo_toml}"));
        assert!(Path::new(sdk).is_relative(), "{sdk}");
    }
    // The two commands that follow.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("cd {} && {BUILD_SCRIPT}", project.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "kiln --plugins {} run {name} --input",
            project.display()
        )),
        "{stdout}"
    );

    let mut build = Command::new(project.join("build.sh"));
    // Build as from a shell: drop what the outer cargo set for this test.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            )
        {
            build.env_remove(key);
        }
    }
    if lang == Lang::Rust {
        // The plugins workspace's lockfile and target directory: the SDK's
        // dependencies are already built there.
        let target = plugins_target();
        std::fs::copy(
            target.parent().unwrap().join("Cargo.lock"),
            project.join("Cargo.lock"),
        )
        .unwrap();
        build.env("CARGO_TARGET_DIR", &target);
    }
    let out = build.current_dir(work.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{lang}: ./build.sh failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(project.join(format!("{name}.wasm")).is_file());
    if lang == Lang::Rust {
        // Keep the shared artifacts directory to the plugins workspace's own.
        let shared = kiln_integration_tests::artifact(name);
        let _ = std::fs::remove_file(&shared);
        let _ = std::fs::remove_file(shared.with_extension("d"));
    }
    (work, project)
}

/// What every scaffold does: uppercase, `suffix` from the config,
/// `invalid-input` for an empty input, and its name and version.
fn check_single_jobs(lang: Lang, name: &str, project: &Path, cache: &Path) {
    let out = kiln(project, cache, &["run", name, "--input", "hello scaffold"]);
    assert!(
        out.status.success(),
        "{lang}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = stdout_json(&out);
    assert_eq!(reply["status"], "ok", "{lang}: {reply}");
    assert_eq!(reply["plugin"], name, "{lang}: {reply}");
    assert_eq!(reply["plugin_version"], "0.1.0", "{lang}: {reply}");
    assert_eq!(reply["output"], "HELLO SCAFFOLD", "{lang}: {reply}");
    assert_eq!(reply["metadata"]["chars"], "14", "{lang}: {reply}");

    let out = kiln(
        project,
        cache,
        &["run", name, "--input", "hi", "--config", "suffix=!"],
    );
    assert_eq!(stdout_json(&out)["output"], "HI!", "{lang}");

    let out = kiln(project, cache, &["run", name, "--input", ""]);
    assert_eq!(out.status.code(), Some(1), "{lang}");
    let reply = stdout_json(&out);
    assert_eq!(reply["error"]["kind"], "invalid-input", "{lang}: {reply}");
    assert_eq!(reply["error"]["message"], "empty input", "{lang}: {reply}");
}

/// What `kiln plugins` lists as the plugin's exports.
fn exports(lang: Lang, name: &str, project: &Path, cache: &Path) -> Value {
    let out = kiln(project, cache, &["plugins", "--json"]);
    let listing = stdout_json(&out);
    listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{lang}: {name} not listed: {listing}"))["exports"]
        .clone()
}

/// A batch job: one call to `process-batch`, one result per input, in order.
fn check_batch(lang: Lang, name: &str, project: &Path, work: &Path) {
    let cache = work.join("cache");
    assert_eq!(
        exports(lang, name, project, &cache),
        serde_json::json!(["plugin", "batch"]),
        "{lang}"
    );

    let jobs = work.join("jobs.jsonl");
    std::fs::write(
        &jobs,
        format!(r#"{{"job_id":"b","plugin":"{name}","inputs":["ab","","c d"]}}"#),
    )
    .unwrap();
    let replies = work.join("replies.jsonl");
    let out = kiln(
        project,
        &cache,
        &[
            "run",
            "--jobs",
            jobs.to_str().unwrap(),
            "--out",
            replies.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&replies).unwrap_or_default();
    let reply: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{lang}: {e}: {text:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let results = reply["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{lang}: no results: {reply}"));
    assert_eq!(results.len(), 3, "{lang}: {reply}");
    assert_eq!(results[0]["output"], "AB", "{lang}: {reply}");
    assert_eq!(
        results[1]["error"]["kind"], "invalid-input",
        "{lang}: {reply}"
    );
    assert_eq!(results[2]["output"], "C D", "{lang}: {reply}");
}

/// Scaffolds, builds and runs `lang`, plain and (where supported) `--batch`.
fn scaffold_builds_and_runs(lang: Lang) {
    if !toolchain_ready(lang) {
        return;
    }
    let name = format!("scaffold-{lang}");
    let (work, project) = scaffold_and_build(lang, &name, false);
    let cache = work.path().join("cache");
    assert_eq!(
        exports(lang, &name, &project, &cache),
        serde_json::json!(["plugin"]),
        "{lang}"
    );
    check_single_jobs(lang, &name, &project, &cache);
    if lang.supports_batch() {
        let name = format!("scaffold-{lang}-batch");
        let (work, project) = scaffold_and_build(lang, &name, true);
        check_single_jobs(lang, &name, &project, &work.path().join("cache"));
        check_batch(lang, &name, &project, work.path());
    }
}

#[test]
fn rust_scaffold_builds_and_runs() {
    scaffold_builds_and_runs(Lang::Rust);
}

#[test]
fn c_scaffold_builds_and_runs() {
    scaffold_builds_and_runs(Lang::C);
}

#[test]
fn js_scaffold_builds_and_runs() {
    scaffold_builds_and_runs(Lang::Js);
}

#[test]
fn python_scaffold_builds_and_runs() {
    scaffold_builds_and_runs(Lang::Python);
}

#[test]
fn go_scaffold_builds_and_runs() {
    scaffold_builds_and_runs(Lang::Go);
}

#[test]
fn c_refuses_batch_and_sdk_is_rust_only() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-under-test"))
        .args(["new", "plugin", "cb", "--lang", "c", "--batch", "--dir"])
        .arg(work.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch"));
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-under-test"))
        .args([
            "new", "plugin", "p", "--lang", "python", "--sdk", "x", "--dir",
        ])
        .arg(work.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-under-test"))
        .args(["new", "plugin", "p", "--lang", "cobol", "--dir"])
        .arg(work.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(std::fs::read_dir(work.path()).unwrap().next().is_none());
}
