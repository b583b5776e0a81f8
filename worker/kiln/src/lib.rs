//! Kiln, the worker: its typed config, the pipeline that joins job records
//! to the sandbox, hot reload of the plugins, and the embedded runner. The
//! `kiln` binary is a thin CLI over this library.

pub mod cli;
pub mod config;
pub mod embedded;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod scaffold;
pub mod telemetry;
pub mod worker;

use std::sync::Arc;

use kiln_protocol::DecodeLimits;
use kiln_sandbox::{Registry, Sandbox};

use crate::config::KilnConfig;
use crate::pipeline::Pipeline;

/// Builds the pipeline a config describes over an already loaded registry.
pub fn pipeline_for(config: &KilnConfig, registry: Arc<Registry>) -> Pipeline {
    Pipeline::new(
        registry,
        DecodeLimits {
            max_input_bytes: config.sandbox.limits.max_input_bytes,
            max_body_bytes: config.pipeline.max_body_bytes,
        },
        config.pipeline.retry_policy(),
        config.pipeline.max_reply_bytes,
    )
}

/// Builds the sandbox and loads every plugin of the configured directory.
pub async fn load(config: &KilnConfig) -> anyhow::Result<(Sandbox, Arc<Registry>)> {
    use anyhow::Context as _;
    let sandbox = Sandbox::new(config.sandbox.clone())?;
    let dir = &config.plugins_dir.0;
    let registry = sandbox
        .load_dir(dir)
        .await
        .with_context(|| format!("cannot read the plugins directory {}", dir.display()))?;
    Ok((sandbox, Arc::new(registry)))
}

/// What `kiln plugins` shows, and a worker's `/plugins` answers: the
/// plugins of `registry` and the files that failed to load into it.
pub fn plugins_report(registry: &Registry) -> serde_json::Value {
    let plugins: Vec<_> = registry
        .plugins()
        .map(|p| {
            serde_json::json!({
                "name": p.name(),
                "version": p.version().to_string(),
                "path": p.path(),
                "wasm_bytes": p.wasm_bytes(),
                "cache": p.cache_state(),
                "exports": exports(p),
            })
        })
        .collect();
    let errors: Vec<_> = registry.errors().iter().map(ToString::to_string).collect();
    serde_json::json!({ "plugins": plugins, "errors": errors })
}

fn exports(p: &kiln_sandbox::Plugin) -> Vec<&'static str> {
    if p.has_batch() {
        vec!["plugin", "batch"]
    } else {
        vec!["plugin"]
    }
}
