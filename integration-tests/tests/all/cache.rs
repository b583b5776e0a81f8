//! The component cache across starts: a second start loads with no
//! compile, a corrupt entry is recompiled, the baked tier is read first.

use kiln_integration_tests::{artifact, config};
use kiln_sandbox::{CacheConfig, CacheState, ComponentCache, Limits, Sandbox};

fn sandbox(cache: CacheConfig) -> Sandbox {
    Sandbox::new(kiln_sandbox::SandboxConfig {
        cache,
        ..config(Limits::default())
    })
    .unwrap()
}

async fn state(sandbox: &Sandbox) -> CacheState {
    sandbox
        .load_file(&artifact("uppercase"))
        .await
        .unwrap()
        .cache_state()
}

#[tokio::test(flavor = "multi_thread")]
async fn second_start_loads_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheConfig {
        dir: Some(dir.path().to_path_buf()),
        baked_dir: None,
    };
    assert_eq!(state(&sandbox(cache.clone())).await, CacheState::Compiled);
    // A new process would build a new engine: do the same.
    assert_eq!(state(&sandbox(cache.clone())).await, CacheState::Hit);

    // Corrupt the entry: detected, recompiled, and the plugin still runs.
    let wasm = std::fs::read(artifact("uppercase")).unwrap();
    let s = sandbox(cache.clone());
    let entry = ComponentCache::entry_path(dir.path(), &s.cache().key(&wasm));
    let mut bytes = std::fs::read(&entry).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    let p = s.load_file(&artifact("uppercase")).await.unwrap();
    assert_eq!(p.cache_state(), CacheState::Compiled);
    let run = p
        .process(&kiln_integration_tests::ctx("t", &[]), "ok")
        .await;
    assert_eq!(run.result.unwrap().output, "OK");
}

#[tokio::test(flavor = "multi_thread")]
async fn baked_tier_is_used_first_and_never_written() {
    let plugins = kiln_integration_tests::plugin_dir(&["uppercase", "reverse"]);
    let baked = tempfile::tempdir().unwrap();
    let writable = tempfile::tempdir().unwrap();

    // `kiln precompile` at image build time.
    let builder = sandbox(CacheConfig {
        dir: None,
        baked_dir: None,
    });
    let results = builder
        .precompile_dir(plugins.path(), baked.path())
        .unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|p| p.entry.as_ref().is_ok_and(|e| !e.already_present))
    );
    // Idempotent: a second run finds them.
    let again = builder
        .precompile_dir(plugins.path(), baked.path())
        .unwrap();
    assert!(
        again
            .iter()
            .all(|p| p.entry.as_ref().is_ok_and(|e| e.already_present))
    );

    let s = sandbox(CacheConfig {
        dir: Some(writable.path().to_path_buf()),
        baked_dir: Some(baked.path().to_path_buf()),
    });
    let registry = s.load_dir(plugins.path()).await.unwrap();
    assert_eq!(registry.len(), 2);
    assert!(
        registry
            .plugins()
            .all(|p| p.cache_state() == CacheState::Baked)
    );
    assert_eq!(std::fs::read_dir(writable.path()).unwrap().count(), 0);
}
