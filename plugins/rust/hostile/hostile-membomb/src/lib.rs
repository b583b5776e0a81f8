//! `hostile-membomb`: a plugin whose `process` allocates memory without bound.
//!
//! It exists for the host's tests (the input `benign` returns `benign`, so a
//! test can show the same plugin still serves the next job): the host must stop a plugin at its memory
//! cap (the failed `memory.grow` makes Rust's allocator abort, which traps)
//! instead of letting it eat the worker's memory. Every 1 MiB block is filled
//! with a non-zero byte, so the pages are really touched, and kept alive.

hostile_export::export_hostile!("hostile-membomb");

use core::hint::black_box;

/// The size of one block: 1 MiB.
const BLOCK: usize = 1 << 20;

fn process(input: String) -> Result<ProcessResult, ProcessError> {
    // `benign` lets a test show the same plugin serves the next job.
    if input == "benign" {
        return ok(input);
    }
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; BLOCK]);
        black_box(&mut hoard);
    }
}
