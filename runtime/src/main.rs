//! `steward`: serve, demo, and operator commands.

use clap::Parser;

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
