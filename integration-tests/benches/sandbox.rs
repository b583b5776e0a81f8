//! Criterion micro-benchmarks of the sandbox, in one run:
//!
//! - `compile` vs `cache_load` for each example plugin;
//! - `fresh_instance`: a whole job on a fresh instance (Store + instantiate
//!   + `process` + drop), fuel and epoch on, at 200 B and 10 KB;
//! - `native_floor`: `str::to_uppercase` on the same inputs.
//!
//! Run with `cargo bench -p kiln-integration-tests --bench sandbox`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_integration_tests::{artifact, ctx};
use kiln_sandbox::{CacheConfig, ComponentCache, Limits, Sandbox};

const EXAMPLES: [&str; 4] = ["uppercase", "reverse", "wordcount", "markdown"];

fn input(bytes: usize) -> String {
    "the quick brown fox jumps over the lazy dog "
        .chars()
        .cycle()
        .take(bytes)
        .collect()
}

fn compile_vs_cache_load(c: &mut Criterion) {
    let sandbox = kiln_integration_tests::sandbox(Limits::default());
    let engine = sandbox.engine();
    let dir = tempfile::tempdir().unwrap();
    let cache = ComponentCache::new(
        engine,
        &CacheConfig {
            dir: Some(dir.path().to_path_buf()),
            baked_dir: None,
        },
    );
    let mut group = c.benchmark_group("component");
    group.sample_size(10);
    for name in EXAMPLES {
        let wasm = std::fs::read(artifact(name)).unwrap();
        group.bench_with_input(BenchmarkId::new("compile", name), &wasm, |b, wasm| {
            b.iter(|| engine.precompile_component(black_box(wasm)).unwrap());
        });
        // Warm the entry, then measure verified loads (digest + deserialize_file).
        cache.load(engine, Path::new(name), &wasm).unwrap();
        group.bench_with_input(BenchmarkId::new("cache_load", name), &wasm, |b, wasm| {
            b.iter(|| {
                let (_, state) = cache
                    .load(engine, Path::new(name), black_box(wasm))
                    .unwrap();
                assert!(state.is_hit());
            });
        });
    }
    group.finish();
}

fn fresh_instance_per_job(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox: Sandbox = kiln_integration_tests::sandbox(Limits::default());
    let plugin = rt.block_on(kiln_integration_tests::load(&sandbox, "uppercase"));
    let job = ctx("bench", &[]);
    let mut group = c.benchmark_group("job");
    for size in [200, 10_000] {
        let text = input(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("fresh_instance", size),
            &text,
            |b, text| {
                b.iter(|| {
                    let run = rt.block_on(plugin.process(&job, black_box(text)));
                    black_box(run.result.unwrap());
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("native_floor", size), &text, |b, text| {
            b.iter(|| black_box(black_box(text.as_str()).to_uppercase()));
        });
    }
    group.finish();
}

criterion_group!(benches, compile_vs_cache_load, fresh_instance_per_job);
criterion_main!(benches);
