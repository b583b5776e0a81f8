//! `hostile-hugeout`: a plugin whose `process` returns a huge output.
//!
//! It exists for the host's tests: the host must bound what it accepts back
//! from a plugin. The output is `bytes` bytes of `x`, where `bytes` comes from
//! the host's `get-config("bytes")` (default 16 MiB); a value that does not
//! parse as a `usize` also falls back to the default.

hostile_export::export_hostile!("hostile-hugeout");

use kiln::plugin::host_api::get_config;

/// Output size when the config does not say: 16 MiB.
const DEFAULT_BYTES: usize = 16 * 1024 * 1024;

fn process(_input: String) -> Result<ProcessResult, ProcessError> {
    let bytes = get_config("bytes")
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(DEFAULT_BYTES);
    ok("x".repeat(bytes))
}
