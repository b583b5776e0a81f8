//! Deadline overshoot: how far past a 100 ms deadline an infinite loop is
//! stopped, alone and with 8 spinning jobs at once on a 2-thread runtime;
//! and where wasm should run: on the tokio workers (epoch callbacks yield to
//! the runtime) or on tokio's blocking pool (each job holds an OS thread,
//! the kernel time-slices them). For both: jobs/s of short jobs, and the
//! overshoot of 8 spinners.
//!
//! A plain harness (not criterion): the figure is a distribution of
//! overshoots, not a throughput. Run with
//! `cargo bench -p kiln-integration-tests --bench deadline`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kiln_integration_tests::{ctx, load, sandbox};
use kiln_sandbox::{JobFailure, Limits};

const DEADLINE_MS: u64 = 100;
const ROUNDS: usize = 20;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Where a job runs.
#[derive(Clone, Copy, Debug)]
enum Executor {
    /// A tokio task on the runtime's workers.
    Tokio,
    /// `spawn_blocking` + `block_on`: one OS thread per job.
    Blocking,
}

async fn run_on(
    executor: Executor,
    plugin: std::sync::Arc<kiln_sandbox::Plugin>,
    id: String,
    input: &'static str,
) -> kiln_sandbox::SingleRun {
    match executor {
        Executor::Tokio => tokio::spawn(async move { plugin.process(&ctx(&id, &[]), input).await })
            .await
            .unwrap(),
        Executor::Blocking => {
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                handle.block_on(plugin.process(&ctx(&id, &[]), input))
            })
            .await
            .unwrap()
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = sandbox(Limits {
        timeout_ms: DEADLINE_MS,
        fuel: u64::MAX,
        ..Limits::default()
    });
    let spin = rt.block_on(load(&sandbox, "hostile-spin"));
    println!("deadline {DEADLINE_MS} ms, {ROUNDS} rounds, 2 runtime threads");
    let upper = rt.block_on(load(&sandbox, "uppercase"));
    for executor in [Executor::Tokio, Executor::Blocking] {
        // Throughput: 20,000 short jobs, 2 at a time per core.
        let jobs = 20_000;
        let started = std::time::Instant::now();
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..jobs {
                if set.len() >= 4 {
                    set.join_next().await.unwrap().unwrap();
                }
                let upper = upper.clone();
                set.spawn(async move {
                    run_on(executor, upper, format!("t{i}"), "hello world")
                        .await
                        .result
                        .unwrap()
                });
            }
            while set.join_next().await.is_some() {}
        });
        let rate = jobs as f64 / started.elapsed().as_secs_f64();
        // Overshoot of 8 spinners.
        let mut overshoots = Vec::new();
        for round in 0..ROUNDS {
            let runs = rt.block_on(async {
                let jobs: Vec<_> = (0..8)
                    .map(|i| {
                        tokio::spawn(run_on(executor, spin.clone(), format!("x{round}-{i}"), "x"))
                    })
                    .collect();
                let mut runs = Vec::new();
                for job in jobs {
                    runs.push(job.await.unwrap());
                }
                runs
            });
            for run in runs {
                assert_eq!(
                    run.result,
                    Err(JobFailure::Timeout {
                        deadline_ms: DEADLINE_MS
                    })
                );
                overshoots.push(
                    run.duration
                        .saturating_sub(Duration::from_millis(DEADLINE_MS)),
                );
            }
        }
        overshoots.sort();
        println!(
            "{executor:?}: {rate:.0} short jobs/s; 8 spinning: overshoot p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&overshoots, 0.5).as_secs_f64() * 1e3,
            percentile(&overshoots, 0.99).as_secs_f64() * 1e3,
            overshoots.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    for concurrent in [1, 8] {
        let mut overshoots = Vec::new();
        for round in 0..ROUNDS {
            let runs = rt.block_on(async {
                let jobs: Vec<_> = (0..concurrent)
                    .map(|i| {
                        let spin = spin.clone();
                        tokio::spawn(async move {
                            spin.process(&ctx(&format!("r{round}-{i}"), &[]), "x").await
                        })
                    })
                    .collect();
                let mut runs = Vec::new();
                for job in jobs {
                    runs.push(job.await.unwrap());
                }
                runs
            });
            for run in runs {
                assert_eq!(
                    run.result,
                    Err(JobFailure::Timeout {
                        deadline_ms: DEADLINE_MS
                    })
                );
                overshoots.push(
                    run.duration
                        .saturating_sub(Duration::from_millis(DEADLINE_MS)),
                );
            }
        }
        overshoots.sort();
        println!(
            "{concurrent} spinning: overshoot p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} jobs)",
            percentile(&overshoots, 0.5).as_secs_f64() * 1e3,
            percentile(&overshoots, 0.99).as_secs_f64() * 1e3,
            overshoots.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            overshoots.len()
        );
    }
}
