//! Finding the `steward` binary the suite runs.
//!
//! `STEWARD_BIN` names it outright. Otherwise the suite runs `cargo build -p steward-runtime
//! --bin steward` once per test process (a no-op when it is up to date) and takes the binary
//! from the target folder this test binary lives in: `<target>/debug/deps/<test>` puts it at
//! `<target>/debug/steward`. So `cargo test -p steward-chaos` always tests the current code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, bail};

/// The `steward` binary to start, built on first use.
pub fn steward_binary() -> anyhow::Result<&'static Path> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BINARY.get_or_init(|| locate().map_err(|error| format!("{error:#}")));
    match found {
        Ok(path) => Ok(path.as_path()),
        Err(error) => bail!("{error}"),
    }
}

fn locate() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("STEWARD_BIN") {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "STEWARD_BIN names no file: {}",
            path.display()
        );
        return Ok(path);
    }
    build()?;
    let binary = profile_dir()?.join("steward");
    anyhow::ensure!(
        binary.is_file(),
        "cargo built steward but it is not at {}",
        binary.display()
    );
    Ok(binary)
}

/// `<target>/<profile>`, the folder above the `deps/` folder holding this test binary.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("could not find the running test binary")?;
    let deps = exe.parent().context("the test binary has no folder")?;
    let profile = if deps.ends_with("deps") {
        deps.parent().context("the deps folder has no parent")?
    } else {
        deps
    };
    Ok(profile.to_path_buf())
}

fn build() -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "steward-runtime",
            "--bin",
            "steward",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .status()
        .context("could not run cargo build for the steward binary")?;
    anyhow::ensure!(status.success(), "cargo build of steward failed: {status}");
    Ok(())
}
