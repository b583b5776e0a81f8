//! Instruction counts of the per-job hot paths, with gungraun on valgrind's
//! callgrind: a fresh `uppercase` instance plus `process` at 200 B,
//! `decode_job`, `encode_reply_checked`, and `Pipeline::handle` for one job
//! end to end (no broker).
//!
//! Wall time on the shared VMs moves by 2-3x between sessions; the number of
//! instructions a job executes does not, so these counts are what CI checks
//! against `instructions-baseline.json` (`src/bin/instructions_check.rs`).
//!
//! What keeps the counts steady:
//! - Setup is not counted: callgrind collects only inside the benchmark
//!   function. The plugin is compiled once into a cache directory under
//!   `target/tmp` (by the first benchmark process: cranelift's code depends on
//!   the CPU features it detects, and valgrind's emulated CPU has fewer, so a
//!   natively compiled artifact would not match); every later process only
//!   deserializes it.
//! - Each benchmark's setup builds the sandbox, loads the plugin and runs a
//!   few warm-up jobs, so the measured job reuses a pool slot (the steady
//!   state of a worker) and nothing is done for the first time.
//! - Jobs run on a current-thread tokio runtime, in the benchmark's thread;
//!   callgrind counts only the benchmark function and what it calls on its
//!   own thread, so the epoch ticker's thread is not counted.
//! - Each function returns its inputs and outputs: their drops happen outside
//!   the measured call.
//!
//! Run with `cargo bench -p kiln-integration-tests --bench instructions`
//! (needs valgrind and `gungraun-runner` of the same version as the
//! `gungraun` crate; docs/BENCHMARKS.md has the whole procedure).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use gungraun::{library_benchmark, library_benchmark_group, main};
use kiln::config::KilnConfig;
use kiln::pipeline::Pipeline;
use kiln_integration_tests::{ctx, job_text};
use kiln_protocol::{
    DecodeLimits, Envelope, Handled, Job, JobError, Metadata, Payload, Reply, ReplyBody,
    RequestError, Success, decode_job, encode_reply_checked,
};
use kiln_sandbox::{JobContext, Limits, Plugin, Registry, Sandbox, SingleRun};
use tokio::runtime::Runtime;

/// The plugin every benchmark runs, and the size of its input.
const PLUGIN: &str = "uppercase";
const INPUT_BYTES: usize = 200;
/// Jobs run in setup before the measured one.
const WARM_UP_JOBS: usize = 3;

/// The writable cache tier of every benchmark process.
fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("instructions-cache")
}

/// The sandbox of every benchmark, over the cache in [`cache_dir`].
fn sandbox() -> Sandbox {
    let mut config = kiln_integration_tests::config(Limits::default());
    config.cache.dir = Some(cache_dir());
    // Each memory slot reserves its full address range (4 GiB and guards),
    // and valgrind's address space is far smaller than the terabytes a
    // full-size pool (32 here, 128 by default) reserves. Jobs here run one at a time; a slot's reuse, the path
    // every steady-state job takes, is the same in a pool of two.
    config.pool.max_instances = 2;
    config.pool.max_memories_per_component = 2;
    Sandbox::new(config).expect("sandbox builds")
}

/// A current-thread runtime, the sandbox, and the plugin, loaded from the
/// cache (the first benchmark process to run compiles it into the cache).
fn loaded() -> (Runtime, Sandbox, Arc<Plugin>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sandbox = sandbox();
    let plugin = rt.block_on(kiln_integration_tests::load(&sandbox, PLUGIN));
    (rt, sandbox, plugin)
}

/// A job record of `bytes` bytes of text for the plugin.
fn job_body(bytes: usize) -> Vec<u8> {
    let job = Job {
        job_id: "bench-1".to_owned(),
        plugin: PLUGIN.to_owned(),
        version: None,
        payload: Payload::Single(job_text(bytes)),
        config: Default::default(),
        timeout_ms: None,
        key: None,
    };
    serde_json::to_vec(&job).expect("encode the job")
}

/// A loaded plugin, warmed up, and one job's input.
struct FreshInstance {
    rt: Runtime,
    _sandbox: Sandbox,
    plugin: Arc<Plugin>,
    ctx: JobContext,
    text: String,
}

fn fresh_instance_setup() -> FreshInstance {
    let (rt, sandbox, plugin) = loaded();
    let ctx = ctx("bench-1", &[]);
    let text = job_text(INPUT_BYTES);
    for _ in 0..WARM_UP_JOBS {
        let run = rt.block_on(plugin.process(&ctx, &text));
        assert!(run.result.is_ok(), "warm-up job failed: {:?}", run.result);
    }
    FreshInstance {
        rt,
        _sandbox: sandbox,
        plugin,
        ctx,
        text,
    }
}

// One job on a fresh instance: Store, instantiate, `process`, drop.
#[library_benchmark]
#[bench::uppercase_200b(setup = fresh_instance_setup)]
fn fresh_instance(f: FreshInstance) -> (FreshInstance, SingleRun) {
    let run =
        f.rt.block_on(f.plugin.process(black_box(&f.ctx), black_box(&f.text)));
    (f, black_box(run))
}

/// The record `kiln xtask jobs` writes, 200 B of input.
fn decode_setup() -> Vec<u8> {
    job_body(INPUT_BYTES)
}

// Decoding one job record with the default limits.
#[library_benchmark]
#[bench::uppercase_200b(setup = decode_setup)]
fn decode(body: Vec<u8>) -> (Vec<u8>, Result<Job, RequestError>) {
    let job = decode_job(
        black_box(&body),
        black_box(&Envelope::default()),
        black_box(&DecodeLimits::default()),
    );
    (body, black_box(job))
}

/// The reply `uppercase` gives a 200 B job (fixed duration and fuel, so the
/// encoded digits do not vary).
fn reply_setup() -> Reply {
    let text = job_text(INPUT_BYTES);
    let mut metadata = Metadata::new();
    metadata.insert("chars".to_owned(), text.chars().count().to_string());
    Reply {
        job_id: "bench-1".to_owned(),
        plugin: PLUGIN.to_owned(),
        plugin_version: Some("1.0.0".to_owned()),
        instance: None,
        http_requests: 0,
        body: ReplyBody::Ok(Success {
            output: text.to_uppercase(),
            metadata,
            duration_us: 8,
            fuel_used: 12_345,
        }),
    }
}

// Encoding one reply with the reply-size check.
#[library_benchmark]
#[bench::uppercase_200b(setup = reply_setup)]
fn encode_reply(reply: Reply) -> (Reply, (Vec<u8>, Option<JobError>)) {
    let encoded = encode_reply_checked(black_box(&reply), black_box(8 << 20));
    (reply, black_box(encoded))
}

/// The production pipeline (default config) over a registry of the plugin,
/// warmed up, and one job record.
struct PipelineJob {
    rt: Runtime,
    _sandbox: Sandbox,
    pipeline: Pipeline,
    body: Vec<u8>,
}

fn pipeline_setup() -> PipelineJob {
    let (rt, sandbox, plugin) = loaded();
    let registry = Arc::new(Registry::from_parts([plugin], []));
    let pipeline = Pipeline::from_config(&KilnConfig::default(), registry);
    let body = job_body(INPUT_BYTES);
    for _ in 0..WARM_UP_JOBS {
        let handled = rt.block_on(pipeline.handle(&body, &Envelope::default(), 1));
        assert_eq!(
            handled.error, None,
            "warm-up job failed: {:?}",
            handled.reply
        );
    }
    PipelineJob {
        rt,
        _sandbox: sandbox,
        pipeline,
        body,
    }
}

// One job end to end: decode, resolve, fresh instance, reply, disposition.
#[library_benchmark]
#[bench::uppercase_200b(setup = pipeline_setup)]
fn pipeline_handle(f: PipelineJob) -> (PipelineJob, Handled) {
    let handled = f.rt.block_on(f.pipeline.handle(
        black_box(&f.body),
        black_box(&Envelope::default()),
        black_box(1),
    ));
    (f, black_box(handled))
}

library_benchmark_group!(
    name = hot_paths;
    benchmarks = fresh_instance, decode, encode_reply, pipeline_handle
);

main!(library_benchmark_groups = hot_paths);
