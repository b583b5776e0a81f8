//! The `kiln` binary: see [`kiln::cli`].

/// mimalloc instead of the system allocator: a job allocates and frees many
/// small buffers (AMQP frames, JSON, a fresh store), and glibc's malloc was
/// about a tenth of the worker's CPU per job (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
