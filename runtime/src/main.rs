//! `steward`: serve, demo, and operator commands.

use clap::Parser;

/// mimalloc instead of the C library's allocator: a request's many small, short-lived
/// allocations are freed on whichever runtime thread finishes it, where glibc's arenas spent a
/// third of the runtime threads' time (malloc, free, consolidation) in the intake benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = steward_runtime::cli::Cli::parse();
    match steward_runtime::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("steward: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
