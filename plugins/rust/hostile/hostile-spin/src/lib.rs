//! `hostile-spin`: a plugin whose `process` never returns.
//!
//! It exists for the host's tests (the input `benign` returns `benign`, so a
//! test can show the same plugin still serves the next job): the host must cut a runaway plugin off
//! (by its deadline, fuel or epoch interruption) instead of hanging a worker.
//! `black_box` keeps the optimizer from proving the loop side-effect free and
//! deleting it.

hostile_export::export_hostile!("hostile-spin");

use core::hint::black_box;

fn process(input: String) -> Result<ProcessResult, ProcessError> {
    // `benign` lets a test show the same plugin serves the next job.
    if input == "benign" {
        return ok(input);
    }
    let mut counter: u64 = 0;
    loop {
        counter = counter.wrapping_add(1);
        black_box(counter);
    }
}
