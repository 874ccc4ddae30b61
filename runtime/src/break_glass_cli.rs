//! `steward break-glass open|list|close`: emergency operator access through a running
//! server's API, with the operator token (`--token-file` or `STEWARD_OPS_TOKEN`).
//!
//! `open --person P --reason R [--minutes M]` prints the grant's token once, alone on stdout
//! (so `TOKEN=$(steward break-glass open …)` keeps nothing else), and its id and expiry on
//! stderr. `list` shows every grant without tokens; `close <id>` ends one early. Text from the
//! server is printed with control characters escaped.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use url::Url;

use crate::api_client::{ApiClient, clean, read_token};

/// `steward break-glass …`.
#[derive(Debug, Subcommand)]
pub enum BreakGlassCommand {
    /// Open a grant for one person; its token is printed once, on stdout.
    Open {
        #[command(flatten)]
        server: Server,
        /// Who the access is for (1 to 128 characters).
        #[arg(long)]
        person: String,
        /// Why (10 to 1000 characters); audited.
        #[arg(long)]
        reason: String,
        /// How long the grant lasts, 1 to 240 minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
    },
    /// List the grants (without tokens), newest first.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// Close a grant before it expires.
    Close {
        #[command(flatten)]
        server: Server,
        /// The grant's id (`bg_…`).
        id: String,
    },
}

/// Where the server is and the operator token.
#[derive(Debug, Args)]
pub struct Server {
    /// The server's base URL.
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    url: Url,
    /// A file holding the operator token; without it, STEWARD_OPS_TOKEN is read.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Server {
    /// A client of the server with the operator token. Break-glass grants are opened with
    /// the operator token alone, never a saved sign-in.
    fn client(&self) -> anyhow::Result<ApiClient> {
        let token = read_token(self.token_file.as_deref(), "STEWARD_OPS_TOKEN", None)?;
        ApiClient::new(&self.url, token)
    }
}

/// Runs a `steward break-glass …` command.
pub async fn run(command: BreakGlassCommand) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    match command {
        BreakGlassCommand::Open {
            server,
            person,
            reason,
            minutes,
        } => open(&server, &person, &reason, minutes).await,
        BreakGlassCommand::List { server } => list(&server).await,
        BreakGlassCommand::Close { server, id } => close(&server, &id).await,
    }
}

async fn open(
    server: &Server,
    person: &str,
    reason: &str,
    minutes: u32,
) -> anyhow::Result<ExitCode> {
    let body = json!({ "person": person, "reason": reason, "minutes": minutes });
    let answer = server
        .client()?
        .call(Method::POST, "v1/ops/break-glass", Some(&body))
        .await?;
    let Some(token) = answer["token"].as_str().filter(|t| t.starts_with("sbg_")) else {
        bail!("Steward's answer carries no grant token");
    };
    println!("{}", clean(token));
    eprintln!(
        "grant {} for {} expires at {} ({} minutes); the token above is shown once",
        clean(answer["id"].as_str().unwrap_or("?")),
        clean(answer["person"].as_str().unwrap_or("?")),
        clean(answer["expires"].as_str().unwrap_or("?")),
        minutes
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(server: &Server) -> anyhow::Result<ExitCode> {
    let answer = server.client()?.get("v1/ops/break-glass", &[]).await?;
    let grants = answer["grants"].as_array().cloned().unwrap_or_default();
    if grants.is_empty() {
        println!("no break-glass grants");
    }
    for g in &grants {
        println!("{}", grant_line(g));
    }
    Ok(ExitCode::SUCCESS)
}

async fn close(server: &Server, id: &str) -> anyhow::Result<ExitCode> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        bail!("a grant id is `bg_` and hex digits");
    }
    let answer = server
        .client()?
        .call(Method::DELETE, &format!("v1/ops/break-glass/{id}"), None)
        .await?;
    println!("closed: {}", grant_line(&answer));
    Ok(ExitCode::SUCCESS)
}

/// One grant on one line: id, state, person, expiry (Unix ms), uses, reason.
fn grant_line(g: &Value) -> String {
    format!(
        "{}\t{}\t{}\texpires_at={}\tuses={}\t{}",
        clean(g["id"].as_str().unwrap_or("?")),
        clean(g["state"].as_str().unwrap_or("?")),
        clean(g["person"].as_str().unwrap_or("?")),
        g["expires_at"].as_i64().unwrap_or(0),
        g["uses"].as_u64().unwrap_or(0),
        clean(g["reason"].as_str().unwrap_or("")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_lines_escape_control_characters_and_carry_no_token() {
        let g = json!({
            "id": "bg_0123456789abcdef", "state": "active", "person": "ana\u{1b}[2J",
            "expires_at": 5, "uses": 2, "reason": "failover\nnow", "token": "sbg_secret",
        });
        let line = grant_line(&g);
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line}");
        assert!(!line.contains("sbg_secret"));
        assert!(line.starts_with("bg_0123456789abcdef\tactive\t"));
    }
}
