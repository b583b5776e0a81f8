//! `hostile-spin`: a plugin whose `process` never returns.
//!
//! It exists for the host's tests (the input `benign` returns `benign`, so a
//! test can show the same plugin still serves the next job): the host must cut a runaway plugin off
//! (by its deadline, fuel or epoch interruption) instead of hanging a worker.
//! `black_box` keeps the optimizer from proving the loop side-effect free and
//! deleting it.

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "text-plugin",
});

use core::hint::black_box;
use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};

struct HostileSpin;

impl Guest for HostileSpin {
    fn get_name() -> String {
        "hostile-spin".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(input: String) -> Result<ProcessResult, ProcessError> {
        // `benign` lets a test show the same plugin serves the next job.
        if input == "benign" {
            return Ok(ProcessResult {
                output: input,
                metadata: Vec::new(),
            });
        }
        let mut counter: u64 = 0;
        loop {
            counter = counter.wrapping_add(1);
            black_box(counter);
        }
    }
}

export!(HostileSpin);
