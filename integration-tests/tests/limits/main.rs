//! Every limit with its hostile plugin: the host survives, reports the
//! right typed error within the deadline plus a small slack, and the next
//! job still succeeds.
//!
//! A test binary of its own whose tests run one at a time (cargo runs test
//! binaries one after another), so deadline figures are not skewed by
//! unrelated tests competing for the two cores.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use kiln_integration_tests::{Captured, ctx, load, sandbox, serial};
use kiln_sandbox::{JobFailure, Limits, Plugin, Sandbox};

/// Scheduling slack allowed past a deadline on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(60);

/// The deadline of [`limits`].
const DEADLINE: Duration = Duration::from_millis(100);

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

/// A job: its config pairs and its input.
type Job = (&'static [(&'static str, &'static str)], &'static str);

/// What the job after the failing one gets, and its output.
enum Next {
    /// `benign`, then `uppercase` (see [`next_job_succeeds`]).
    Benign,
    /// This job, with this output.
    Job(Job, &'static str),
}

/// Runs `job` on `plugin` in a sandbox with `limits`, and checks that it
/// fails with `expected` (see [`fits`]) within `within`; that a timeout
/// came no sooner than its deadline, a fuel failure used its whole budget
/// and a refused input none; and that the same plugin then serves `next`.
async fn check(
    limits: Limits,
    plugin: &str,
    (config, input): Job,
    expected: JobFailure,
    within: Duration,
    next: Next,
) {
    let _serial = serial().await;
    let sandbox = sandbox(limits);
    let hostile = load(&sandbox, plugin).await;
    let run = hostile.process(&ctx(plugin, config), input).await;
    match &run.result {
        Err(failure) => assert!(
            fits(failure, &expected),
            "expected {expected:?}, got {failure:?}"
        ),
        Ok(ok) => panic!("expected {expected:?}, got {ok:?}"),
    }
    assert!(run.duration < within, "{:?}", run.duration);
    match expected {
        JobFailure::Timeout { deadline_ms } => {
            assert!(
                run.duration >= Duration::from_millis(deadline_ms),
                "{:?}",
                run.duration
            );
        }
        JobFailure::FuelExhausted { budget } => assert_eq!(run.fuel_used, budget),
        JobFailure::InputTooLarge { .. } => assert_eq!(run.fuel_used, 0),
        _ => {}
    }
    match next {
        Next::Benign => next_job_succeeds(&sandbox, &hostile).await,
        Next::Job((config, input), output) => {
            let run = hostile.process(&ctx("next", config), input).await;
            assert_eq!(run.result.unwrap().output, output, "{plugin}");
        }
    }
}

/// `got` is `expected`, except that a memory-limit failure's `requested`
/// only has to pass its cap (how far the guest got varies), and a trap's
/// `message` only has to contain the expected one.
fn fits(got: &JobFailure, expected: &JobFailure) -> bool {
    use JobFailure::{MemoryLimit, Trap};
    match (got, expected) {
        (MemoryLimit { requested, cap }, MemoryLimit { cap: want, .. }) => {
            cap == want && requested > cap
        }
        (
            Trap { code, message },
            Trap {
                code: want,
                message: part,
            },
        ) => code == want && message.contains(part.as_str()),
        _ => got == expected,
    }
}

/// One test per row: `name: limits, plugin, (job config, input) => the
/// failure, within, the next job;`.
macro_rules! limit_tests {
    ($($name:ident: $limits:expr, $plugin:literal, $job:expr => $expected:expr, $within:expr, $next:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            check($limits, $plugin, $job, $expected, $within, $next).await;
        }
    )*};
}

fn trap(code: &str, message: &str) -> JobFailure {
    JobFailure::Trap {
        code: code.into(),
        message: message.into(),
    }
}

// Each limit gets its own one-line case.
limit_tests! {
    infinite_loop_times_out: limits(), "hostile-spin", (&[], "x") => JobFailure::Timeout { deadline_ms: 100 }, DEADLINE + SLACK, Next::Benign;
    fuel_runs_out: Limits { fuel: 50_000_000, timeout_ms: 10_000, ..limits() }, "hostile-spin", (&[], "x") => JobFailure::FuelExhausted { budget: 50_000_000 }, Duration::from_secs(10), Next::Benign;
    memory_bomb_is_a_memory_limit_not_a_trap: limits(), "hostile-membomb", (&[], "x") => JobFailure::MemoryLimit { requested: 0, cap: 32 << 20 }, DEADLINE + SLACK, Next::Benign;
    unbounded_recursion_traps_with_stack_overflow: limits(), "hostile-recurse", (&[], "x") => trap("stack-overflow", ""), DEADLINE + SLACK, Next::Benign;
    panic_traps_with_the_guest_message: limits(), "hostile-panic", (&[], "x") => trap("unreachable", "plugin panicked on purpose"), DEADLINE + SLACK, Next::Benign;
    huge_output_is_refused_and_small_output_passes: Limits { memory_bytes: 64 << 20, ..limits() }, "hostile-hugeout", (&[("bytes", "4000000")], "x") => JobFailure::OutputTooLarge { size: 4_000_000, limit: 1 << 20 }, DEADLINE + SLACK, Next::Job((&[("bytes", "10")], "x"), "xxxxxxxxxx");
    input_over_the_limit_is_refused_before_running: Limits { max_input_bytes: 8, ..limits() }, "uppercase", (&[], "123456789") => JobFailure::InputTooLarge { size: 9, limit: 8 }, DEADLINE + SLACK, Next::Job((&[], "12345678"), "12345678");
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
