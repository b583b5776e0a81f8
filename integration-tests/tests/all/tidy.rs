//! Architecture tests in the style of rust-analyzer's tidy tests: they read
//! the code and the lock file, and fail when an invariant of
//! ARCHITECTURE.md stops being true.
//!
//! - Broker code and sandbox code never know each other: no module of the
//!   `kiln` crate but the pipeline and the worker wiring names both
//!   `kiln_broker` and `kiln_sandbox` (`config.rs` may name each side's
//!   config section, as data).
//! - `kiln-protocol` and `kiln-sandbox` depend on no broker client, and
//!   `kiln-broker` on no wasmtime; `kiln-sandbox` knows no job records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules (relative to `worker/kiln/src`) that may join the two sides.
const JOINERS: &[&str] = &["pipeline.rs", "worker.rs", "cli/worker.rs"];

/// Modules that may name both sides, and the only items they may name.
const DATA_ONLY: &[(&str, &[&str])] = &[("config.rs", &["AmqpConfig", "SandboxConfig"])];

/// Crates that speak to a broker.
const BROKER_CLIENTS: &[&str] = &["kiln-broker", "lapin", "amq-protocol", "amqprs"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests sits in the repository")
        .to_path_buf()
}

/// The `.rs` files below `dir`, as paths relative to it.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .expect("readable source dir")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(dir).expect("below dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// The code of a Rust file without its comments (line and doc comments;
/// Kiln's sources use no block comments), so that prose naming a crate
/// does not count as using it.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The items a module names from `krate`: `krate::A`, `krate::a::B` (the
/// first segment) and every name in `use krate::{A, b::{C}}`.
fn named_from(code: &str, krate: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let prefix = format!("{krate}::");
    let mut rest = code;
    while let Some(at) = rest.find(&prefix) {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at + prefix.len()..];
        if !boundary {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find(';').unwrap_or(group.len());
            names.extend(
                group[..end]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .filter(|w| !w.is_empty() && w.chars().next().is_some_and(char::is_uppercase))
                    .map(str::to_owned),
            );
        } else {
            let item: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.insert(item);
        }
    }
    names
}

/// Why `module` breaks the broker/sandbox invariant, if it does.
fn violation(module: &str, text: &str) -> Option<String> {
    let code = code(text);
    let broker = named_from(&code, "kiln_broker");
    let sandbox = named_from(&code, "kiln_sandbox");
    if broker.is_empty() || sandbox.is_empty() || JOINERS.contains(&module) {
        return None;
    }
    if let Some((_, allowed)) = DATA_ONLY.iter().find(|(m, _)| *m == module) {
        let extra: Vec<_> = broker
            .iter()
            .chain(&sandbox)
            .filter(|n| !allowed.contains(&n.as_str()))
            .collect();
        if extra.is_empty() {
            return None;
        }
        return Some(format!(
            "{module} may name only {allowed:?} from the broker and the sandbox, but names {extra:?}"
        ));
    }
    Some(format!(
        "{module} names both kiln_broker ({broker:?}) and kiln_sandbox ({sandbox:?}); \
         only {JOINERS:?} may join them (ARCHITECTURE.md)"
    ))
}

#[test]
fn only_the_pipeline_and_the_worker_wiring_join_broker_and_sandbox() {
    let src = repo().join("worker/kiln/src");
    let mut problems = Vec::new();
    for rel in sources(&src) {
        let module = rel.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(src.join(&rel)).expect("readable source");
        problems.extend(violation(&module, &text));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself can fail: a module that imports both sides, or a
/// data-only module that names more than config sections, is reported;
/// comments and look-alike crate names are not.
#[test]
fn the_import_check_catches_a_join() {
    let both = "use kiln_broker::WorkerStats;\nuse kiln_sandbox::{Denials, Registry as Plugins};";
    assert!(violation("metrics.rs", both).is_some());
    assert!(violation("pipeline.rs", both).is_none());
    assert!(violation("config.rs", both).is_some());
    let data = "use kiln_broker::AmqpConfig;\nstruct C { s: kiln_sandbox::SandboxConfig }";
    assert!(violation("config.rs", data).is_none());
    assert!(violation("metrics.rs", data).is_some());
    let prose = "//! unlike kiln_broker::Worker\nuse kiln_sandbox::Plugin;\nuse my_kiln_broker::X;";
    assert!(violation("metrics.rs", prose).is_none());
}

/// Every package of `Cargo.lock` with its direct dependencies (dev ones
/// included, which only makes the check stricter), by name.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo().join("Cargo.lock")).expect("Cargo.lock");
    let lock: toml::Value = toml::from_str(&text).expect("Cargo.lock is TOML");
    let mut graph = BTreeMap::<String, Vec<String>>::new();
    for package in lock["package"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name").to_owned();
        let deps = package
            .get("dependencies")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_str)
            .map(|d| d.split(' ').next().unwrap_or(d).to_owned());
        graph.entry(name).or_default().extend(deps);
    }
    graph
}

/// Every crate `root` depends on, directly or not.
fn closure(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(name) = stack.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen
}

fn forbidden(graph: &BTreeMap<String, Vec<String>>, root: &str, banned: &[&str]) -> Vec<String> {
    let deps = closure(graph, root);
    banned
        .iter()
        .filter(|b| deps.contains(**b))
        .map(|b| format!("{root} depends on {b}"))
        .collect()
}

#[test]
fn the_crates_keep_to_their_side() {
    let graph = lock_graph();
    // The check can fail: the binary does join both sides.
    assert_eq!(
        forbidden(&graph, "kiln", &["lapin", "wasmtime"]).len(),
        2,
        "the lock graph is read"
    );
    let mut problems = Vec::new();
    problems.extend(forbidden(&graph, "kiln-protocol", BROKER_CLIENTS));
    problems.extend(forbidden(
        &graph,
        "kiln-protocol",
        &["wasmtime", "kiln-sandbox"],
    ));
    problems.extend(forbidden(&graph, "kiln-sandbox", BROKER_CLIENTS));
    problems.extend(forbidden(&graph, "kiln-sandbox", &["kiln-protocol"]));
    problems.extend(forbidden(
        &graph,
        "kiln-broker",
        &["wasmtime", "kiln-sandbox"],
    ));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
