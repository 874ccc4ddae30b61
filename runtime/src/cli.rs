//! The command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use steward_adapters::http::HttpSettings;
use steward_adapters::webhook::{TOLERANCE_SECS, WebhookSecret, verify_standard};
use steward_core::TenantId;
use steward_persistence::{Authenticator, MasterKey, PgOptions, Store, StoreOptions, TenantScope};
use tracing_subscriber::EnvFilter;

use crate::boot::{self, ServeOptions};
use crate::config::{FileConfig, Profile};

#[derive(Debug, Parser)]
#[command(
    name = "steward",
    version,
    about = "Supervised AI workflows for IT operations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service from a config file and STEWARD_* variables.
    Serve {
        #[arg(long, env = "STEWARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the whole incident-triage path locally against stand-ins, and print its timeline.
    Demo {
        /// Click Reject instead of Approve.
        #[arg(long)]
        reject: bool,
    },
    /// Run the local stand-ins for ServiceNow, Slack and an LLM provider as a process.
    Standins {
        #[arg(long, default_value = "127.0.0.1:18081")]
        servicenow: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:18082")]
        slack: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:18083")]
        llm: std::net::SocketAddr,
        /// Also serve the OpenID provider stand-in here (say 127.0.0.1:18084).
        #[arg(long)]
        oidc: Option<std::net::SocketAddr>,
        /// Serve ServiceNow, Slack and the LLM over HTTPS with this PEM certificate chain
        /// (with --tls-key); the URLs printed are then https. Without it they serve plain
        /// HTTP. The OpenID provider stand-in stays plain HTTP.
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// CA certificates (PEM) the Slack stand-in trusts when it delivers a click to an
        /// https Steward (with --tls-cert).
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        ca_file: Option<PathBuf>,
    },
    /// Sign in to a server's ops API as yourself, through its identity provider (device
    /// code); `steward runs` and `steward writes` then use the saved ID token.
    Login(crate::login_cli::LoginArgs),
    /// Remove the sign-in `steward login` saved.
    Logout(crate::login_cli::LogoutArgs),
    /// Webhook tools for operators.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Runs across tenants, through a running server's ops API: list, inspect, retry, cancel.
    Runs {
        #[command(subcommand)]
        command: Box<crate::runs_cli::RunsCommand>,
    },
    /// Tenants through a running server's API: create, list, check, configure, delete.
    Tenants {
        #[command(subcommand)]
        command: Box<crate::tenants_cli::TenantsCommand>,
    },
    /// A tenant's report for a time range from a running server (runs by outcome, time to
    /// approval, writebacks, policy denials, LLM use, refused webhooks), as JSON or CSV.
    Report(Box<crate::report_cli::ReportArgs>),
    /// Evidence bundles: export one from a running server, verify one offline.
    Evidence {
        #[command(subcommand)]
        command: Box<crate::evidence_cli::EvidenceCommand>,
    },
    /// A tenant's secrets through a running server's API (write-only).
    Secrets {
        #[command(subcommand)]
        command: Box<crate::tenants_cli::SecretsCommand>,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (what `GET /openapi.json` serves).
    Openapi,
    /// Check the environment the binary runs in (the container image): the CA roots, name
    /// resolution, a non-root user, the data directory, a read-only root filesystem.
    Selfcheck(crate::selfcheck::SelfcheckArgs),
    /// The kill switch, through a running server's API: pause or resume every write to
    /// ServiceNow, for the platform or one tenant (`--tenant`).
    Writes {
        #[command(subcommand)]
        command: Box<crate::writes_cli::WritesCommand>,
    },
    /// Emergency operator access, with the operator token: open a time-limited grant for one
    /// person (its token printed once), list grants, close one.
    BreakGlass {
        #[command(subcommand)]
        command: Box<crate::break_glass_cli::BreakGlassCommand>,
    },
    /// The go/no-go checklist of a deployment, written as a signed artifact; `verify` checks
    /// one offline, `keygen` makes its signing key.
    Checklist(Box<crate::checklist::ChecklistArgs>),
    /// Back up the whole database, with a manifest beside the file (SQLite: online, while
    /// the server runs; PostgreSQL: pg_dump as the backup role).
    Backup(crate::backup_cli::BackupArgs),
    /// Restore a backup (SQLite: over a file no server uses; PostgreSQL: into an empty
    /// database), then verify every tenant's audit chain. Ends with a JSON summary line.
    Restore(crate::backup_cli::RestoreArgs),
    /// Vault key tools, run against the database with the server stopped.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-wrap every tenant's data key with a new master key. Safe to run again if it was
    /// interrupted; afterwards the server starts only with the new key.
    RotateMaster {
        #[arg(long, env = "STEWARD_CONFIG")]
        config: Option<PathBuf>,
        /// File holding the new master key (64 hex digits or base64 of 32 bytes), for a
        /// rotation with the server stopped. Without it, the configuration's
        /// `previous_master_key` is re-wrapped to its `master_key` while servers run with both.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Say which check of a Standard Webhooks delivery passes or fails, and why.
    Check {
        /// File holding the `whsec_…` secret.
        #[arg(long)]
        secret_file: PathBuf,
        /// A header, as `name: value` (repeat for webhook-id, webhook-timestamp,
        /// webhook-signature).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// The exact body bytes that were received.
        #[arg(long)]
        body_file: PathBuf,
        /// Judge at this Unix time instead of now.
        #[arg(long)]
        at: Option<i64>,
    },
    /// Sign a body as a Standard Webhooks sender does and post it to a tenant's source.
    Send(crate::webhooks_cli::SendArgs),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify a tenant's hash chain; names the first bad entry if there is one.
    Verify {
        #[arg(long)]
        tenant: String,
        #[arg(long, env = "STEWARD_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(config.as_deref()).await,
        Command::Openapi => {
            println!("{}", steward_api::openapi::to_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { reject } => crate::demo::run(reject).await,
        Command::Standins {
            servicenow,
            slack,
            llm,
            oidc,
            tls_cert,
            tls_key,
            ca_file,
        } => {
            init_logs(false);
            let oidc = match oidc {
                Some(addr) => Some(
                    crate::standins_oidc::OidcStandin::start_on(Default::default(), addr).await?,
                ),
                None => None,
            };
            let tls = match (tls_cert, tls_key) {
                (Some(cert_file), Some(key_file)) => Some(crate::standins::StandinTls {
                    cert_file,
                    key_file,
                    click_roots: match ca_file {
                        Some(path) => steward_adapters::http::read_ca_file(&path)
                            .map_err(anyhow::Error::msg)?,
                        None => Vec::new(),
                    },
                }),
                _ => None,
            };
            crate::standins::serve_forever(
                Default::default(),
                servicenow,
                slack,
                llm,
                oidc,
                tls.as_ref(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Login(args) => crate::login_cli::run_login(args).await,
        Command::Logout(args) => crate::login_cli::run_logout(args),
        Command::Webhooks {
            command:
                WebhooksCommand::Check {
                    secret_file,
                    headers,
                    body_file,
                    at,
                },
        } => webhooks_check(&secret_file, &headers, &body_file, at),
        Command::Webhooks {
            command: WebhooksCommand::Send(args),
        } => crate::webhooks_cli::send(args).await,
        Command::Audit {
            command: AuditCommand::Verify { tenant, config },
        } => audit_verify(&tenant, config.as_deref()).await,
        Command::Runs { command } => crate::runs_cli::run(*command).await,
        Command::Tenants { command } => crate::tenants_cli::run(*command).await,
        Command::Secrets { command } => crate::tenants_cli::run_secrets(*command).await,
        Command::Evidence { command } => crate::evidence_cli::run(*command).await,
        Command::Report(args) => crate::report_cli::run(*args).await,
        Command::Writes { command } => crate::writes_cli::run(*command).await,
        Command::BreakGlass { command } => crate::break_glass_cli::run(*command).await,
        Command::Checklist(args) => crate::checklist::run(*args).await,
        Command::Backup(args) => crate::backup_cli::backup(args).await,
        Command::Restore(args) => crate::backup_cli::restore(args).await,
        Command::Selfcheck(args) => crate::selfcheck::run(args).await,
        Command::Keys {
            command:
                KeysCommand::RotateMaster {
                    config,
                    new_key_file,
                },
        } => rotate_master(config.as_deref(), new_key_file.as_deref()).await,
    }
}

/// JSON logs to stderr, filtered by `STEWARD_LOG` (default `info`).
pub fn init_logs(json: bool) {
    init_logs_with(json, None);
}

/// Logs as [`init_logs`] does, and, with `telemetry`, the spans that pass the same filter
/// exported as OpenTelemetry traces. Only the first call in a process takes effect.
pub fn init_logs_with(json: bool, telemetry: Option<&crate::telemetry::Telemetry>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_env("STEWARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(telemetry.map(|t| t.layer()));
    let _ = if json {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt.compact()).try_init()
    };
}

async fn serve(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = FileConfig::load(config_path).map_err(anyhow::Error::msg)?;
    config.check().map_err(anyhow::Error::msg)?;
    let telemetry = match config.telemetry.options().map_err(anyhow::Error::msg)? {
        Some(mut options) => {
            options.https_only = config.https_only();
            Some(crate::telemetry::Telemetry::start(&options)?)
        }
        None => None,
    };
    init_logs_with(true, telemetry.as_ref());
    let base = config_path.and_then(Path::parent).unwrap_or(Path::new("."));
    let master_key = master_key(&config, base)?;
    if master_key.is_dev() {
        tracing::warn!(
            "no master key is configured: the dev profile seals secrets and content under the \
             published dev key, which protects nothing; set master_key (or \
             STEWARD_MASTER_KEY_FILE) before storing real data"
        );
    }
    let mut opts = ServeOptions::new(config.database.clone(), master_key);
    opts.postgres = postgres_options(&config, base)?;
    opts.ops_token = config
        .ops_token
        .as_ref()
        .map(|r| r.read(base))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    opts.oidc = config
        .oidc
        .as_ref()
        .map(|o| o.settings(config.profile, config.allow_plain_http, base))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    opts.listen = config.listen;
    opts.server_limits = config.http.limits().map_err(anyhow::Error::msg)?;
    opts.metrics = config.metrics.enabled(config.profile);
    opts.audit_verify_every = config.metrics.audit_verify_every(config.profile);
    opts.retention_sweep = config.retention.sweep().map_err(anyhow::Error::msg)?;
    opts.catchup = config.catchup.options().map_err(anyhow::Error::msg)?;
    opts.actors.cluster = config
        .cluster
        .as_ref()
        .map(|c| {
            let env = std::env::var("STEWARD_NODE_ID")
                .ok()
                .filter(|v| !v.is_empty());
            c.options(env, opts.postgres.is_some())
        })
        .transpose()
        .map_err(anyhow::Error::msg)?;
    opts.evidence = match config
        .evidence
        .schedule(config.profile, config.allow_plain_http)
        .map_err(anyhow::Error::msg)?
    {
        Some((every, url)) => {
            let witness = url
                .map(|u| steward_actors::witness::Witness::new(u, Duration::from_secs(10), 3))
                .transpose()?;
            Some((every, witness))
        }
        None => None,
    };
    opts.region = config.region;
    opts.peer_base_urls = config.peers().map_err(anyhow::Error::msg)?;
    opts.actors.budget.max_restarts = config.runs.max_restarts;
    opts.actors.budget.window = Duration::from_secs(config.runs.restart_window_secs);
    opts.actors.passivate_after = Duration::from_secs(config.runs.passivate_after_secs);
    opts.actors.max_live_runs = config.runs.max_live_actors;
    opts.actors.limits = config.limits.clone();
    opts.delivery_retention =
        Duration::from_secs(u64::from(config.delivery_retention_days) * 86_400);
    opts.tls = config
        .tls
        .options(config.profile, base)
        .map_err(anyhow::Error::msg)?;
    // Plain HTTP to connectors only in the dev profile or where a test setup allows it;
    // production refuses `allow_plain_http` in `FileConfig::check`. `boot::start` refuses a
    // declared tenant's plain-HTTP URL through the same check the API and the runs make.
    let https_only = config.https_only();
    opts.http = HttpSettings {
        https_only,
        egress: config
            .egress
            .egress(config.profile)
            .map_err(anyhow::Error::msg)?,
        extra_roots: config
            .http
            .outbound_roots(base)
            .map_err(anyhow::Error::msg)?,
        ..HttpSettings::default()
    };
    for t in &config.tenants {
        let spec = boot::tenant_from_config(t, base)?;
        if spec.id.region() != config.region {
            anyhow::bail!(
                "tenant {} is homed in region {}, but this deployment serves {}",
                spec.id,
                spec.id.region(),
                config.region
            );
        }
        opts.tenants.push(spec);
    }
    opts.telemetry = telemetry.clone();
    let mut server = boot::start(opts).await?;
    let signalled = tokio::select! {
        result = server.serving() => {
            result?;
            false
        }
        () = shutdown_signal() => true,
    };
    if signalled {
        tracing::info!("Shutting down.");
        server.shutdown().await;
    }
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) or SIGTERM (what a container runtime sends to stop a process).
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The configured master key, carrying the previous one while a rotation is under way.
fn master_key(config: &FileConfig, base: &Path) -> anyhow::Result<MasterKey> {
    let read = |r: &crate::config::SecretRef, what: &str| -> anyhow::Result<MasterKey> {
        let value = r.read(base).map_err(anyhow::Error::msg)?;
        let key = MasterKey::parse(secrecy::ExposeSecret::expose_secret(&value))
            .with_context(|| what.to_owned())?;
        if key.is_dev() && config.profile != Profile::Dev {
            anyhow::bail!("the dev master key is refused outside the dev profile");
        }
        Ok(key)
    };
    let current = match &config.master_key {
        Some(r) => read(r, "master_key")?,
        None if config.profile == Profile::Dev => MasterKey::dev(),
        None => anyhow::bail!("a master key is required outside the dev profile"),
    };
    match &config.previous_master_key {
        Some(r) => {
            let previous = read(r, "previous_master_key")?;
            if previous.key_id() == current.key_id() {
                anyhow::bail!("previous_master_key is the master key itself; remove it");
            }
            Ok(current.with_previous(previous))
        }
        None => Ok(current),
    }
}

fn webhooks_check(
    secret_file: &Path,
    headers: &[String],
    body_file: &Path,
    at: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let secret = std::fs::read_to_string(secret_file)
        .with_context(|| format!("reading {}", secret_file.display()))?;
    let body =
        std::fs::read(body_file).with_context(|| format!("reading {}", body_file.display()))?;
    let mut id = None;
    let mut ts = None;
    let mut sig = None;
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header `{h}` is not `name: value`"))?;
        let value = value.trim().to_owned();
        match name.trim().to_ascii_lowercase().as_str() {
            "webhook-id" => id = Some(value),
            "webhook-timestamp" => ts = Some(value),
            "webhook-signature" => sig = Some(value),
            other => println!("ignored header: {other}"),
        }
    }
    let now = at.unwrap_or_else(|| steward_core::Clock::now_secs(&steward_core::SystemClock));
    println!("judged at:  {now} (tolerance ±{TOLERANCE_SECS} s)");
    println!("body:       {} bytes", body.len());
    let key = match WebhookSecret::parse(secret.trim()) {
        Ok(k) => {
            println!("secret:     ok (whsec_ key decoded)");
            k
        }
        Err(e) => {
            println!("secret:     FAIL: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match verify_standard(
        &key,
        id.as_deref(),
        ts.as_deref(),
        sig.as_deref(),
        &body,
        now,
    ) {
        Ok(d) => {
            println!("headers:    ok");
            println!("timestamp:  ok ({} s from now)", now - d.timestamp);
            println!("signature:  ok (a v1 signature matches)");
            println!("result:     PASS: delivery {} verifies", d.id);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let stage = if e.is_timestamp_problem() {
                "timestamp"
            } else {
                "signature"
            };
            println!("{stage:<11} FAIL [{}]: {e}", e.reason_code());
            println!("result:     FAIL: the delivery would be refused with 401");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The PostgreSQL store the config names, if it names one.
fn postgres_options(config: &FileConfig, base: &Path) -> anyhow::Result<Option<PgOptions>> {
    let Some(url) = &config.postgres_url else {
        return Ok(None);
    };
    let mut pg = PgOptions::new(url.read(base).map_err(anyhow::Error::msg)?);
    pg.migrate_url = config
        .postgres_migrate_url
        .as_ref()
        .map(|r| r.read(base))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    Ok(Some(pg))
}

/// Re-wraps every data key from the configured master key to the one in `new_key_file`,
/// printing `n/N tenants` as it goes.
async fn rotate_master(
    config_path: Option<&Path>,
    new_key_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let config = FileConfig::load(config_path).map_err(anyhow::Error::msg)?;
    let base = config_path.and_then(Path::parent).unwrap_or(Path::new("."));
    let configured = master_key(&config, base)?;
    let live = new_key_file.is_none();
    let (old, new) = match (new_key_file, configured.previous()) {
        (Some(_), Some(_)) => anyhow::bail!(
            "the configuration names a previous_master_key: a rotation is under way; run \
             `steward keys rotate-master` without --new-key-file to finish it"
        ),
        (Some(file), None) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let new = MasterKey::parse(&text)?;
            if new.is_dev() && config.profile != Profile::Dev {
                anyhow::bail!("the dev master key is refused outside the dev profile");
            }
            (configured, new)
        }
        (None, Some(previous)) => (previous.clone(), configured.clone().without_previous()),
        (None, None) => anyhow::bail!(
            "give --new-key-file, or configure the new key as master_key and the current one \
             as previous_master_key to rotate while servers run"
        ),
    };
    let store = open_store(&config, base).await?;
    println!("rotating master key {} to {}", old.key_id(), new.key_id());
    let rewrapped = store
        .rotate_master_key(&old, &new, |done, total| println!("{done}/{total} tenants"))
        .await?;
    if live {
        println!(
            "result: re-wrapped {rewrapped} data keys; the vault now requires master key {}. \
             Remove previous_master_key from every node's configuration at its next restart.",
            new.key_id()
        );
    } else {
        println!(
            "result: re-wrapped {rewrapped} data keys; the vault now requires master key {}. \
             Configure it before starting the server.",
            new.key_id()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn open_store(config: &FileConfig, base: &Path) -> anyhow::Result<Store> {
    Ok(match postgres_options(config, base)? {
        Some(pg) => Store::open_postgres(pg).await?,
        None => Store::open(StoreOptions::new(&config.database)).await?,
    })
}

async fn audit_verify(tenant: &str, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = FileConfig::load(config_path).map_err(anyhow::Error::msg)?;
    let tenant = TenantId::parse(tenant).map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = config_path.and_then(Path::parent).unwrap_or(Path::new("."));
    let store = open_store(&config, base).await?;
    if !store.tenant_exists(&tenant).await? {
        println!("result:   FAIL: tenant {tenant} is not known to this database");
        return Ok(ExitCode::FAILURE);
    }
    let scope = TenantScope::assume(tenant.clone(), Authenticator::Operator);
    let report = store.verify_audit(&scope).await?;
    println!("tenant:   {tenant}");
    println!("entries:  {}", report.entries);
    println!("head:     {}", report.head_hash);
    match report.first_bad {
        None => {
            println!("result:   PASS: the chain verifies");
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!(
                "result:   FAIL: first bad entry is seq {}: {}",
                b.seq, b.reason
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
