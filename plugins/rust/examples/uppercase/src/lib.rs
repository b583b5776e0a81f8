//! `uppercase`: the smallest useful Kiln plugin, and the one the benchmarks run.
//!
//! It shows the bare shape of a plugin written with the `kiln-plugin` SDK:
//! implement `Plugin`, call `export!`. The name and version come from
//! `Cargo.toml`. `process` does only the work (no logging, no config
//! look-up), so a benchmark measures the host's per-call overhead rather
//! than the plugin's.

use kiln_plugin::{Error, Output, Plugin};

struct Uppercase;

impl Plugin for Uppercase {
    fn process(input: String) -> Result<Output, Error> {
        Ok(Output::new(input.to_uppercase()).with_metadata("chars", input.chars().count()))
    }
}

kiln_plugin::export!(Uppercase);
