//! The per-language table of docs/PLUGINS.md: `textcase` in Rust, C,
//! JavaScript, Python and Go, measured in one run on one machine.
//!
//! For each language present (see `cargo xtask plugins --all`):
//!
//! - `.wasm` and `.cwasm` bytes (the component, and what wasmtime compiles
//!   it to: `Engine::precompile_component`);
//! - compile time (median of 3; a cold start compiles each plugin once) and
//!   verified cache-load time (median of 20);
//! - a whole job on a fresh instance at 200 B (`Plugin::process`, mode
//!   `upper`, fuel and epoch on): median and p99 of 300 after 20 warm-ups,
//!   split into instantiation (`Run::instantiation`: store, memory image,
//!   the guest's start-up code) and the call, with the minor page faults
//!   per job (`/proc/self/stat`) and the fuel one job burns; then the same
//!   job in a warm instance (`[instances] reuse_jobs = 1000`);
//! - jobs/s through the embedded pipeline (`kiln run --jobs`, warm cache),
//!   fresh and with `reuse_jobs = 1000`, as kiln's own summary line reports:
//!   every language in each of `KILN_BENCH_ROUNDS` rounds (default 3),
//!   side by side, the median kept, and its ratio to Rust fresh. The timed
//!   jobs are 200 B in mode `upper`, the workload, every reply
//!   checked; before the rounds, each set-up runs every row of the golden
//!   table (`plugins/golden/textcase.json`) in every mode, three times
//!   over, every reply checked against the table and failures counted.
//!
//! - a worker's resident memory: `kiln run --jobs` reading a FIFO, so that
//!   it loads its plugins, runs one `textcase` job per language it holds and
//!   then idles, its `VmRSS` read from `/proc/<pid>/status`: with the 10
//!   small Rust and C plugins, then with each heavy plugin added (median of
//!   `KILN_BENCH_ROUNDS` starts).
//!
//! Run with `cargo bench --release --workspace --bench languages`; it prints
//! Markdown tables.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_integration_tests::{TEXTCASE_LANGUAGES, ctx, job_text, textcase_artifact};
use kiln_sandbox::{CacheConfig, Caps, ComponentCache, Limits, Sandbox};
use serde_json::{Value, json};

const BYTES: usize = 200;
/// Most jobs one instance serves in the reuse runs.
const REUSE: u32 = 1000;

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    let u = d.as_secs_f64() * 1e6;
    if u >= 1000.0 {
        format!("{:.2} ms", u / 1e3)
    } else {
        format!("{u:.0} µs")
    }
}

fn kb(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{:.0} KB", bytes as f64 / 1024.0)
    }
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces: count fields after its `)`.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7)?.parse().ok())
        .unwrap_or(0)
}

/// One language's in-process figures.
struct Row {
    lang: &'static str,
    wasm: usize,
    cwasm: usize,
    compile: Duration,
    cache_load: Duration,
    job_median: Duration,
    job_p99: Duration,
    instantiation: Duration,
    call: Duration,
    faults: f64,
    fuel: u64,
    reuse_median: Duration,
}

/// A sandbox that allows reuse, for `plugin` (copied with a manifest asking
/// for `reuse_jobs` into `dir`).
fn reusing(dir: &Path, path: &Path, lang: &str, version: &str, reuse: u32) -> PathBuf {
    let to = dir.join(path.file_name().unwrap());
    std::fs::copy(path, &to).unwrap();
    std::fs::write(
        to.with_extension("toml"),
        format!("name = \"textcase-{lang}\"\nversion = \"{version}\"\n[instances]\nreuse_jobs = {reuse}\n"),
    )
    .unwrap();
    to
}

fn measure(lang: &'static str, path: &Path) -> Row {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = kiln_integration_tests::config(Limits::default());
    config.caps = Caps {
        reuse_jobs: Some(REUSE),
        ..Caps::default()
    };
    let sandbox = Sandbox::new(config).unwrap();
    let engine = sandbox.engine();
    let wasm = std::fs::read(path).unwrap();

    let mut compiles = Vec::new();
    let mut cwasm = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let bytes = engine.precompile_component(black_box(&wasm)).unwrap();
        compiles.push(t.elapsed());
        cwasm = bytes.len();
    }

    let dir = tempfile::tempdir().unwrap();
    let cache = ComponentCache::new(
        engine,
        &CacheConfig {
            dir: Some(dir.path().to_path_buf()),
            baked_dir: None,
        },
    );
    cache.load(engine, path, &wasm).unwrap();
    let loads: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let (_, state) = cache.load(engine, path, black_box(&wasm)).unwrap();
            assert!(state.is_hit());
            t.elapsed()
        })
        .collect();

    let plugin = rt.block_on(sandbox.load_file(path)).unwrap();
    let job = ctx("bench", &[("mode", "upper")]);
    let text = job_text(BYTES);
    let expected = text.to_uppercase();
    let mut fuel = 0;
    for _ in 0..20 {
        let run = rt.block_on(plugin.process(&job, &text));
        assert_eq!(run.result.unwrap().output, expected, "{lang}");
        fuel = run.fuel_used;
    }
    let faults_before = minor_faults();
    let mut jobs = Vec::new();
    let mut instantiations = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let run = rt.block_on(plugin.process(&job, black_box(&text)));
        jobs.push(t.elapsed());
        instantiations.push(run.instantiation);
        calls.push(run.duration.saturating_sub(run.instantiation));
        black_box(run.result.unwrap());
    }
    let faults = (minor_faults() - faults_before) as f64 / 300.0;

    let version = plugin.version().to_string();
    drop(plugin);
    let warm = reusing(dir.path(), path, lang, &version, REUSE);
    let plugin = rt.block_on(sandbox.load_file(&warm)).unwrap();
    let reused: Vec<Duration> = (0..1000)
        .map(|_| {
            let run = rt.block_on(plugin.process(&job, black_box(&text)));
            assert_eq!(run.result.unwrap().output, expected, "{lang}");
            run.duration
        })
        .collect();

    Row {
        lang,
        wasm: wasm.len(),
        cwasm,
        compile: median(compiles),
        cache_load: median(loads),
        job_median: median(jobs.clone()),
        job_p99: percentile(jobs, 0.99),
        instantiation: median(instantiations),
        call: median(calls),
        faults,
        fuel,
        reuse_median: median(reused),
    }
}

/// A golden value: a string, or `{"repeat", "times", "then"?}`.
fn golden_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let unit = o["repeat"].as_str().unwrap();
            let times = usize::try_from(o["times"].as_u64().unwrap()).unwrap();
            let then = o.get("then").and_then(Value::as_str).unwrap_or("");
            let mut s = unit.repeat(times);
            s.push_str(then);
            s
        }
        other => panic!("bad golden value {other}"),
    }
}

/// Every row of the golden table in every mode, with `lang`'s documented
/// differences: (input, mode, expected output).
fn golden_cases(lang: &str) -> Vec<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/golden/textcase.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let diffs = &g["runtime_differences"][lang];
    let mut cases = Vec::new();
    for row in g["rows"].as_array().unwrap() {
        let name = row["name"].as_str().unwrap();
        for mode in g["modes"].as_array().unwrap() {
            let mode = mode.as_str().unwrap();
            let expected = diffs[name][mode]
                .as_str()
                .map_or_else(|| golden_text(&row["expected"][mode]), str::to_owned);
            cases.push((golden_text(&row["input"]), mode.to_owned(), expected));
        }
    }
    cases
}

/// A jobs file for `kiln run --jobs` and the expected output of each job.
struct Jobs {
    path: PathBuf,
    expected: BTreeMap<String, String>,
}

impl Jobs {
    /// `cases` (input, mode, expected output) for `textcase-<lang>`, written
    /// to `path`.
    fn write(path: PathBuf, lang: &str, cases: &[(String, String, String)]) -> Self {
        let mut body = String::new();
        let mut expected = BTreeMap::new();
        for (i, (input, mode, output)) in cases.iter().enumerate() {
            let id = format!("job-{i}");
            let job = json!({
                "job_id": id,
                "plugin": format!("textcase-{lang}"),
                "input": input,
                "config": {"mode": mode},
            });
            body.push_str(&job.to_string());
            body.push('\n');
            expected.insert(id, output.clone());
        }
        std::fs::write(&path, body).unwrap();
        Self { path, expected }
    }
}

/// One `kiln run --jobs` set-up: a plugins directory holding only
/// `textcase-<lang>` (with a reuse manifest if asked), its warm cache, and
/// two jobs files: the timed one, `count` jobs of 200 B in mode `upper`
/// (the "textcase at 200 B"), and the golden one, every row of the
/// golden table in every mode, three times over (so that a reused instance
/// serves rows after other rows), which is checked but not timed.
struct Pipeline {
    dir: tempfile::TempDir,
    config: PathBuf,
    timed: Jobs,
    golden: Jobs,
}

impl Pipeline {
    fn new(lang: &str, path: &Path, version: &str, reuse: u32, count: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        if reuse > 1 {
            reusing(&plugins, path, lang, version, reuse);
        } else {
            std::fs::copy(path, plugins.join(path.file_name().unwrap())).unwrap();
        }
        let config = dir.path().join("kiln.toml");
        std::fs::write(
            &config,
            format!(
                "plugins_dir = {:?}\n[sandbox.caps]\nreuse_jobs = {REUSE}\n[sandbox.cache]\ndir = {:?}\n",
                plugins.display().to_string(),
                dir.path().join("cache").display().to_string()
            ),
        )
        .unwrap();
        let text = job_text(BYTES);
        let upper = (text.clone(), "upper".to_owned(), text.to_uppercase());
        let timed = Jobs::write(dir.path().join("timed.jsonl"), lang, &vec![upper; count]);
        let golden = golden_cases(lang);
        let golden = Jobs::write(
            dir.path().join("golden.jsonl"),
            lang,
            &[golden.clone(), golden.clone(), golden].concat(),
        );
        let this = Self {
            dir,
            config,
            timed,
            golden,
        };
        // Warm the cache.
        let out = this.kiln().arg("plugins").output().unwrap();
        assert!(out.status.success(), "kiln plugins failed for {lang}");
        this
    }

    fn kiln(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-under-test"));
        cmd.arg("--config-file")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    /// One run: kiln's jobs/s and the failed jobs, after checking every
    /// reply (a failed job is counted and its error printed, not fatal: a
    /// language's failures are a finding for the table).
    fn run(&self, jobs: &Jobs, what: &str) -> (f64, usize) {
        let replies = self.dir.path().join("replies.jsonl");
        let out = self
            .kiln()
            .arg("run")
            .arg("--jobs")
            .arg(&jobs.path)
            .arg("--out")
            .arg(&replies)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = std::fs::read_to_string(&replies).unwrap();
        let mut seen = 0;
        let mut failed = 0;
        for line in text.lines() {
            let reply: Value = serde_json::from_str(line).unwrap();
            let id = reply["job_id"].as_str().unwrap();
            if reply.get("error").is_some_and(|e| !e.is_null()) {
                if failed == 0 {
                    eprintln!("{what}: a job failed: {reply}");
                }
                failed += 1;
            } else {
                assert_eq!(
                    reply["output"].as_str(),
                    Some(jobs.expected[id].as_str()),
                    "{what}: {reply}"
                );
            }
            seen += 1;
        }
        assert_eq!(seen, jobs.expected.len(), "{what}: every job answered");
        assert!(
            out.status.success() || failed > 0,
            "kiln run failed for {what}: {stderr}"
        );
        // "kiln: 2000 jobs in 0.512 s (3906 jobs/s), ok: 2000, ..."
        let rate = stderr
            .lines()
            .find_map(|l| {
                let start = l.find(" (")? + 2;
                let end = l.find(" jobs/s)")?;
                l.starts_with("kiln: ")
                    .then(|| l[start..end].parse().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no summary line from kiln run for {what}: {stderr}"));
        (rate, failed)
    }
}

/// The small Rust and C plugins of a worker's memory baseline (with
/// `textcase-c`, ten).
const SMALL: [&str; 9] = [
    "enrich",
    "markdown",
    "reverse",
    "textcase-rust",
    "uppercase",
    "wordcount",
    "versioned-1-0",
    "versioned-1-1",
    "http-probe",
];

/// A `kiln.toml` for `plugins` with the cache in `cache`.
fn worker_config(dir: &Path, plugins: &Path, cache: &Path) -> PathBuf {
    let config = dir.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "plugins_dir = {:?}\n[sandbox.cache]\ndir = {:?}\n",
            plugins.display().to_string(),
            cache.display().to_string()
        ),
    )
    .unwrap();
    config
}

/// Resident memory of a process, in bytes: (`VmRSS`, `RssAnon`, `RssFile`).
fn rss_of(pid: u32) -> (usize, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> usize {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

/// A worker's idle resident memory holding the small plugins and
/// `heavy`: `kiln run --jobs <fifo>` once its plugins are loaded and it has
/// run one `textcase` job per language it holds, then idles on the FIFO.
fn idle_rss(cache: &Path, heavy: &[(&str, &Path)]) -> (usize, usize, usize) {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let mut all: Vec<PathBuf> = SMALL
        .iter()
        .map(|c| kiln_integration_tests::artifact(c))
        .collect();
    all.push(textcase_artifact("c"));
    all.extend(heavy.iter().map(|(_, p)| p.to_path_buf()));
    for p in &all {
        std::fs::copy(p, plugins.join(p.file_name().unwrap())).unwrap();
    }
    let config = worker_config(dir.path(), &plugins, cache);
    let kiln = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-under-test"));
        cmd.arg("--config-file")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    };
    // Warm the cache (compiles only on the first call for a plugin).
    assert!(kiln().arg("plugins").output().unwrap().status.success());
    let fifo = dir.path().join("jobs.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut child = kiln()
        .args(["run", "--concurrency", "2", "--jobs"])
        .arg(&fifo)
        .arg("--out")
        .arg(dir.path().join("replies.jsonl"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Opening blocks until kiln opens its end: its plugins are loaded.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let text = job_text(BYTES);
    let mut langs = vec!["rust", "c"];
    langs.extend(heavy.iter().map(|(l, _)| *l));
    for lang in langs {
        let job = json!({
            "job_id": format!("rss-{lang}"),
            "plugin": format!("textcase-{lang}"),
            "input": text,
            "config": {"mode": "upper"},
        });
        writeln!(writer, "{job}").unwrap();
    }
    writer.flush().unwrap();
    // The jobs take milliseconds; then the worker idles (its epoch ticker
    // parks after 10 ms with no store).
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_of(child.id());
    drop(writer);
    assert!(child.wait().unwrap().success());
    rss
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too,
    // where a table is not wanted.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = std::env::var("KILN_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut langs = Vec::new();
    for lang in TEXTCASE_LANGUAGES {
        let path = textcase_artifact(lang);
        if path.is_file() {
            langs.push((lang, path));
        } else {
            eprintln!(
                "skipping {lang}: {} is missing (cargo xtask plugins --all)",
                path.display()
            );
        }
    }
    let mut rows = Vec::new();
    for (lang, path) in &langs {
        eprintln!("measuring textcase-{lang} in process");
        rows.push(measure(lang, path));
    }

    println!(
        "| language | .wasm | .cwasm | compile | cache load | fresh job, 200 B (median / p99) | of which instantiation / call | minor faults per job | fuel per job | warm-instance job (median) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} ({} B) | {} | {} | {} | {} / {} | {} / {} | {:.0} | {} | {} |",
            r.lang,
            kb(r.wasm),
            r.wasm,
            kb(r.cwasm),
            ms(r.compile),
            us(r.cache_load),
            us(r.job_median),
            us(r.job_p99),
            us(r.instantiation),
            us(r.call),
            r.faults,
            r.fuel,
            us(r.reuse_median),
        );
    }
    println!();
    println!();

    // A worker's idle memory: the small plugins alone, then with each heavy
    // one, then with all of them; each the median of `rounds` starts.
    let cache = tempfile::tempdir().unwrap();
    let heavy: Vec<(&str, &Path)> = langs
        .iter()
        .filter(|(l, _)| !matches!(*l, "rust" | "c"))
        .map(|(l, p)| (*l, p.as_path()))
        .collect();
    let mut sets: Vec<(String, Vec<(&str, &Path)>)> = vec![("10 small".to_owned(), Vec::new())];
    for h in &heavy {
        sets.push((format!("10 small + {}", h.0), vec![*h]));
    }
    if heavy.len() > 1 {
        sets.push(("10 small + all heavy".to_owned(), heavy.clone()));
    }
    let mut rss_rows = Vec::new();
    for (name, set) in &sets {
        eprintln!("measuring idle RSS: {name}");
        let mut samples: Vec<(usize, usize, usize)> =
            (0..rounds).map(|_| idle_rss(cache.path(), set)).collect();
        samples.sort();
        rss_rows.push((name.clone(), samples[samples.len() / 2]));
    }
    println!("| idle worker, one job per `textcase` | VmRSS | RssAnon | RssFile |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, (rss, anon, file)) in &rss_rows {
        println!("| {name} | {} | {} | {} |", kb(*rss), kb(*anon), kb(*file));
    }
    println!();

    // The pipeline runs: fresh and reuse for every language, side by side
    // in each round.
    let mut runs: Vec<(&str, &str, Pipeline, Vec<f64>, usize)> = Vec::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (lang, path) in &langs {
        let sandbox = kiln_integration_tests::sandbox(Limits::default());
        let version = rt
            .block_on(sandbox.load_file(path))
            .unwrap()
            .version()
            .to_string();
        let heavy = !matches!(*lang, "rust" | "c");
        let fresh_jobs = if heavy { 3_000 } else { 20_000 };
        runs.push((
            lang,
            "fresh",
            Pipeline::new(lang, path, &version, 1, fresh_jobs),
            Vec::new(),
            0,
        ));
        runs.push((
            lang,
            "reuse",
            Pipeline::new(lang, path, &version, REUSE, 20_000),
            Vec::new(),
            0,
        ));
    }
    // Every row of the golden table, in every mode, through each set-up
    // first: checked, not timed (a 48 KB row among 200 B jobs would time
    // the row, not the language's per-job cost).
    for (lang, kind, pipeline, _, failures) in &mut runs {
        let (_, failed) = pipeline.run(&pipeline.golden, &format!("{lang} {kind} golden"));
        eprintln!("golden table: textcase-{lang} {kind}: {failed} failed");
        *failures += failed;
    }
    for round in 0..rounds {
        for (lang, kind, pipeline, rates, failures) in &mut runs {
            let (rate, failed) = pipeline.run(&pipeline.timed, &format!("{lang} {kind}"));
            eprintln!("round {round}: textcase-{lang} {kind}: {rate:.0} jobs/s, {failed} failed");
            rates.push(rate);
            *failures += failed;
        }
    }
    let rate = |lang: &str, kind: &str| -> f64 {
        runs.iter()
            .find(|(l, k, ..)| *l == lang && *k == kind)
            .map_or(0.0, |(.., rates, _)| {
                let mut r = rates.clone();
                r.sort_by(f64::total_cmp);
                r[r.len() / 2]
            })
    };
    let rust_fresh = rate("rust", "fresh");
    let failures = |lang: &str, kind: &str| -> usize {
        runs.iter()
            .find(|(l, k, ..)| *l == lang && *k == kind)
            .map_or(0, |(.., f)| *f)
    };
    let base = rss_rows.first().map_or(0, |(_, r)| r.0);
    let added = |lang: &str| -> String {
        rss_rows
            .iter()
            .find(|(n, _)| *n == format!("10 small + {lang}"))
            .map_or_else(
                || "in the 10 small".to_owned(),
                |(_, r)| format!("+{:.1} MB", (r.0 as f64 - base as f64) / (1 << 20) as f64),
            )
    };
    println!(
        "| language | fresh jobs/s | vs Rust fresh | reuse_jobs = {REUSE}: jobs/s | vs Rust fresh | per job, fresh / reuse | RSS added (idle worker) | cold compile | failed jobs, fresh / reuse | rounds |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (r, (lang, _)) in rows.iter().zip(&langs) {
        let (fresh, reuse) = (rate(lang, "fresh"), rate(lang, "reuse"));
        println!(
            "| {lang} | {fresh:.0} | 1/{:.1} | {reuse:.0} | 1/{:.1} | {} / {} | {} | {} | {} / {} | {rounds} |",
            rust_fresh / fresh,
            rust_fresh / reuse,
            us(r.job_median),
            us(r.reuse_median),
            added(lang),
            ms(r.compile),
            failures(lang, "fresh"),
            failures(lang, "reuse"),
        );
    }
}
