//! `uppercase`: the smallest useful Kiln plugin, and the one the benchmarks run.
//!
//! It shows the bare shape of a plugin: generate bindings for the
//! `text-plugin` world, implement `plugin`, export it. `process` does only the
//! work (no logging, no config look-up), so a benchmark measures the host's
//! per-call overhead rather than the plugin's.

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "text-plugin",
});

use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};
use kiln::plugin::types::KeyValue;

struct Uppercase;

impl Guest for Uppercase {
    fn get_name() -> String {
        "uppercase".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(input: String) -> Result<ProcessResult, ProcessError> {
        Ok(ProcessResult {
            output: input.to_uppercase(),
            metadata: vec![KeyValue {
                key: "chars".to_string(),
                value: input.chars().count().to_string(),
            }],
        })
    }
}

export!(Uppercase);
