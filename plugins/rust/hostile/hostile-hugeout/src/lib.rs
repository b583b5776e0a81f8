//! `hostile-hugeout`: a plugin whose `process` returns a huge output.
//!
//! It exists for the host's tests: the host must bound what it accepts back
//! from a plugin. The output is `bytes` bytes of `x`, where `bytes` comes from
//! the host's `get-config("bytes")` (default 16 MiB); a value that does not
//! parse as a `usize` also falls back to the default.

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "text-plugin",
});

use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};
use kiln::plugin::host_api::get_config;

/// Output size when the config does not say: 16 MiB.
const DEFAULT_BYTES: usize = 16 * 1024 * 1024;

struct HostileHugeout;

impl Guest for HostileHugeout {
    fn get_name() -> String {
        "hostile-hugeout".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(_input: String) -> Result<ProcessResult, ProcessError> {
        let bytes = get_config("bytes")
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(DEFAULT_BYTES);
        Ok(ProcessResult {
            output: "x".repeat(bytes),
            metadata: Vec::new(),
        })
    }
}

export!(HostileHugeout);
