//! What one allowed outgoing HTTP request costs a job: `http-probe` jobs
//! that fetch a small body from a loopback server (started here, in the
//! same process), against `http-probe` jobs with no URL (no request), in one
//! run, interleaved in rounds so machine noise hits both alike.
//!
//! A plain harness (not criterion): it reports the process's CPU time per
//! job (every thread's, from `/proc/self/task/*/schedstat`; it includes the
//! loopback server's share, which a real service would pay elsewhere) and the wall
//! time per job. Run with
//! `cargo bench --workspace --bench http`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kiln_integration_tests::{artifact, config, ctx};
use kiln_sandbox::{Limits, Sandbox};

const JOBS_PER_ROUND: usize = 500;
const ROUNDS: usize = 10;

/// CPU time of this process's live threads, in nanoseconds: the sum of
/// the first field of `/proc/self/task/*/schedstat` (finer than the
/// clock ticks of `/proc/self/stat`).
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        ROUNDS
    } else {
        1
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let grant = format!("http://127.0.0.1:{}", addr.port());
        let mut config = config(Limits::default());
        config.caps.outbound = vec![grant.parse().unwrap()];
        let sandbox = Sandbox::new(config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("http_probe.wasm");
        std::fs::copy(artifact("http-probe"), &wasm).unwrap();
        std::fs::write(
            wasm.with_extension("toml"),
            format!(
                "name = \"http-probe\"\nversion = \"1.0.0\"\n[grants]\noutbound = [\"{grant}\"]\n"
            ),
        )
        .unwrap();
        let plugin = sandbox.load_file(&wasm).await.unwrap();
        let url = format!("{grant}/hello");

        let (mut with, mut without) = (
            (Duration::ZERO, Duration::ZERO),
            (Duration::ZERO, Duration::ZERO),
        );
        for _ in 0..rounds {
            for (input, total) in [(url.as_str(), &mut with), ("", &mut without)] {
                let (cpu, wall) = (cpu_time(), Instant::now());
                for i in 0..JOBS_PER_ROUND {
                    let run = plugin.process(&ctx(&format!("b{i}"), &[]), input).await;
                    let out = run.result.unwrap().output;
                    assert_eq!(out.is_empty(), input.is_empty(), "{out}");
                }
                total.0 += cpu_time() - cpu;
                total.1 += wall.elapsed();
            }
        }
        let jobs = (rounds * JOBS_PER_ROUND) as u32;
        let per = |d: Duration| d / jobs;
        println!("jobs per variant: {jobs} ({rounds} rounds of {JOBS_PER_ROUND}, interleaved)");
        println!(
            "no request:      cpu {:>9.1?}/job  wall {:>9.1?}/job",
            per(without.0),
            per(without.1)
        );
        println!(
            "one GET request: cpu {:>9.1?}/job  wall {:>9.1?}/job",
            per(with.0),
            per(with.1)
        );
        println!(
            "cost of the request: cpu {:.1?}/job, wall {:.1?}/job",
            per(with.0.saturating_sub(without.0)),
            per(with.1.saturating_sub(without.1))
        );
    });
}
