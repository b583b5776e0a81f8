//! The `kiln` command line, built inside this package so that its tests
//! get it from cargo (`CARGO_BIN_EXE_kiln-under-test`): cargo builds a
//! binary for the integration tests of its own package only.

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
