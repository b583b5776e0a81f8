//! `hostile-logflood`: a plugin whose `process` floods every output it has.
//!
//! It exists for the host's tests: the host bounds the number and size of
//! log lines per job and must not let a plugin's stdout or stderr grow
//! without bound either. `process` sends `lines` lines (from the host's
//! `get-config("lines")`, default 1 000 000) of about 100 bytes each to the
//! host's `log` at `info`, then the same to stdout and to stderr, and returns
//! `done`. Write errors on stdout and stderr are ignored (unlike `println!`,
//! which would panic), so a host that closes them still gets `done`.

hostile_export::export_hostile!("hostile-logflood");

use std::io::Write;

use kiln::plugin::host_api::{LogLevel, get_config, log};

/// Number of lines when the config does not say.
const DEFAULT_LINES: u64 = 1_000_000;

/// Padding that brings each line to about 100 bytes.
const PAD: &str =
    "the quick brown fox jumps over the lazy dog; the quick brown fox jumps over the lazy";

/// One line of about 100 bytes, numbered so that dropped lines show.
fn line(i: u64) -> String {
    format!("flood {i:>10} {PAD}")
}

fn process(_input: String) -> Result<ProcessResult, ProcessError> {
    let lines = get_config("lines")
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(DEFAULT_LINES);

    for i in 0..lines {
        log(LogLevel::Info, &line(i));
    }
    let mut stdout = std::io::stdout().lock();
    for i in 0..lines {
        let _ = writeln!(stdout, "{}", line(i));
    }
    let mut stderr = std::io::stderr().lock();
    for i in 0..lines {
        let _ = writeln!(stderr, "{}", line(i));
    }

    ok("done".to_string())
}
