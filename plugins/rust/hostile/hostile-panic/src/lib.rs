//! `hostile-panic`: a plugin whose `process` panics.
//!
//! It exists for the host's tests: a Rust panic in a component becomes a wasm
//! trap (the release profile aborts on panic), and the host must report it as
//! a failed job, not crash. The panic message goes to the plugin's stderr,
//! which the host may capture or discard.

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "text-plugin",
});

use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};

struct HostilePanic;

impl Guest for HostilePanic {
    fn get_name() -> String {
        "hostile-panic".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(_input: String) -> Result<ProcessResult, ProcessError> {
        panic!("plugin panicked on purpose");
    }
}

export!(HostilePanic);
