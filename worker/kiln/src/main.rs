//! The `kiln` binary: see [`kiln::cli`].

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
