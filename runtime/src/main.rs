//! `steward`: serve, demo, and operator commands.

use clap::Parser;

/// mimalloc instead of the C library's allocator: a request's many small, short-lived
/// allocations are freed on whichever runtime thread finishes it, where glibc's arenas spent a
/// third of the runtime threads' time (malloc, free, consolidation) in the intake benchmark.
/// Transparent huge pages are turned off first thing (`memory.rs` says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // As early as this binary can: the kernel checks the setting at each page fault, so the
    // runtime's memory is covered from here on. A kernel without it only costs speed.
    let _ = steward_runtime::memory::without_huge_pages();
    let cli = steward_runtime::cli::Cli::parse();
    match steward_runtime::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("steward: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
