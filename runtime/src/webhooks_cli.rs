//! `steward webhooks send`: signs a body the way a Standard Webhooks sender does and posts it
//! to a server's intake, for an operator checking a source end to end (a runbook step, a
//! staging smoke run). The secret is read from a file, never from the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use steward_adapters::webhook::{WebhookSecret, sign_standard};
use url::Url;

/// The largest body `send` posts: the intake's own default limit.
pub const MAX_SEND_BYTES: u64 = 256 * 1024;

/// `steward webhooks send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The server's base URL.
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: Url,
    #[arg(long)]
    pub tenant: String,
    /// The tenant's webhook source (its scheme must be Standard Webhooks).
    #[arg(long, default_value = "servicenow")]
    pub source: String,
    /// File holding the source's `whsec_…` secret.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// File holding the JSON body to send, byte for byte.
    #[arg(long)]
    pub body_file: PathBuf,
    /// The delivery id (`webhook-id`); a new random one when absent. Send the same id again
    /// to see a redelivery answered with the run it started.
    #[arg(long)]
    pub id: Option<String>,
}

/// Signs and posts; prints the status and the answer. Exits 0 on 2xx, 1 otherwise.
pub async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    if !matches!(args.url.scheme(), "http" | "https") {
        bail!("--url must be an http or https URL");
    }
    let secret_text = std::fs::read_to_string(&args.secret_file)
        .with_context(|| format!("reading {}", args.secret_file.display()))?;
    let secret = WebhookSecret::parse(secret_text.trim())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.secret_file.display()))?;
    let size = std::fs::metadata(&args.body_file)
        .with_context(|| format!("reading {}", args.body_file.display()))?
        .len();
    if size > MAX_SEND_BYTES {
        bail!(
            "{} is larger than {MAX_SEND_BYTES} bytes",
            args.body_file.display()
        );
    }
    let body = std::fs::read(&args.body_file)
        .with_context(|| format!("reading {}", args.body_file.display()))?;
    let id = match args.id {
        Some(id)
            if !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id
        }
        Some(_) => bail!("--id must be 1 to 256 printable ASCII characters"),
        None => {
            let mut bytes = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            format!("msg_{}", hex::encode(bytes))
        }
    };
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = sign_standard(&secret, &id, timestamp, &body);
    let segment =
        |s: &str| -> String { url::form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    let target = args
        .url
        .join(&format!(
            "v1/webhooks/{}/{}",
            segment(&args.tenant),
            segment(&args.source)
        ))
        .context("building the intake URL")?;
    let http = crate::api_client::http_builder()?
        .timeout(Duration::from_secs(30))
        .build()?;
    let response = http
        .post(target)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("reaching Steward at {}", args.url))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{} {}", status.as_u16(), text.trim());
    eprintln!("webhook-id: {id}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
