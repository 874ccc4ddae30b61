//! `steward tenants …` and `steward secrets …`: onboarding and administering tenants through a
//! running server's API. Platform commands (`create`, `list`, `delete`) present the operator
//! token (`--token-file` or `STEWARD_OPS_TOKEN`); tenant commands present a tenant admin
//! token (`--token-file` or `STEWARD_TOKEN`). Secret values are read from files or standard
//! input, never from the command line, and never printed except the values the server
//! generates and shows once. Text from the server is printed with control characters escaped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use url::Url;

use crate::api_client::{ApiClient, clean, read_token};

/// How long one request to the server may take (a connection check may take a while).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest file a command reads as a body or a secret.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// `steward tenants …`.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Register a tenant of this deployment's region; prints its first admin token once.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// The tenant id, `us-…` or `eu-…` for its home region.
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// List every tenant.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Test each connection of the tenant whose admin token is presented.
    Check {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Set a connector (`servicenow`, `slack` or `llm`) from a JSON file of the API's body.
    Connector {
        #[command(flatten)]
        server: ServerArgs,
        /// `servicenow`, `slack` or `llm`.
        kind: String,
        /// The JSON body, as `PUT /v1/tenant/connectors/{kind}` takes it.
        #[arg(long)]
        file: PathBuf,
    },
    /// Set the tenant's Cedar policies from a file.
    Policy {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        file: PathBuf,
    },
    /// Create a webhook source; prints its secret once when Steward generated it.
    Source {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        name: String,
        /// How the sender signs: `standard-webhooks` (the default), `slack` or `stripe`.
        #[arg(long)]
        scheme: Option<String>,
        /// A file holding the secret the sender already has (a Slack app's signing secret, a
        /// Stripe endpoint secret); without it, Steward generates one.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// JSON pointer to the incident sys_id in a body (repeatable).
        #[arg(long = "sys-id-pointer")]
        sys_id_pointers: Vec<String>,
        /// JSON pointer to the incident number in a body (repeatable).
        #[arg(long = "number-pointer")]
        number_pointers: Vec<String>,
    },
    /// Offboard a tenant: saves its evidence export to `--export-to`, then deletes it.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        /// The tenant id.
        id: String,
        /// Repeat the tenant id to confirm.
        #[arg(long)]
        confirm: String,
        /// Where to write the export (JSON lines) before deleting; it must not exist.
        #[arg(long)]
        export_to: PathBuf,
    },
}

/// `steward secrets …`.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Seal a new version of one of the tenant's secrets, read from a file or standard input.
    Set {
        #[command(flatten)]
        server: ServerArgs,
        /// The secret's name, such as `llm.api_key` or `webhook.<source>`.
        name: String,
        /// A file holding the value; without it, standard input is read.
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
}

/// Where the server is and which token to present.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    url: Url,
    /// A file holding the token; without it, STEWARD_OPS_TOKEN (platform commands) or
    /// STEWARD_TOKEN (tenant commands) is read.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Which token a command presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Operator,
    TenantAdmin,
}

impl Role {
    fn env(self) -> &'static str {
        match self {
            Role::Operator => "STEWARD_OPS_TOKEN",
            Role::TenantAdmin => "STEWARD_TOKEN",
        }
    }
}

/// Runs a `steward tenants …` command.
pub async fn run(command: TenantsCommand) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    match command {
        TenantsCommand::Create { server, id, name } => {
            create(&Client::new(&server, Role::Operator)?, &id, &name).await
        }
        TenantsCommand::List { server } => {
            let client = Client::new(&server, Role::Operator)?;
            let body = client.send("GET", "v1/tenants", None).await?;
            print_tenants(&body);
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Check { server } => {
            let client = Client::new(&server, Role::TenantAdmin)?;
            let report = client.send("POST", "v1/tenant/check", None).await?;
            Ok(print_check(&report))
        }
        TenantsCommand::Connector { server, kind, file } => {
            connector(&Client::new(&server, Role::TenantAdmin)?, &kind, &file).await
        }
        TenantsCommand::Policy { server, file } => {
            let cedar = read_file(&file)?;
            let client = Client::new(&server, Role::TenantAdmin)?;
            let answer = client
                .send("PUT", "v1/tenant/policy", Some(json!({ "cedar": cedar })))
                .await?;
            println!(
                "policy: set (sha256 {})",
                clean_value(&answer["policy_sha256"])
            );
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Source {
            server,
            name,
            scheme,
            secret_file,
            sys_id_pointers,
            number_pointers,
        } => {
            let secret = secret_file.as_deref().map(read_secret_file).transpose()?;
            let client = Client::new(&server, Role::TenantAdmin)?;
            let body = source_body(&name, scheme, secret, sys_id_pointers, number_pointers);
            source(&client, body).await
        }
        TenantsCommand::Delete {
            server,
            id,
            confirm,
            export_to,
        } => {
            delete(
                &Client::new(&server, Role::Operator)?,
                &id,
                &confirm,
                &export_to,
            )
            .await
        }
    }
}

async fn create(client: &Client, id: &str, name: &str) -> anyhow::Result<ExitCode> {
    let body = client
        .send(
            "POST",
            "v1/tenants",
            Some(json!({ "id": id, "name": name })),
        )
        .await?;
    println!("tenant:      {}", clean_value(&body["tenant"]["id"]));
    println!(
        "admin token: {}",
        clean_value(&body["admin_token"]["value"])
    );
    println!("token id:    {}", clean_value(&body["admin_token"]["id"]));
    println!("(the token is shown only now: store it)");
    Ok(ExitCode::SUCCESS)
}

async fn connector(client: &Client, kind: &str, file: &Path) -> anyhow::Result<ExitCode> {
    if !matches!(kind, "servicenow" | "slack" | "llm") {
        bail!("the connector is servicenow, slack or llm");
    }
    let body: Value = serde_json::from_str(&read_file(file)?)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let path = format!("v1/tenant/connectors/{kind}");
    let answer = client.send("PUT", &path, Some(body)).await?;
    print_secrets(&answer["secrets"]);
    println!("{kind}: set");
    Ok(ExitCode::SUCCESS)
}

/// The `POST /v1/tenant/sources` body; `scheme` and `secret` only when given, so that the
/// server's defaults apply.
fn source_body(
    name: &str,
    scheme: Option<String>,
    secret: Option<SecretString>,
    sys_id_pointers: Vec<String>,
    number_pointers: Vec<String>,
) -> Value {
    let mut body = json!({
        "name": name, "sys_id_pointers": sys_id_pointers, "number_pointers": number_pointers,
    });
    if let Some(scheme) = scheme {
        body["scheme"] = json!(scheme);
    }
    if let Some(secret) = secret {
        body["secret"] = json!(secret.expose_secret());
    }
    body
}

async fn source(client: &Client, body: Value) -> anyhow::Result<ExitCode> {
    let answer = client.send("POST", "v1/tenant/sources", Some(body)).await?;
    println!("source:  {}", clean_value(&answer["name"]));
    println!("scheme:  {}", clean_value(&answer["scheme"]));
    println!("url:     {}", clean_value(&answer["url"]));
    if answer["secret"].is_string() {
        println!("secret:  {}", clean_value(&answer["secret"]));
        println!("(the secret is shown only now: give it to the sender)");
    } else {
        println!(
            "secret:  the one supplied, version {}",
            clean_value(&answer["secret_version"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A secret from a file: its text without the final line break; an empty one is refused.
fn read_secret_file(path: &Path) -> anyhow::Result<SecretString> {
    let text = read_file(path)?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        bail!("{} holds no secret", path.display());
    }
    Ok(SecretString::from(value.to_owned()))
}

/// Runs a `steward secrets …` command.
pub async fn run_secrets(command: SecretsCommand) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    let SecretsCommand::Set {
        server,
        name,
        value_file,
    } = command;
    let value = match value_file {
        Some(path) => read_file(&path)?,
        None => read_stdin()?,
    };
    let value = SecretString::from(value.trim_end_matches(['\r', '\n']).to_owned());
    if value.expose_secret().is_empty() {
        bail!("the secret value is empty");
    }
    let client = Client::new(&server, Role::TenantAdmin)?;
    let path = format!("v1/tenant/secrets/{}", encode_segment(&name));
    let body = json!({ "value": value.expose_secret() });
    let answer = client.send("PUT", &path, Some(body)).await?;
    println!(
        "{}: set, version {}",
        clean_value(&answer["secret"]),
        clean_value(&answer["status"]["version"])
    );
    Ok(ExitCode::SUCCESS)
}

async fn delete(
    client: &Client,
    id: &str,
    confirm: &str,
    export_to: &Path,
) -> anyhow::Result<ExitCode> {
    if id != confirm {
        bail!("--confirm must repeat the tenant id");
    }
    let segment = encode_segment(id);
    let export = client
        .raw_get(&format!("v1/tenants/{segment}/export"))
        .await?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(export_to)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &export))
        .with_context(|| format!("writing the export to {}", export_to.display()))?;
    println!(
        "export:      {} ({} bytes)",
        export_to.display(),
        export.len()
    );
    let body = json!({ "confirm": confirm, "exported": true });
    let answer = client
        .send("DELETE", &format!("v1/tenants/{segment}"), Some(body))
        .await?;
    println!("offboarded:  {}", clean_value(&answer["offboarded"]));
    println!(
        "checkpoint:  seq {}",
        clean_value(&answer["checkpoint"]["seq"])
    );
    println!(
        "head hash:   {}",
        clean_value(&answer["checkpoint"]["head_hash"])
    );
    println!(
        "signature:   {}",
        clean_value(&answer["checkpoint"]["signature"])
    );
    Ok(ExitCode::SUCCESS)
}

fn print_tenants(body: &Value) {
    println!("{:<40} {:<12} NAME", "TENANT", "STATE");
    for t in body["tenants"].as_array().into_iter().flatten() {
        let state = if t["offboarded_at"].is_null() {
            "active"
        } else {
            "offboarded"
        };
        println!(
            "{:<40} {:<12} {}",
            clean_value(&t["id"]),
            state,
            clean_value(&t["name"])
        );
    }
}

/// Prints each connection's result; success only when every connection is ok.
fn print_check(report: &Value) -> ExitCode {
    for name in ["servicenow", "slack", "llm"] {
        let part = &report[name];
        if part["ok"].as_bool() == Some(true) {
            println!("{name:<11} ok");
        } else {
            println!("{name:<11} FAIL: {}", clean_value(&part["problem"]));
        }
    }
    if report["ok"].as_bool() == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_secrets(secrets: &Value) {
    for (name, status) in secrets.as_object().into_iter().flatten() {
        println!(
            "{}: set, version {}",
            clean(name),
            clean_value(&status["version"])
        );
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!("{} is larger than {MAX_FILE_BYTES} bytes", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .context("reading the secret from standard input")?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!("the secret is larger than {MAX_FILE_BYTES} bytes");
    }
    Ok(text)
}

fn clean_value(v: &Value) -> String {
    match v {
        Value::String(s) => clean(s),
        Value::Null => "-".into(),
        other => clean(&other.to_string()),
    }
}

/// A client of the tenancy API with the role's token: the file, then the role's variable,
/// then (platform commands only) the person signed in with `steward login` to this server.
struct Client(ApiClient);

impl Client {
    fn new(server: &ServerArgs, role: Role) -> anyhow::Result<Self> {
        let sign_in = (role == Role::Operator).then_some(&server.url);
        let token = read_token(server.token_file.as_deref(), role.env(), sign_in)?;
        Ok(Self(ApiClient::with_timeout(
            &server.url,
            token,
            REQUEST_TIMEOUT,
        )?))
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        self.0.call(method, path, body.as_ref()).await
    }

    async fn raw_get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let response = self
            .0
            .request(reqwest::Method::GET, path)?
            .send()
            .await
            .context("reaching Steward")?;
        let status = response.status();
        if !status.is_success() {
            bail!("Steward answered {status} to the export");
        }
        Ok(response.bytes().await?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("us-acme"), "us-acme");
        assert_eq!(encode_segment("a/../b c"), "a%2F..%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        assert_eq!(clean_value(&json!(null)), "-");
        assert_eq!(clean_value(&json!(3)), "3");
    }

    #[test]
    fn a_failed_connection_fails_the_check() {
        let report = json!({
            "ok": false, "servicenow": { "ok": true }, "slack": { "ok": true },
            "llm": { "ok": false, "problem": "models: answered 500" },
        });
        assert_eq!(print_check(&report), ExitCode::FAILURE);
        let fine = json!({
            "ok": true, "servicenow": { "ok": true }, "slack": { "ok": true },
            "llm": { "ok": true },
        });
        assert_eq!(print_check(&fine), ExitCode::SUCCESS);
    }

    #[test]
    fn a_source_names_its_scheme_and_secret_only_when_given() {
        let plain = source_body("sn", None, None, vec!["/sys_id".into()], vec![]);
        assert!(plain.get("scheme").is_none() && plain.get("secret").is_none());
        let secret = Some(SecretString::from("8f742231b10e8888abcd99yyyzzz85a5"));
        let slack = source_body(
            "sn",
            Some("slack".into()),
            secret,
            vec![],
            vec!["/n".into()],
        );
        assert_eq!(slack["scheme"], "slack");
        assert_eq!(slack["secret"], "8f742231b10e8888abcd99yyyzzz85a5");
    }

    #[test]
    fn secret_files_lose_their_line_break_and_may_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing");
        std::fs::write(&path, "8f742231b10e8888abcd99yyyzzz85a5\r\n").unwrap();
        let secret = read_secret_file(&path).unwrap();
        assert_eq!(secret.expose_secret(), "8f742231b10e8888abcd99yyyzzz85a5");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file(&path).is_err());
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'a'; 70 * 1024]).unwrap();
        assert!(read_file(&path).unwrap_err().to_string().contains("larger"));
        assert!(read_file(&dir.path().join("missing")).is_err());
    }
}
