//! `steward evidence …`: exporting a tenant's evidence bundle from a running server, and
//! verifying a bundle offline, with no database or server.
//!
//! `export` presents the operator token (`--token-file` or `STEWARD_OPS_TOKEN`), or with
//! `--admin` the tenant's admin token (`--token-file` or `STEWARD_TOKEN`), and streams the
//! export into the bundle directory as it arrives, printing progress on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use secrecy::{ExposeSecret, SecretString};
use steward_persistence::evidence::bundle::{
    self, BundleWriter, MAX_LINE_BYTES, VerifyOptions, verify_bundle,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

/// How long the server may stay silent during an export.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Entries between two progress lines.
const PROGRESS_EVERY: u64 = 100_000;

/// `steward evidence …`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Export a tenant's evidence for a time range into a new bundle directory.
    Export {
        /// The server's base URL.
        #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
        url: Url,
        /// A file holding the token; without it, STEWARD_OPS_TOKEN (or STEWARD_TOKEN with
        /// `--admin`) is read.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Present the tenant's admin token instead of the operator token.
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        tenant: String,
        /// Start, inclusive: RFC 3339 (`2026-01-01T00:00:00Z`) or Unix ms.
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive: RFC 3339 or Unix ms.
        #[arg(long)]
        to: Option<String>,
        /// The bundle directory to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a bundle directory offline; exits 1 naming the first bad item.
    Verify {
        dir: PathBuf,
        /// A witness public key (64 hex digits) given out of band (repeatable): the linking
        /// checkpoint must then be countersigned by one of these.
        #[arg(long = "witness-key")]
        witness_keys: Vec<String>,
    },
}

/// Runs a `steward evidence …` command.
pub async fn run(command: EvidenceCommand) -> anyhow::Result<ExitCode> {
    match command {
        EvidenceCommand::Export {
            url,
            token_file,
            admin,
            tenant,
            from,
            to,
            out,
        } => {
            crate::boot::install_crypto_provider();
            let from = from.as_deref().map(parse_time).transpose()?.unwrap_or(0);
            let to = to.as_deref().map(parse_time).transpose()?;
            let token = read_token(token_file.as_deref(), admin)?;
            export(&url, &token, admin, &tenant, from, to, &out).await
        }
        EvidenceCommand::Verify { dir, witness_keys } => verify(&dir, witness_keys),
    }
}

/// A time given as RFC 3339 or as Unix ms.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let at = OffsetDateTime::parse(text, &Rfc3339).with_context(|| {
        format!(
            "`{}` is neither RFC 3339 nor Unix ms",
            text.escape_default()
        )
    })?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).context("time out of range")
}

fn read_token(file: Option<&Path>, admin: bool) -> anyhow::Result<SecretString> {
    let env = if admin {
        "STEWARD_TOKEN"
    } else {
        "STEWARD_OPS_TOKEN"
    };
    let token = match file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => std::env::var(env)
            .with_context(|| format!("give the token with --token-file or {env}"))?,
    };
    let token = token.trim().to_owned();
    if token.is_empty() || token.len() > 256 {
        bail!("the token is empty or too long");
    }
    Ok(SecretString::from(token))
}

async fn export(
    base: &Url,
    token: &SecretString,
    admin: bool,
    tenant: &str,
    from: i64,
    to: Option<i64>,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let http = crate::api_client::http_builder()?
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(READ_TIMEOUT)
        .build()?;
    let export = Export {
        base,
        token,
        admin,
        tenant,
        from,
        to,
    };
    let manifest = download(&http, &export, out).await?;
    let c = &manifest.counts;
    println!(
        "bundle {}: tenant {}, seq {}–{} (linked through {}), {} audit lines, {} runs, \
         {} approvals, {} checkpoints",
        out.display(),
        manifest.tenant,
        manifest.range.first_seq,
        manifest.range.last_seq,
        manifest.range.linked_through,
        c.audit,
        c.runs,
        c.approvals,
        c.checkpoints
    );
    Ok(ExitCode::SUCCESS)
}

/// What to export, from where, as whom.
pub(crate) struct Export<'a> {
    pub base: &'a Url,
    pub token: &'a SecretString,
    /// The tenant's admin token rather than the operator token.
    pub admin: bool,
    pub tenant: &'a str,
    pub from: i64,
    pub to: Option<i64>,
}

/// Streams an export into a new bundle directory `out`, printing progress on stderr; the
/// bundle's manifest. `http` must not follow redirects (the token would follow them).
pub(crate) async fn download(
    http: &reqwest::Client,
    export: &Export<'_>,
    out: &Path,
) -> anyhow::Result<bundle::Manifest> {
    let Export {
        base,
        token,
        admin,
        tenant,
        from,
        to,
    } = *export;
    if !matches!(base.scheme(), "http" | "https") {
        bail!("--url must be an http or https URL");
    }
    let path = if admin {
        "v1/tenant/evidence".to_owned()
    } else {
        let segment: String = url::form_urlencoded::byte_serialize(tenant.as_bytes()).collect();
        format!("v1/tenants/{segment}/evidence")
    };
    let mut url = base.join(&path).context("building the export URL")?;
    url.query_pairs_mut().append_pair("from", &from.to_string());
    if let Some(to) = to {
        url.query_pairs_mut().append_pair("to", &to.to_string());
    }
    let mut response = http
        .get(url)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .with_context(|| format!("reaching Steward at {base}"))?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["message"].as_str().unwrap_or("no message");
        bail!("Steward answered {status}: {}", message.escape_default());
    }
    let mut writer = BundleWriter::create(out)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut reported = 0;
    while let Some(chunk) = response.chunk().await.context("reading the export")? {
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            writer.push_line(&pending[start..start + end])?;
            start += end + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            bail!("the server sent a line longer than {MAX_LINE_BYTES} bytes");
        }
        if writer.entries() / PROGRESS_EVERY > reported {
            reported = writer.entries() / PROGRESS_EVERY;
            eprintln!("{} entries…", writer.entries());
        }
    }
    if !pending.is_empty() {
        bail!("the export ended in the middle of a line");
    }
    Ok(writer.finish()?)
}

fn verify(dir: &Path, witness_keys: Vec<String>) -> anyhow::Result<ExitCode> {
    let witness_keys: Vec<String> = witness_keys
        .iter()
        .map(|k| k.trim().to_ascii_lowercase())
        .collect();
    for key in &witness_keys {
        if steward_persistence::evidence::decode_32(key).is_none() {
            bail!("--witness-key must be 64 hex digits");
        }
    }
    let options = VerifyOptions { witness_keys };
    match verify_bundle(dir, &options, |n| eprintln!("{n} entries verified…")) {
        Ok(report) => {
            println!(
                "OK: tenant {}, {} entries (+{} linking), {} runs, {} approvals, {} checkpoints",
                report.tenant,
                report.entries,
                report.link_entries,
                report.runs,
                report.approvals,
                report.checkpoints
            );
            match (&report.linked_checkpoint, &report.witnessed_by) {
                (Some(seq), Some(w)) => println!(
                    "linked to checkpoint {seq}, countersigned by witness {w} ({})",
                    if report.witness_pinned {
                        "pinned"
                    } else {
                        "key from the bundle, not pinned"
                    }
                ),
                (Some(seq), None) => println!("linked to checkpoint {seq}, not witnessed"),
                (None, _) => println!("the range is empty"),
            }
            println!(
                "{} sealed bodies proved against their digests{}",
                report.bound_entries,
                if report.sealed_entries > 0 {
                    format!(
                        "; {} sealed before bodies were bound, shown but not proved",
                        report.sealed_entries
                    )
                } else {
                    String::new()
                }
            );
            println!("compare keys.json with GET /v1/evidence/keys or a copy kept earlier");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_ms() {
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2023-13-40T00:00:00Z").is_err());
    }
}
