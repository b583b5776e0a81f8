//! `hostile-panic`: a plugin whose `process` panics.
//!
//! It exists for the host's tests (the input `benign` returns `benign`, so a
//! test can show the same plugin still serves the next job): a Rust panic in a component becomes a wasm
//! trap (the release profile aborts on panic), and the host must report it as
//! a failed job, not crash. The panic message goes to the plugin's stderr,
//! which the host may capture or discard.

hostile_export::export_hostile!("hostile-panic");

fn process(input: String) -> Result<ProcessResult, ProcessError> {
    // `benign` lets a test show the same plugin serves the next job.
    if input == "benign" {
        return ok(input);
    }
    panic!("plugin panicked on purpose");
}
