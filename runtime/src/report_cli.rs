//! `steward report`: a tenant's report for a time range from a running server, printed to
//! stdout as JSON or CSV.
//!
//! By default it asks as an operator (`GET /v1/tenants/{tenant}/report`) with the operator
//! token (`--token-file` or `STEWARD_OPS_TOKEN`) or the saved `steward login` sign-in. With
//! `--tenant-token` it asks as the tenant (`GET /v1/tenant/report`) with the tenant's API token
//! (`--token-file` or `STEWARD_TOKEN`, scope `runs:read` or `admin`), and checks the answer is
//! for `--tenant`. Times are RFC 3339 or Unix ms here; the server is sent Unix ms.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;
use steward_core::TenantId;
use url::Url;

use crate::api_client::{ApiClient, clean, read_token};

/// How long the request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest answer read; a report is far smaller (its sections list a bounded number of
/// keys).
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// The answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Json,
    Csv,
}

impl ReportFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Csv => "csv",
        }
    }
}

/// `steward report …`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The server's base URL.
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: Url,
    /// The tenant, such as `us-acme`.
    #[arg(long)]
    pub tenant: String,
    /// Start, inclusive: RFC 3339 (`2026-01-01T00:00:00Z`) or Unix ms.
    #[arg(long)]
    pub from: String,
    /// End, exclusive, at most 366 days after the start: RFC 3339 or Unix ms.
    #[arg(long)]
    pub to: String,
    #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
    pub format: ReportFormat,
    /// A file holding the token; without it, STEWARD_OPS_TOKEN (STEWARD_TOKEN with
    /// `--tenant-token`) is read, then the saved sign-in.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Present the tenant's API token instead of the operator's credential.
    #[arg(long)]
    pub tenant_token: bool,
}

/// Runs `steward report`.
pub async fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    let text = fetch(&args).await?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// The report's text as the server sent it (JSON pretty-printed).
pub async fn fetch(args: &ReportArgs) -> anyhow::Result<String> {
    let tenant = TenantId::parse(&args.tenant)
        .map_err(|e| anyhow::anyhow!("--tenant `{}`: {e}", args.tenant.escape_default()))?;
    let from = unix_ms("--from", &args.from)?;
    let to = unix_ms("--to", &args.to)?;
    if to <= from {
        bail!("--to must be after --from");
    }
    let token = if args.tenant_token {
        read_token(args.token_file.as_deref(), "STEWARD_TOKEN", None)?
    } else {
        read_token(
            args.token_file.as_deref(),
            "STEWARD_OPS_TOKEN",
            Some(&args.url),
        )?
    };
    let client = ApiClient::with_timeout(&args.url, token, REQUEST_TIMEOUT)?;
    let path = if args.tenant_token {
        "v1/tenant/report".to_owned()
    } else {
        format!("v1/tenants/{tenant}/report")
    };
    let query = [
        ("from", from.to_string()),
        ("to", to.to_string()),
        ("format", args.format.as_str().to_owned()),
    ];
    let response = client
        .request(reqwest::Method::GET, &path)?
        .query(&query)
        .send()
        .await
        .with_context(|| format!("reaching Steward at {}", args.url))?;
    let status = response.status();
    let body = read_capped(response).await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(clean))
            .unwrap_or_else(|| "no message".into());
        bail!("Steward answered {status}: {message}");
    }
    let text = String::from_utf8(body).context("the report is not UTF-8")?;
    match args.format {
        ReportFormat::Csv => Ok(text),
        ReportFormat::Json => {
            let report: Value = serde_json::from_str(&text).context("the report is not JSON")?;
            if report["tenant"].as_str() != Some(tenant.as_str()) {
                bail!(
                    "the report is for `{}`, not `{tenant}`: the token belongs to another tenant",
                    clean(report["tenant"].as_str().unwrap_or(""))
                );
            }
            Ok(serde_json::to_string_pretty(&report)?)
        }
    }
}

/// Reads the answer, refusing one over [`MAX_ANSWER_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("reading the answer")? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            bail!("the answer is larger than {MAX_ANSWER_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A time given as RFC 3339 or Unix ms, not before 1970.
fn unix_ms(flag: &str, text: &str) -> anyhow::Result<i64> {
    let ms = crate::evidence_cli::parse_time(text).with_context(|| flag.to_owned())?;
    if ms < 0 {
        bail!("{flag} is before 1970");
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_unix_ms_and_not_before_1970() {
        assert_eq!(
            unix_ms("--from", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            unix_ms("--from", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        for bad in ["yesterday", "-5", "2023-13-01T00:00:00Z", ""] {
            assert!(unix_ms("--from", bad).is_err(), "{bad:?}");
        }
    }
}
