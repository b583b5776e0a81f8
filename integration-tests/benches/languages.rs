//! The per-language table of docs/PLUGINS.md: `textcase` in Rust, C,
//! JavaScript, Python and Go, measured in one run on one machine.
//!
//! For each language present (see `cargo xtask plugins --all`):
//!
//! - `.wasm` and `.cwasm` bytes (the component, and what wasmtime compiles
//!   it to: `Engine::precompile_component`);
//! - compile time (median of 3) and verified cache-load time (median of 20),
//!   measured as `benches/sandbox.rs` measures them;
//! - a whole job on a fresh instance at 200 B (`Plugin::process`, mode
//!   `upper`, fuel and epoch on): median and p99 of 300 after 20 warm-ups,
//!   with the fuel one job burns;
//! - jobs/s through the embedded pipeline: `kiln run --jobs` on 2,000 jobs of
//!   200 B (the records `cargo xtask jobs 2000 200 textcase-<lang>` writes,
//!   with `mode=upper`), on a warm cache, as kiln's own summary line reports.
//!
//! Run with `cargo bench -p kiln-integration-tests --bench languages`; it
//! prints a Markdown table.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_integration_tests::{TEXTCASE_LANGUAGES, ctx, job_text, textcase_artifact};
use kiln_sandbox::{CacheConfig, ComponentCache, Limits};

const JOBS: usize = 2_000;
const BYTES: usize = 200;

fn median(mut v: Vec<Duration>) -> Duration {
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

/// One language's row.
struct Row {
    lang: &'static str,
    wasm: usize,
    cwasm: usize,
    compile: Duration,
    cache_load: Duration,
    job_median: Duration,
    job_p99: Duration,
    fuel: u64,
    jobs_per_s: String,
}

fn measure(lang: &'static str, path: &Path) -> Row {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = kiln_integration_tests::sandbox(Limits::default());
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
    let jobs: Vec<Duration> = (0..300)
        .map(|_| {
            let t = Instant::now();
            let run = rt.block_on(plugin.process(&job, black_box(&text)));
            black_box(run.result.unwrap());
            t.elapsed()
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
        fuel,
        jobs_per_s: pipeline(lang, path),
    }
}

/// `kiln run --jobs` on JOBS jobs of BYTES bytes; kiln's own summary line
/// gives the rate. The plugin is alone in its directory, the cache warm.
fn pipeline(lang: &str, path: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(path, plugins.join(format!("textcase-{lang}.wasm"))).unwrap();
    let cache = dir.path().join("cache");
    let kiln = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-under-test"));
        cmd.arg("--plugins")
            .arg(&plugins)
            .arg("--cache")
            .arg(&cache)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    };
    let warm = kiln().arg("plugins").output().unwrap();
    assert!(warm.status.success(), "kiln plugins failed for {lang}");
    let text = job_text(BYTES);
    let mut body = String::new();
    for i in 0..JOBS {
        let job = serde_json::json!({
            "job_id": format!("job-{i}"),
            "plugin": format!("textcase-{lang}"),
            "input": text,
            "config": {"mode": "upper"},
        });
        body.push_str(&job.to_string());
        body.push('\n');
    }
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(&jobs, body).unwrap();
    let out = kiln()
        .arg("run")
        .arg("--jobs")
        .arg(&jobs)
        .arg("--out")
        .arg(dir.path().join("replies.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln run failed for {lang}: {stderr}");
    // "kiln: 2000 jobs in 0.512 s (3906 jobs/s), ok: 2000, ..."
    stderr
        .lines()
        .find_map(|l| {
            let start = l.find(" (")? + 2;
            let end = l.find(" jobs/s)")?;
            l.starts_with("kiln: ").then(|| l[start..end].to_owned())
        })
        .unwrap_or_else(|| panic!("no summary line from kiln run for {lang}: {stderr}"))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too,
    // where a table is not wanted.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut rows = Vec::new();
    for lang in TEXTCASE_LANGUAGES {
        let path = textcase_artifact(lang);
        if !path.is_file() {
            eprintln!(
                "skipping {lang}: {} is missing (cargo xtask plugins --all)",
                path.display()
            );
            continue;
        }
        eprintln!("measuring textcase-{lang}");
        rows.push(measure(lang, &path));
    }
    println!(
        "| language | .wasm | .cwasm | compile | cache load | fresh instance per job, 200 B (median / p99) | fuel per job | jobs/s, embedded ({JOBS} × {BYTES} B) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} ({} B) | {} | {} | {} | {} / {} | {} | {} |",
            r.lang,
            kb(r.wasm),
            r.wasm,
            kb(r.cwasm),
            ms(r.compile),
            us(r.cache_load),
            us(r.job_median),
            us(r.job_p99),
            r.fuel,
            r.jobs_per_s
        );
    }
}
