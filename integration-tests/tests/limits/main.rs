//! Every limit with its hostile plugin: the host survives, reports the
//! right typed error within the deadline plus a small slack, and the next
//! job still succeeds.
//!
//! A test binary of its own whose tests run one at a time (cargo runs test
//! binaries one after another), so deadline figures are not skewed by
//! unrelated tests competing for the two cores.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use kiln_integration_tests::{Captured, ctx, load, sandbox};
use kiln_sandbox::{JobFailure, Limits, Plugin, Sandbox};
use tokio::sync::{Mutex, MutexGuard};

/// Scheduling slack allowed past a deadline on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(60);

/// Serializes the tests of this binary (each has its own runtime, so the
/// lock is a runtime-agnostic async one).
async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

fn limits() -> Limits {
    Limits {
        timeout_ms: 100,
        memory_bytes: 32 << 20,
        max_output_bytes: 1 << 20,
        ..Limits::default()
    }
}

/// After a hostile job, the same plugin serves the next job (hostile
/// plugins answer the input `benign` normally), and so do the others.
async fn next_job_succeeds(sandbox: &Sandbox, hostile: &Plugin) {
    let run = hostile.process(&ctx("next", &[]), "benign").await;
    assert_eq!(run.result.unwrap().output, "benign", "{}", hostile.name());
    let up = load(sandbox, "uppercase").await;
    let run = up.process(&ctx("after", &[]), "still alive").await;
    assert_eq!(run.result.unwrap().output, "STILL ALIVE");
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_times_out() {
    let _serial = serial().await;
    let sandbox = sandbox(limits());
    let spin = load(&sandbox, "hostile-spin").await;
    let run = spin.process(&ctx("spin", &[]), "x").await;
    assert_eq!(run.result, Err(JobFailure::Timeout { deadline_ms: 100 }));
    assert!(
        run.duration >= Duration::from_millis(100),
        "{:?}",
        run.duration
    );
    assert!(
        run.duration < Duration::from_millis(100) + SLACK,
        "{:?}",
        run.duration
    );
    next_job_succeeds(&sandbox, &spin).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_may_shorten_its_deadline_but_not_lengthen_it() {
    let _serial = serial().await;
    let sandbox = sandbox(limits());
    let spin = load(&sandbox, "hostile-spin").await;
    let mut shorter = ctx("short", &[]);
    shorter.timeout_ms = Some(30);
    assert_eq!(
        spin.process(&shorter, "x").await.result,
        Err(JobFailure::Timeout { deadline_ms: 30 })
    );
    let mut longer = ctx("long", &[]);
    longer.timeout_ms = Some(60_000);
    let started = Instant::now();
    assert_eq!(
        spin.process(&longer, "x").await.result,
        Err(JobFailure::Timeout { deadline_ms: 100 })
    );
    assert!(started.elapsed() < Duration::from_millis(100) + SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_spinning_jobs_all_stop_on_time() {
    let _serial = serial().await;
    let sandbox = sandbox(limits());
    let spin = load(&sandbox, "hostile-spin").await;
    let started = Instant::now();
    let jobs: Vec<_> = (0..8)
        .map(|i| {
            let spin = spin.clone();
            tokio::spawn(async move { spin.process(&ctx(&format!("spin-{i}"), &[]), "x").await })
        })
        .collect();
    for job in jobs {
        let run = job.await.unwrap();
        assert_eq!(run.result, Err(JobFailure::Timeout { deadline_ms: 100 }));
        // The deadline yields to tokio, so 8 spinners share 2 threads fairly.
        assert!(
            run.duration < Duration::from_millis(100) + SLACK * 2,
            "{:?}",
            run.duration
        );
    }
    assert!(started.elapsed() < Duration::from_millis(100) + SLACK * 2);
    next_job_succeeds(&sandbox, &spin).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spinning_job_does_not_block_others() {
    let _serial = serial().await;
    let sandbox = sandbox(Limits {
        timeout_ms: 1_000,
        fuel: u64::MAX,
        ..limits()
    });
    let spin = load(&sandbox, "hostile-spin").await;
    let up = load(&sandbox, "uppercase").await;
    let spinner = tokio::spawn(async move { spin.process(&ctx("spin", &[]), "x").await });
    // Even on one runtime thread's worth of room, short jobs pass the spinner.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    for i in 0..20 {
        let run = up.process(&ctx(&format!("u{i}"), &[]), "x").await;
        assert_eq!(run.result.unwrap().output, "X");
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        spinner.await.unwrap().result,
        Err(JobFailure::Timeout { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_runs_out() {
    let _serial = serial().await;
    let sandbox = sandbox(Limits {
        fuel: 50_000_000,
        timeout_ms: 10_000,
        ..limits()
    });
    let spin = load(&sandbox, "hostile-spin").await;
    let run = spin.process(&ctx("fuel", &[]), "x").await;
    assert_eq!(
        run.result,
        Err(JobFailure::FuelExhausted { budget: 50_000_000 })
    );
    assert_eq!(run.fuel_used, 50_000_000);
    next_job_succeeds(&sandbox, &spin).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_is_a_memory_limit_not_a_trap() {
    let _serial = serial().await;
    let sandbox = sandbox(limits());
    let bomb = load(&sandbox, "hostile-membomb").await;
    let run = bomb.process(&ctx("bomb", &[]), "x").await;
    match run.result {
        Err(JobFailure::MemoryLimit { requested, cap }) => {
            assert_eq!(cap, 32 << 20);
            assert!(requested > cap);
        }
        other => panic!("expected memory-limit, got {other:?}"),
    }
    next_job_succeeds(&sandbox, &bomb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_recursion_traps_with_stack_overflow() {
    let _serial = serial().await;
    let sandbox = sandbox(limits());
    let rec = load(&sandbox, "hostile-recurse").await;
    let run = rec.process(&ctx("rec", &[]), "x").await;
    match run.result {
        Err(JobFailure::Trap { code, .. }) => assert_eq!(code, "stack-overflow"),
        other => panic!("expected a stack-overflow trap, got {other:?}"),
    }
    next_job_succeeds(&sandbox, &rec).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn panic_traps_with_the_guest_message() {
    let _serial = serial().await;
    let sandbox = sandbox(limits());
    let p = load(&sandbox, "hostile-panic").await;
    let run = p.process(&ctx("panic", &[]), "x").await;
    match run.result {
        Err(JobFailure::Trap { code, message }) => {
            assert_eq!(code, "unreachable");
            assert!(message.contains("plugin panicked on purpose"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    next_job_succeeds(&sandbox, &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_output_is_refused_and_small_output_passes() {
    let _serial = serial().await;
    let sandbox = sandbox(Limits {
        memory_bytes: 64 << 20,
        ..limits()
    });
    let huge = load(&sandbox, "hostile-hugeout").await;
    let run = huge
        .process(&ctx("huge", &[("bytes", "4000000")]), "x")
        .await;
    assert_eq!(
        run.result,
        Err(JobFailure::OutputTooLarge {
            size: 4_000_000,
            limit: 1 << 20
        })
    );
    // The same plugin, next job, within the limit.
    let run = huge.process(&ctx("small", &[("bytes", "10")]), "x").await;
    assert_eq!(run.result.unwrap().output, "xxxxxxxxxx");
}

#[tokio::test(flavor = "multi_thread")]
async fn input_over_the_limit_is_refused_before_running() {
    let _serial = serial().await;
    let sandbox = sandbox(Limits {
        max_input_bytes: 8,
        ..limits()
    });
    let up = load(&sandbox, "uppercase").await;
    let run = up.process(&ctx("big", &[]), "123456789").await;
    assert_eq!(
        run.result,
        Err(JobFailure::InputTooLarge { size: 9, limit: 8 })
    );
    assert_eq!(run.fuel_used, 0);
}

// A current-thread runtime, so the thread-local log capture sees the job.
#[tokio::test(flavor = "current_thread")]
async fn log_flood_is_bounded_and_the_job_succeeds() {
    let _serial = serial().await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let sandbox = sandbox(Limits {
        timeout_ms: 10_000,
        ..limits()
    });
    let flood = load(&sandbox, "hostile-logflood").await;
    let started = Instant::now();
    let run = flood
        .process(&ctx("flood", &[("lines", "200000")]), "x")
        .await;
    assert_eq!(run.result.unwrap().output, "done");
    // Dropped lines cost almost nothing: 200k log calls plus 400k stdio
    // lines finish well inside the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let text = captured.text();
    let plugin_lines = text.lines().filter(|l| l.contains("kiln::plugin")).count();
    let markers = text
        .lines()
        .filter(|l| l.contains("log budget exhausted"))
        .count();
    let truncated = text
        .lines()
        .filter(|l| l.contains("guest output truncated"))
        .count();
    assert_eq!(markers, 1, "one marker for the host log");
    assert_eq!(truncated, 2, "one marker each for stdout and stderr");
    // At most 1,000 log lines or 64 KiB of them (about 650 lines of 100
    // bytes), plus what 16 KiB of stdout and of stderr hold.
    let limits = Limits::default();
    let most = limits.max_log_lines as usize + 2 * limits.max_stdio_bytes / 20 + 3;
    assert!((500..most).contains(&plugin_lines), "{plugin_lines} lines");
}

#[tokio::test(flavor = "multi_thread")]
async fn snooping_finds_nothing() {
    let _serial = serial().await;
    let sandbox = sandbox(limits());
    let snoop = load(&sandbox, "hostile-snoop").await;
    let run = snoop.process(&ctx("snoop", &[]), "x").await;
    let report: serde_json::Value = serde_json::from_str(&run.result.unwrap().output).unwrap();
    for attempt in ["file", "home", "tcp", "udp", "dns"] {
        let outcome = report[attempt].as_str().unwrap_or_default();
        assert!(
            outcome.starts_with("error"),
            "{attempt} was not denied: {report}"
        );
    }
    assert_eq!(report["env_count"], 0, "{report}");
}
