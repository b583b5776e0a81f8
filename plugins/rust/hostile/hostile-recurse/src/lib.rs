//! `hostile-recurse`: a plugin whose `process` recurses without bound.
//!
//! It exists for the host's tests (the input `benign` returns `benign`, so a
//! test can show the same plugin still serves the next job): the host must turn a stack overflow into a
//! trap for this one call and stay healthy. The recursion is not a tail call
//! (the result is used after the call returns) and `black_box` hides both the
//! depth and the exit condition, so the optimizer can turn it neither into a
//! loop nor into nothing.

hostile_export::export_hostile!("hostile-recurse");

use core::hint::black_box;

/// Recurses until the stack runs out; the exit is never taken in practice.
#[inline(never)]
fn dive(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let below = dive(black_box(depth + 1));
    black_box(below.wrapping_add(depth))
}

fn process(input: String) -> Result<ProcessResult, ProcessError> {
    // `benign` lets a test show the same plugin serves the next job.
    if input == "benign" {
        return ok(input);
    }
    let depth = dive(0);
    ok(depth.to_string())
}
