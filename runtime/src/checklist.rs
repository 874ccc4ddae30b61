//! `steward checklist`: the go/no-go checklist of a deployment, written as a signed artifact.
//!
//! `steward checklist --env staging|production --config FILE --url URL …` checks each
//! deployment (a config file and the base URL it serves, given in pairs, one pair per region)
//! and prints every item as `pass`, `fail`, `needs sign-off` or `signed off`:
//!
//! | item | checked by |
//! |---|---|
//! | `<region>.security.profile` | the config's profile is the environment's; no `allow_plain_http` |
//! | `<region>.security.tls` | `[tls]` serves a certificate valid for 14 more days, or ends at a proxy; the URL is `https://` and answers |
//! | `<region>.security.encryption_at_rest` | a master key is configured, reads and is not the dev key |
//! | `<region>.security.database_role` | PostgreSQL: the service role is no superuser, cannot bypass RLS, owns nothing, and every tenant table has RLS on; SQLite: the file is its owner's alone |
//! | `<region>.security.limits` | rate limits on, with the request limits valid |
//! | `<region>.security.headers` | the live answer carries CSP, nosniff, `X-Frame-Options`, `Referrer-Policy`, `Cache-Control: no-store` and, over HTTPS, HSTS |
//! | `<region>.product.smoke` | a smoke tenant of the region has a `completed` run within `--smoke-within-hours` |
//! | `<region>.product.reporting` | the smoke tenant's report answers as JSON |
//! | `<region>.product.evidence` | the smoke tenant's evidence exports and verifies offline |
//! | `ops.alerts` | `promtool check rules` passes and every metric the rules read is exported live |
//! | `ops.oncall` | needs sign-off: an on-call rotation is named |
//! | `ops.backup_drill` | the last `steward restore` drill passed, within `--drill-max-age-days` |
//!
//! Sign-offs are named arguments, `--sign-off item=ops.oncall,who=ana@example.com,role=SRE
//! lead`; with `--test-identity` they are recorded as given by a test identity (CI). The
//! decision is `go` when no item fails and every item that needs a sign-off has one; the
//! artifact (`--out`, JSON) holds the inputs, the items, the sign-offs and the decision, signed
//! with ed25519 (`--signing-key`, made by `steward checklist keygen`). The command exits 0 on
//! `go`, 3 on `no-go`: a production go is refused while any item fails.
//!
//! `steward checklist verify ARTIFACT [--public-key HEX]` checks an artifact offline: its key
//! id, its signature over the canonical JSON of everything but the signature, and that its
//! decision follows from its items and sign-offs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use ed25519_dalek::{Signer, SigningKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steward_core::TenantId;
use steward_persistence::MasterKey;
use steward_persistence::evidence::bundle::{VerifyOptions, verify_bundle};
use steward_persistence::evidence::{decode_32, framed, key_id_for, verify_signature};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

use crate::config::{FileConfig, Profile};

/// The artifact's format name.
pub const FORMAT: &str = "steward-checklist-v1";
/// Domain tag of the artifact's signed bytes.
pub const DOMAIN: &[u8] = b"steward-checklist-v1";
/// The largest artifact `verify` reads.
pub const MAX_ARTIFACT_BYTES: u64 = 4 * 1024 * 1024;
/// The largest restore drill record read.
const MAX_DRILL_BYTES: u64 = 1024 * 1024;
/// The largest alert rules file read.
const MAX_RULES_BYTES: u64 = 1024 * 1024;
/// The fewest days a served certificate must still be valid for.
const CERT_MIN_DAYS: i64 = 14;
/// How long one probe of a deployment may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// The exit code of a checklist that ran and decided `no-go`.
pub const NO_GO: u8 = 3;
/// The longest text of a sign-off field.
const MAX_SIGN_OFF_FIELD: usize = 200;

/// The environment a checklist is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    Staging,
    Production,
}

impl Env {
    fn profile(self) -> Profile {
        match self {
            Env::Staging => Profile::Staging,
            Env::Production => Profile::Production,
        }
    }
}

/// `steward checklist …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ChecklistArgs {
    #[command(subcommand)]
    pub command: Option<ChecklistCommand>,
    #[command(flatten)]
    pub check: CheckArgs,
}

/// `steward checklist verify|keygen`.
#[derive(Debug, Subcommand)]
pub enum ChecklistCommand {
    /// Verify a checklist artifact offline: key id, signature, and its decision.
    Verify {
        artifact: PathBuf,
        /// The signer's public key (64 hex digits), given out of band; without it the
        /// artifact's own key is used and the output says so.
        #[arg(long)]
        public_key: Option<String>,
        /// Exit 3 when the artifact is valid but its decision is `no-go`.
        #[arg(long)]
        require_go: bool,
    },
    /// Make a checklist signing key: its 32-byte seed, hex, in a new file of mode 0600; the
    /// public key is printed.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

/// The inputs of a checklist run.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The environment the deployments are.
    #[arg(long, value_enum, required = true)]
    pub env: Option<Env>,
    /// A deployment's config file (repeatable; paired in order with `--url`).
    #[arg(long = "config", required = true)]
    pub configs: Vec<PathBuf>,
    /// The base URL that deployment serves (repeatable; paired in order with `--config`).
    #[arg(long = "url", required = true)]
    pub urls: Vec<Url>,
    /// A file holding the operator's token for the ops API; without it each config's
    /// `ops_token` is read.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust, besides the built-in roots, when probing.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// A tenant that smoke runs go through (repeatable); each deployment uses those of its
    /// region.
    #[arg(long = "smoke-tenant")]
    pub smoke_tenants: Vec<String>,
    /// How recent a smoke tenant's completed run must be.
    #[arg(long, default_value_t = 24)]
    pub smoke_within_hours: u64,
    /// The Prometheus alert rules the deployments are watched with.
    #[arg(long, default_value = "deploy/prometheus/alerts.yml")]
    pub alerts: PathBuf,
    /// The output of the last `steward restore` drill (its last line is the JSON summary).
    #[arg(long)]
    pub restore_report: Option<PathBuf>,
    /// How old the last restore drill may be.
    #[arg(long, default_value_t = 30)]
    pub drill_max_age_days: u64,
    /// A sign-off: `item=ID,who=NAME,role=ROLE` (repeatable).
    #[arg(long = "sign-off")]
    pub sign_offs: Vec<String>,
    /// The sign-offs come from a test identity (CI); the artifact records it.
    #[arg(long)]
    pub test_identity: bool,
    /// The signing key file `steward checklist keygen` made.
    #[arg(long, required = true)]
    pub signing_key: Option<PathBuf>,
    /// Where to write the signed artifact.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
}

/// The result of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    NeedsSignOff,
    SignedOff,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::NeedsSignOff => "needs sign-off",
            Status::SignedOff => "signed off",
        }
    }
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// `us.security.tls`, `ops.oncall`, …
    pub id: String,
    pub status: Status,
    /// What was found, in a sentence or two.
    pub detail: String,
}

/// A person's sign-off of an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignOff {
    pub item: String,
    pub who: String,
    pub role: String,
    /// Given by a test identity (CI), not a person.
    pub test_identity: bool,
}

/// One deployment's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentInput {
    pub region: String,
    pub url: String,
    pub config_file: String,
    /// SHA-256 (hex) of the config file's bytes.
    pub config_sha256: String,
    pub smoke_tenants: Vec<String>,
}

/// What the checklist was run on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    pub deployments: Vec<DeploymentInput>,
    pub alerts_file: String,
    /// SHA-256 (hex) of the alert rules, when they could be read.
    pub alerts_sha256: Option<String>,
    /// SHA-256 (hex) of the restore drill record, when one was given and read.
    pub restore_report_sha256: Option<String>,
    pub smoke_within_hours: u64,
    pub drill_max_age_days: u64,
    /// The version of the `steward` binary that ran the checklist.
    pub steward_version: String,
}

/// The signer's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactKey {
    /// `ck-` and 16 hex digits, derived from the public key.
    pub key_id: String,
    pub algorithm: String,
    pub public_key: String,
}

/// The signed checklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub format: String,
    pub env: Env,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub inputs: Inputs,
    pub items: Vec<Item>,
    pub sign_offs: Vec<SignOff>,
    /// `go` or `no-go`.
    pub decision: String,
    pub key: ArtifactKey,
    /// Hex ed25519 signature over [`Artifact::signed_bytes`].
    pub signature: String,
}

impl Artifact {
    /// The domain tag and the canonical JSON of the artifact with an empty signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature.clear();
        let json = serde_json::to_vec(&unsigned).unwrap_or_default();
        framed(DOMAIN, &[&json])
    }
}

/// `go` when no item fails and none still needs a sign-off.
pub fn decide(items: &[Item]) -> &'static str {
    let ok = items
        .iter()
        .all(|i| matches!(i.status, Status::Pass | Status::SignedOff));
    if ok { "go" } else { "no-go" }
}

/// Runs a `steward checklist …` command.
pub async fn run(args: ChecklistArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ChecklistCommand::Verify {
            artifact,
            public_key,
            require_go,
        }) => verify_command(&artifact, public_key.as_deref(), require_go),
        Some(ChecklistCommand::Keygen { out }) => keygen(&out),
        None => check(args.check).await,
    }
}

fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let mut seed = secrecy::zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
    let text = secrecy::zeroize::Zeroizing::new(hex::encode(seed.as_ref()));
    write_private(out, text.as_bytes())?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    println!("{} {}", key_id_for("ck-", &public), hex::encode(public));
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` (it must not exist) with mode 0600 and writes `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Reads a signing key file: 64 lowercase hex digits, readable by its owner alone.
fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
    }
    let text = secrecy::zeroize::Zeroizing::new(
        read_bounded(path, 1024).with_context(|| format!("reading {}", path.display()))?,
    );
    let text = std::str::from_utf8(&text).context("the signing key is not text")?;
    let seed = decode_32(text.trim()).context(
        "the signing key file must hold 64 lowercase hex digits (steward checklist keygen)",
    )?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads at most `limit` bytes of a file; a larger file is an error.
fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        bail!("{} is larger than {limit} bytes", path.display());
    }
    Ok(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Parses `item=ID,who=NAME,role=ROLE`.
pub fn parse_sign_off(text: &str, test_identity: bool) -> anyhow::Result<SignOff> {
    let mut fields = BTreeMap::new();
    for part in text.split(',') {
        let (key, value) = part.split_once('=').with_context(|| {
            format!(
                "sign-off `{}`: expected item=…,who=…,role=…",
                text.escape_default()
            )
        })?;
        let key = key.trim();
        let value = value.trim();
        if !matches!(key, "item" | "who" | "role") {
            bail!("sign-off: unknown field `{}`", key.escape_default());
        }
        if value.is_empty() || value.chars().count() > MAX_SIGN_OFF_FIELD {
            bail!("sign-off: `{key}` must be 1 to {MAX_SIGN_OFF_FIELD} characters");
        }
        if value.chars().any(char::is_control) {
            bail!("sign-off: `{key}` holds a control character");
        }
        if fields.insert(key, value.to_owned()).is_some() {
            bail!("sign-off: `{key}` is given twice");
        }
    }
    let mut take = |k: &str| {
        fields
            .remove(k)
            .with_context(|| format!("sign-off `{}` names no {k}", text.escape_default()))
    };
    Ok(SignOff {
        item: take("item")?,
        who: take("who")?,
        role: take("role")?,
        test_identity,
    })
}

/// A deployment as the checklist sees it.
struct Deployment {
    config: FileConfig,
    base: PathBuf,
    url: Url,
    input: DeploymentInput,
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    let env = args.env.context("--env is required")?;
    let out = args.out.clone().context("--out is required")?;
    let key_path = args
        .signing_key
        .clone()
        .context("--signing-key is required")?;
    let signing = read_signing_key(&key_path)?;
    if args.configs.len() != args.urls.len() {
        bail!(
            "give one --url per --config, in the same order ({} configs, {} URLs)",
            args.configs.len(),
            args.urls.len()
        );
    }
    let sign_offs = args
        .sign_offs
        .iter()
        .map(|s| parse_sign_off(s, args.test_identity))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut smoke = Vec::new();
    for t in &args.smoke_tenants {
        smoke.push(TenantId::parse(t).map_err(|e| anyhow::anyhow!("--smoke-tenant {t}: {e}"))?);
    }
    let http = probe_client(args.ca_file.as_deref())?;

    let mut deployments = Vec::new();
    for (path, url) in args.configs.iter().zip(&args.urls) {
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            bail!("--url {url} is not an http(s) URL");
        }
        let bytes = read_bounded(path, 1024 * 1024)
            .with_context(|| format!("reading config {}", path.display()))?;
        let config = FileConfig::load(Some(path)).map_err(anyhow::Error::msg)?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let region = config.region;
        let tenants = smoke
            .iter()
            .filter(|t| t.region() == region)
            .map(ToString::to_string)
            .collect();
        deployments.push(Deployment {
            input: DeploymentInput {
                region: region.to_string(),
                url: url.to_string(),
                config_file: path.display().to_string(),
                config_sha256: sha256_hex(&bytes),
                smoke_tenants: tenants,
            },
            config,
            base,
            url: url.clone(),
        });
    }

    let mut items = Vec::new();
    let mut scrapes = Vec::new();
    for d in &deployments {
        let token = match &args.token_file {
            Some(p) => Some(crate::api_client::read_token(
                Some(p),
                "STEWARD_OPS_TOKEN",
                None,
            )?),
            None => d
                .config
                .ops_token
                .as_ref()
                .and_then(|r| r.read(&d.base).ok()),
        };
        let probe = probe(&http, &d.url).await;
        let region = d.input.region.clone();
        let id = |name: &str| format!("{region}.{name}");
        items.push(profile_item(id("security.profile"), env, &d.config));
        items.push(tls_item(id("security.tls"), d, &probe));
        items.push(at_rest_item(id("security.encryption_at_rest"), d));
        items.push(database_item(id("security.database_role"), d).await);
        items.push(limits_item(id("security.limits"), &d.config));
        items.push(headers_item(id("security.headers"), &d.url, &probe));
        let smoke_tenant = d.input.smoke_tenants.first().cloned();
        items.push(
            smoke_item(
                id("product.smoke"),
                &http,
                d,
                token.as_ref(),
                args.smoke_within_hours,
            )
            .await,
        );
        items.push(
            reporting_item(
                id("product.reporting"),
                &http,
                d,
                token.as_ref(),
                smoke_tenant.as_deref(),
            )
            .await,
        );
        items.push(
            evidence_item(
                id("product.evidence"),
                &http,
                d,
                token.as_ref(),
                smoke_tenant.as_deref(),
            )
            .await,
        );
        scrapes.push((d.url.clone(), scrape(&http, &d.url).await));
    }
    let rules = read_bounded(&args.alerts, MAX_RULES_BYTES).ok();
    items.push(alerts_item(&args.alerts, rules.as_deref(), &scrapes));
    items.push(Item {
        id: "ops.oncall".into(),
        status: Status::NeedsSignOff,
        detail: "an on-call rotation is named for this deployment".into(),
    });
    let (drill, drill_sha) = drill_item(args.restore_report.as_deref(), args.drill_max_age_days);
    items.push(drill);
    apply_sign_offs(&mut items, &sign_offs)?;

    let decision = decide(&items);
    let public = signing.verifying_key().to_bytes();
    let mut artifact = Artifact {
        format: FORMAT.into(),
        env,
        created_at: now_rfc3339(),
        inputs: Inputs {
            deployments: deployments.iter().map(|d| d.input.clone()).collect(),
            alerts_file: args.alerts.display().to_string(),
            alerts_sha256: rules.as_deref().map(sha256_hex),
            restore_report_sha256: drill_sha,
            smoke_within_hours: args.smoke_within_hours,
            drill_max_age_days: args.drill_max_age_days,
            steward_version: env!("CARGO_PKG_VERSION").into(),
        },
        items,
        sign_offs,
        decision: decision.into(),
        key: ArtifactKey {
            key_id: key_id_for("ck-", &public),
            algorithm: "ed25519".into(),
            public_key: hex::encode(public),
        },
        signature: String::new(),
    };
    artifact.signature = hex::encode(signing.sign(&artifact.signed_bytes()).to_bytes());
    let json = serde_json::to_vec_pretty(&artifact)?;
    std::fs::write(&out, &json).with_context(|| format!("writing {}", out.display()))?;

    print_items(&artifact);
    println!(
        "decision: {} ({:?}); artifact {} signed by {}",
        artifact.decision,
        env,
        out.display(),
        artifact.key.key_id
    );
    Ok(if decision == "go" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NO_GO)
    })
}

fn print_items(artifact: &Artifact) {
    for item in &artifact.items {
        println!(
            "{:<16} {:<38} {}",
            item.status.label(),
            item.id,
            item.detail
        );
    }
    for s in &artifact.sign_offs {
        println!(
            "sign-off: {} by {} ({}){}",
            s.item,
            s.who,
            s.role,
            if s.test_identity {
                ", a test identity"
            } else {
                ""
            }
        );
    }
}

/// Marks the items the sign-offs name; a sign-off of an unknown item, or of an item that
/// needs none, is an error (a sign-off cannot pass a failed check).
fn apply_sign_offs(items: &mut [Item], sign_offs: &[SignOff]) -> anyhow::Result<()> {
    for s in sign_offs {
        let item = items
            .iter_mut()
            .find(|i| i.id == s.item)
            .with_context(|| format!("sign-off names no item of this checklist: {}", s.item))?;
        match item.status {
            Status::NeedsSignOff | Status::SignedOff => item.status = Status::SignedOff,
            _ => bail!(
                "{} is checked, not signed off; a sign-off cannot change its result",
                s.item
            ),
        }
    }
    Ok(())
}

fn probe_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        let pem = read_bounded(path, 1024 * 1024)
            .with_context(|| format!("reading {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not PEM certificates", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// What `GET /healthz` answered.
struct Probe {
    result: Result<reqwest::header::HeaderMap, String>,
}

async fn probe(http: &reqwest::Client, url: &Url) -> Probe {
    let result = async {
        let target = url.join("healthz").map_err(|e| e.to_string())?;
        let response = http
            .get(target)
            .send()
            .await
            .map_err(|e| steward_adapters::http::error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("/healthz answered {}", response.status()));
        }
        Ok(response.headers().clone())
    }
    .await;
    Probe { result }
}

fn pass(id: String, detail: impl Into<String>) -> Item {
    Item {
        id,
        status: Status::Pass,
        detail: detail.into(),
    }
}

fn fail(id: String, detail: impl Into<String>) -> Item {
    Item {
        id,
        status: Status::Fail,
        detail: detail.into(),
    }
}

fn profile_item(id: String, env: Env, config: &FileConfig) -> Item {
    if config.profile != env.profile() {
        return fail(
            id,
            format!(
                "the config's profile is {:?}, not {:?}",
                config.profile,
                env.profile()
            ),
        );
    }
    if config.allow_plain_http {
        return fail(
            id,
            "allow_plain_http is set: connectors may be called over plain HTTP",
        );
    }
    if let Err(e) = config.check() {
        return fail(id, format!("the config is refused: {e}"));
    }
    pass(
        id,
        format!("profile {:?}; plain HTTP refused", config.profile),
    )
}

fn tls_item(id: String, d: &Deployment, probe: &Probe) -> Item {
    let tls = &d.config.tls;
    let served = match tls.options(d.config.profile, &d.base) {
        Ok(Some(options)) => match crate::tls::load_pair(&options) {
            Ok(pair) => {
                let days = (pair.not_after - OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
                if days < CERT_MIN_DAYS {
                    return fail(
                        id,
                        format!(
                            "the served certificate expires in {days} days (under {CERT_MIN_DAYS})"
                        ),
                    );
                }
                format!("serves {} for {days} more days", pair.subject)
            }
            Err(e) => return fail(id, format!("the certificate pair does not load: {e}")),
        },
        Ok(None) if tls.terminates_at_proxy => "TLS ends at the proxy in front".to_owned(),
        Ok(None) => return fail(id, "no TLS: [tls] sets neither a certificate nor a proxy"),
        Err(e) => return fail(id, e),
    };
    if d.url.scheme() != "https" {
        return fail(id, format!("{} is plain HTTP", d.url));
    }
    match &probe.result {
        Ok(_) => pass(id, format!("{served}; {} answers over HTTPS", d.url)),
        Err(e) => fail(id, format!("{} does not answer over HTTPS: {e}", d.url)),
    }
}

fn at_rest_item(id: String, d: &Deployment) -> Item {
    let Some(reference) = &d.config.master_key else {
        return fail(
            id,
            "no master key: content would be sealed under the dev key",
        );
    };
    let key = match reference.read(&d.base) {
        Ok(text) => match MasterKey::parse(text.expose_secret()) {
            Ok(key) => key,
            Err(e) => return fail(id, format!("the master key does not parse: {e}")),
        },
        Err(e) => return fail(id, e),
    };
    if key.is_dev() {
        return fail(id, "the master key is the published dev key");
    }
    let rotation = if d.config.previous_master_key.is_some() {
        "; a rotation is under way"
    } else {
        ""
    };
    pass(
        id,
        format!(
            "secrets and content sealed under master key {}{rotation}",
            key.key_id()
        ),
    )
}

async fn database_item(id: String, d: &Deployment) -> Item {
    match &d.config.postgres_url {
        Some(reference) => {
            let url = match reference.read(&d.base) {
                Ok(url) => url,
                Err(e) => return fail(id, e),
            };
            match steward_persistence::role_check::service_role(&url).await {
                Ok(report) => {
                    let problems = report.problems();
                    if problems.is_empty() {
                        pass(
                            id,
                            format!(
                                "PostgreSQL role {}: no superuser, no BYPASSRLS, owns nothing; \
                                 RLS on all {} tenant tables",
                                report.role, report.tenant_tables
                            ),
                        )
                    } else {
                        fail(id, format!("role {}: {}", report.role, problems.join("; ")))
                    }
                }
                Err(e) => fail(id, format!("cannot inspect the service role: {e}")),
            }
        }
        None => {
            // Like `steward serve`, a relative database path is taken from the working folder.
            sqlite_file_item(id, &d.config.database)
        }
    }
}

fn sqlite_file_item(id: String, path: &Path) -> Item {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return fail(
                        id,
                        format!(
                            "the SQLite file {} has mode {mode:o}: others may read it",
                            path.display()
                        ),
                    );
                }
                pass(
                    id,
                    format!(
                        "embedded SQLite (no database roles); {} is its owner's alone ({mode:o})",
                        path.display()
                    ),
                )
            }
            Err(e) => fail(id, format!("cannot read {}: {e}", path.display())),
        }
    }
    #[cfg(not(unix))]
    {
        fail(
            id,
            format!("cannot check the permissions of {}", path.display()),
        )
    }
}

fn limits_item(id: String, config: &FileConfig) -> Item {
    let http = &config.http;
    if let Err(e) = http.limits() {
        return fail(id, e);
    }
    if !http.rate_limit {
        return fail(id, "http.rate_limit is off");
    }
    pass(
        id,
        format!(
            "rate limits on ({}/s per address, {}/s per tenant); headers at most {} bytes, \
             requests at most {} s",
            http.per_address_per_second,
            http.per_tenant_per_second,
            http.max_header_bytes,
            http.request_timeout_secs
        ),
    )
}

fn headers_item(id: String, url: &Url, probe: &Probe) -> Item {
    let headers = match &probe.result {
        Ok(h) => h,
        Err(e) => return fail(id, format!("no answer to check: {e}")),
    };
    let mut want = vec![
        ("content-security-policy", None),
        ("x-content-type-options", Some("nosniff")),
        ("x-frame-options", Some("DENY")),
        ("referrer-policy", Some("no-referrer")),
        ("cache-control", Some("no-store")),
    ];
    if url.scheme() == "https" {
        want.push(("strict-transport-security", None));
    }
    let mut missing = Vec::new();
    for (name, value) in &want {
        let got = headers.get(*name).and_then(|v| v.to_str().ok());
        let ok = match (got, value) {
            (Some(g), Some(v)) => g.eq_ignore_ascii_case(v),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !ok {
            missing.push(*name);
        }
    }
    if missing.is_empty() {
        pass(id, format!("{} security headers present", want.len()))
    } else {
        fail(id, format!("missing or wrong: {}", missing.join(", ")))
    }
}

/// Sends an authenticated GET; the JSON answer, or why not.
async fn get_json(
    http: &reqwest::Client,
    url: Url,
    token: &SecretString,
) -> Result<serde_json::Value, String> {
    let response = http
        .get(url.clone())
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .map_err(|e| format!("{}: {e}", url.path()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{} answered {status}", url.path()));
    }
    response
        .json()
        .await
        .map_err(|e| format!("{} is not JSON: {e}", url.path()))
}

async fn smoke_item(
    id: String,
    http: &reqwest::Client,
    d: &Deployment,
    token: Option<&SecretString>,
    within_hours: u64,
) -> Item {
    let Some(token) = token else {
        return fail(
            id,
            "no operator token to read runs with (--token-file or ops_token)",
        );
    };
    if d.input.smoke_tenants.is_empty() {
        return fail(
            id,
            format!("no --smoke-tenant in region {}", d.input.region),
        );
    }
    let since = OffsetDateTime::now_utc().unix_timestamp() * 1000
        - i64::try_from(within_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX / 2);
    let mut found = Vec::new();
    for tenant in &d.input.smoke_tenants {
        let Ok(mut url) = d.url.join("v1/ops/runs") else {
            return fail(id, "cannot build the runs URL");
        };
        url.query_pairs_mut()
            .append_pair("tenant", tenant)
            .append_pair("state", "completed")
            .append_pair("since", &since.to_string())
            .append_pair("limit", "1");
        match get_json(http, url, token).await {
            Ok(body) => {
                if let Some(run) = body["runs"].as_array().and_then(|r| r.first()) {
                    found.push(format!(
                        "{tenant}: run {} completed",
                        run["id"].as_str().unwrap_or("?")
                    ));
                }
            }
            Err(e) => return fail(id, e),
        }
    }
    if found.is_empty() {
        fail(
            id,
            format!(
                "no smoke tenant of region {} has a completed run in the last {within_hours} h",
                d.input.region
            ),
        )
    } else {
        pass(id, found.join("; "))
    }
}

async fn reporting_item(
    id: String,
    http: &reqwest::Client,
    d: &Deployment,
    token: Option<&SecretString>,
    tenant: Option<&str>,
) -> Item {
    let (Some(token), Some(tenant)) = (token, tenant) else {
        return fail(
            id,
            "needs an operator token and a smoke tenant of this region",
        );
    };
    let segment: String = url::form_urlencoded::byte_serialize(tenant.as_bytes()).collect();
    let Ok(mut url) = d.url.join(&format!("v1/tenants/{segment}/report")) else {
        return fail(id, "cannot build the report URL");
    };
    let now = OffsetDateTime::now_utc().unix_timestamp() * 1000;
    url.query_pairs_mut()
        .append_pair("from", &(now - 7 * 86_400_000).to_string())
        .append_pair("to", &now.to_string())
        .append_pair("format", "json");
    match get_json(http, url, token).await {
        Ok(body) if body.is_object() => pass(id, format!("{tenant}: the 7-day report answers")),
        Ok(_) => fail(id, "the report is not a JSON object"),
        Err(e) => fail(id, e),
    }
}

async fn evidence_item(
    id: String,
    http: &reqwest::Client,
    d: &Deployment,
    token: Option<&SecretString>,
    tenant: Option<&str>,
) -> Item {
    let (Some(token), Some(tenant)) = (token, tenant) else {
        return fail(
            id,
            "needs an operator token and a smoke tenant of this region",
        );
    };
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => return fail(id, format!("no scratch folder: {e}")),
    };
    let out = dir.path().join("bundle");
    let export = crate::evidence_cli::Export {
        base: &d.url,
        token,
        admin: false,
        tenant,
        from: 0,
        to: None,
    };
    if let Err(e) = crate::evidence_cli::download(http, &export, &out).await {
        return fail(id, format!("export: {e:#}"));
    }
    match verify_bundle(&out, &VerifyOptions::default(), |_| ()) {
        Ok(report) => pass(
            id,
            format!(
                "{tenant}: exported and verified {} entries, {} runs, {} checkpoints",
                report.entries, report.runs, report.checkpoints
            ),
        ),
        Err(e) => fail(id, format!("the exported bundle does not verify: {e}")),
    }
}

/// The metric families a deployment exports, or why not.
async fn scrape(http: &reqwest::Client, url: &Url) -> Result<Vec<String>, String> {
    let target = url.join("metrics").map_err(|e| e.to_string())?;
    let response = http
        .get(target)
        .send()
        .await
        .map_err(|e| format!("/metrics: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("/metrics answered {}", response.status()));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    Ok(metric_families(&text))
}

/// The names of the families an OpenMetrics text declares or has samples of.
pub fn metric_families(text: &str) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
        {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_owned());
            }
        } else if !line.starts_with('#') {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names.into_iter().collect()
}

/// The `steward_…` metric names the `expr` fields of alert rules read.
pub fn rule_metrics(rules: &str) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut in_expr = false;
    let mut expr_indent = 0;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if in_expr && !trimmed.is_empty() && indent <= expr_indent {
            in_expr = false;
        }
        let text = if let Some(rest) = trimmed.strip_prefix("expr:") {
            in_expr = true;
            expr_indent = indent;
            rest
        } else if in_expr {
            trimmed
        } else {
            continue;
        };
        let mut rest = text;
        while let Some(at) = rest.find("steward_") {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let word_start = before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            if word_start {
                names.insert(name.clone());
            }
            rest = &tail[name.len().max(1)..];
        }
    }
    names.into_iter().collect()
}

/// Whether a family named in a rule is exported: exactly, or as the sample of a counter
/// (`_total`) or histogram (`_bucket`, `_sum`, `_count`) family.
fn exported(name: &str, families: &[String]) -> bool {
    if families.iter().any(|f| f == name) {
        return true;
    }
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .any(|base| families.iter().any(|f| f == base))
}

fn alerts_item(
    path: &Path,
    rules: Option<&[u8]>,
    scrapes: &[(Url, Result<Vec<String>, String>)],
) -> Item {
    let id = "ops.alerts".to_owned();
    let Some(rules) = rules else {
        return fail(id, format!("cannot read {}", path.display()));
    };
    let Ok(text) = std::str::from_utf8(rules) else {
        return fail(id, format!("{} is not UTF-8", path.display()));
    };
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(path)
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let why = format!("{stdout}{stderr}");
            let why: String = why.chars().take(400).collect();
            return fail(id, format!("promtool check rules fails: {}", why.trim()));
        }
        Err(e) => {
            return fail(
                id,
                format!("cannot run promtool to validate the rules: {e}"),
            );
        }
    }
    let wanted = rule_metrics(text);
    if wanted.is_empty() {
        return fail(id, "the rules read no steward_ metric");
    }
    for (url, scrape) in scrapes {
        let families = match scrape {
            Ok(f) => f,
            Err(e) => return fail(id, format!("{url}: {e}")),
        };
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|n| !exported(n, families))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return fail(id, format!("{url} exports none of: {}", missing.join(", ")));
        }
    }
    pass(
        id,
        format!(
            "promtool accepts the rules; the {} metrics they read are exported by {} deployment(s)",
            wanted.len(),
            scrapes.len()
        ),
    )
}

/// The drill item, and the SHA-256 of the record read.
fn drill_item(path: Option<&Path>, max_age_days: u64) -> (Item, Option<String>) {
    let id = "ops.backup_drill".to_owned();
    let Some(path) = path else {
        return (
            fail(id, "no --restore-report: no restore drill on record"),
            None,
        );
    };
    let bytes = match read_bounded(path, MAX_DRILL_BYTES) {
        Ok(b) => b,
        Err(e) => return (fail(id, format!("{}: {e}", path.display())), None),
    };
    let sha = Some(sha256_hex(&bytes));
    let text = String::from_utf8_lossy(&bytes);
    let Some(summary) = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(|v| v["drill"] == "restore")
    else {
        return (
            fail(id, "the record holds no `steward restore` summary line"),
            sha,
        );
    };
    if summary["ok"] != true {
        return (fail(id, "the last restore drill failed"), sha);
    }
    let at = summary["restored_at"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let Some(at) = at else {
        return (fail(id, "the drill record has no valid restored_at"), sha);
    };
    let age = OffsetDateTime::now_utc() - at;
    let days = age.whole_days();
    if age.is_negative() {
        return (fail(id, "the drill record is dated in the future"), sha);
    }
    if days as u64 > max_age_days {
        return (
            fail(
                id,
                format!("the last restore drill is {days} days old (more than {max_age_days})"),
            ),
            sha,
        );
    }
    (
        pass(
            id,
            format!(
                "restore drill passed {days} days ago: {} rows, {} chains verified",
                summary["rows"], summary["chains_ok"]
            ),
        ),
        sha,
    )
}

/// Why an artifact is not valid.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

/// Checks an artifact's key id, signature and decision; with `public_key`, that it is the
/// signer's.
pub fn verify_artifact(bytes: &[u8], public_key: Option<&str>) -> Result<Artifact, Invalid> {
    let artifact: Artifact = serde_json::from_slice(bytes)
        .map_err(|e| Invalid(format!("not a checklist artifact: {e}")))?;
    if artifact.format != FORMAT {
        return Err(Invalid(format!("format is not {FORMAT}")));
    }
    let public = decode_32(&artifact.key.public_key)
        .ok_or_else(|| Invalid("the public key is not 64 lowercase hex digits".into()))?;
    if artifact.key.algorithm != "ed25519" || key_id_for("ck-", &public) != artifact.key.key_id {
        return Err(Invalid(
            "the key id or algorithm does not match the public key".into(),
        ));
    }
    if let Some(pinned) = public_key
        && pinned.trim().to_ascii_lowercase() != artifact.key.public_key
    {
        return Err(Invalid(format!(
            "signed by {}, not by the key given",
            artifact.key.key_id
        )));
    }
    verify_signature(
        &artifact.key.public_key,
        &artifact.signed_bytes(),
        &artifact.signature,
    )
    .map_err(Invalid)?;
    let mut ids = std::collections::BTreeSet::new();
    for item in &artifact.items {
        if !ids.insert(item.id.as_str()) {
            return Err(Invalid(format!("item {} appears twice", item.id)));
        }
    }
    for s in &artifact.sign_offs {
        let signed = artifact
            .items
            .iter()
            .any(|i| i.id == s.item && i.status == Status::SignedOff);
        if !signed {
            return Err(Invalid(format!(
                "the sign-off of {} names no signed-off item",
                s.item
            )));
        }
    }
    for item in &artifact.items {
        if item.status == Status::SignedOff && !artifact.sign_offs.iter().any(|s| s.item == item.id)
        {
            return Err(Invalid(format!("{} is signed off by no one", item.id)));
        }
    }
    if decide(&artifact.items) != artifact.decision {
        return Err(Invalid(format!(
            "the decision `{}` does not follow from the items",
            artifact.decision
        )));
    }
    Ok(artifact)
}

fn verify_command(
    path: &Path,
    public_key: Option<&str>,
    require_go: bool,
) -> anyhow::Result<ExitCode> {
    let bytes = read_bounded(path, MAX_ARTIFACT_BYTES)
        .with_context(|| format!("reading {}", path.display()))?;
    match verify_artifact(&bytes, public_key) {
        Ok(artifact) => {
            let failed = artifact
                .items
                .iter()
                .filter(|i| i.status == Status::Fail)
                .count();
            let test = artifact.sign_offs.iter().any(|s| s.test_identity);
            println!(
                "OK: {:?} checklist of {}, {} items ({failed} failed), decision {}, signed by {}{}{}",
                artifact.env,
                artifact.created_at,
                artifact.items.len(),
                artifact.decision,
                artifact.key.key_id,
                if public_key.is_none() {
                    " (the artifact's own key: pin it with --public-key)"
                } else {
                    ""
                },
                if test {
                    "; sign-offs by a test identity"
                } else {
                    ""
                }
            );
            Ok(if require_go && artifact.decision != "go" {
                ExitCode::from(NO_GO)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(e) => {
            println!("INVALID: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, status: Status) -> Item {
        Item {
            id: id.into(),
            status,
            detail: String::new(),
        }
    }

    fn signed(items: Vec<Item>, sign_offs: Vec<SignOff>) -> (Artifact, SigningKey) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let mut a = Artifact {
            format: FORMAT.into(),
            env: Env::Production,
            created_at: "2026-12-04T00:00:00Z".into(),
            inputs: Inputs {
                deployments: vec![],
                alerts_file: "alerts.yml".into(),
                alerts_sha256: None,
                restore_report_sha256: None,
                smoke_within_hours: 24,
                drill_max_age_days: 30,
                steward_version: "0".into(),
            },
            decision: decide(&items).into(),
            items,
            sign_offs,
            key: ArtifactKey {
                key_id: key_id_for("ck-", &public),
                algorithm: "ed25519".into(),
                public_key: hex::encode(public),
            },
            signature: String::new(),
        };
        a.signature = hex::encode(key.sign(&a.signed_bytes()).to_bytes());
        (a, key)
    }

    #[test]
    fn go_needs_every_item_passed_or_signed_off() {
        assert_eq!(
            decide(&[item("a", Status::Pass), item("b", Status::SignedOff)]),
            "go"
        );
        assert_eq!(
            decide(&[item("a", Status::Pass), item("b", Status::Fail)]),
            "no-go"
        );
        assert_eq!(decide(&[item("a", Status::NeedsSignOff)]), "no-go");
        assert_eq!(decide(&[]), "go");
    }

    #[test]
    fn a_sign_off_cannot_pass_a_failed_check_or_name_an_unknown_item() {
        let mut items = vec![
            item("ops.oncall", Status::NeedsSignOff),
            item("x", Status::Fail),
        ];
        let ana =
            parse_sign_off("item=ops.oncall,who=ana@example.com,role=SRE lead", true).unwrap();
        apply_sign_offs(&mut items, std::slice::from_ref(&ana)).unwrap();
        assert_eq!(items[0].status, Status::SignedOff);
        let bad = SignOff {
            item: "x".into(),
            ..ana.clone()
        };
        assert!(apply_sign_offs(&mut items, &[bad]).is_err());
        let unknown = SignOff {
            item: "nope".into(),
            ..ana
        };
        assert!(apply_sign_offs(&mut items, &[unknown]).is_err());
    }

    #[test]
    fn sign_offs_parse_strictly() {
        let s = parse_sign_off(
            " item = ops.oncall , who=Ana Lima, role=on-call lead",
            false,
        )
        .unwrap();
        assert_eq!(
            (s.item.as_str(), s.who.as_str(), s.role.as_str()),
            ("ops.oncall", "Ana Lima", "on-call lead")
        );
        for bad in [
            "",
            "item=ops.oncall",
            "item=ops.oncall,who=a",
            "item=ops.oncall,who=a,role=b,extra=c",
            "item=ops.oncall,who=a,role=b,who=c",
            "item=ops.oncall,who=,role=b",
            "item=ops.oncall,who=a\u{7},role=b",
            "item=ops.oncall;who=a;role=b",
        ] {
            assert!(parse_sign_off(bad, false).is_err(), "{bad:?}");
        }
        let long = format!("item=ops.oncall,who={},role=b", "a".repeat(201));
        assert!(parse_sign_off(&long, false).is_err());
    }

    #[test]
    fn an_artifact_verifies_and_every_edit_is_caught() {
        let ana = parse_sign_off("item=ops.oncall,who=ana@example.com,role=SRE", false).unwrap();
        let (a, key) = signed(
            vec![
                item("us.security.tls", Status::Pass),
                item("ops.oncall", Status::SignedOff),
            ],
            vec![ana],
        );
        let bytes = serde_json::to_vec_pretty(&a).unwrap();
        let ok = verify_artifact(&bytes, None).unwrap();
        assert_eq!(ok.decision, "go");
        let pinned = hex::encode(key.verifying_key().to_bytes());
        verify_artifact(&bytes, Some(&pinned)).unwrap();
        verify_artifact(&bytes, Some(&pinned.to_ascii_uppercase())).unwrap();
        assert!(verify_artifact(&bytes, Some(&"11".repeat(32))).is_err());

        let edits: Vec<fn(&mut Artifact)> = vec![
            |a| a.items[0].status = Status::Fail,
            |a| a.items[0].detail.push('x'),
            |a| a.decision = "no-go".into(),
            |a| a.sign_offs[0].who = "mallory".into(),
            |a| a.sign_offs[0].test_identity = true,
            |a| a.env = Env::Staging,
            |a| a.created_at = "2027-01-01T00:00:00Z".into(),
            |a| a.inputs.drill_max_age_days = 3650,
            |a| a.signature = a.signature.to_ascii_uppercase(),
            |a| a.key.key_id = "ck-0000000000000000".into(),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut b = a.clone();
            edit(&mut b);
            let bytes = serde_json::to_vec(&b).unwrap();
            assert!(
                verify_artifact(&bytes, None).is_err(),
                "edit {i} was not caught"
            );
        }
    }

    #[test]
    fn a_re_signed_artifact_must_still_be_consistent() {
        // A signer cannot make a go out of a failed item: the decision is recomputed.
        let (mut a, key) = signed(vec![item("x", Status::Fail)], vec![]);
        a.decision = "go".into();
        a.signature = hex::encode(key.sign(&a.signed_bytes()).to_bytes());
        let err = verify_artifact(&serde_json::to_vec(&a).unwrap(), None).unwrap_err();
        assert!(err.to_string().contains("does not follow"), "{err}");
        // Nor invent a signed-off item that no one signed.
        let (mut b, key) = signed(vec![item("ops.oncall", Status::SignedOff)], vec![]);
        b.signature = hex::encode(key.sign(&b.signed_bytes()).to_bytes());
        assert!(verify_artifact(&serde_json::to_vec(&b).unwrap(), None).is_err());
    }

    #[test]
    fn hostile_artifacts_are_refused() {
        for bad in [
            &b""[..],
            b"[]",
            b"null",
            b"{\"format\":\"steward-checklist-v1\"}",
            b"\xff\xfe",
        ] {
            assert!(verify_artifact(bad, None).is_err());
        }
        let (a, _) = signed(vec![item("x", Status::Pass)], vec![]);
        let mut v = serde_json::to_value(&a).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(verify_artifact(&serde_json::to_vec(&v).unwrap(), None).is_err());
        let mut dup = a;
        dup.items.push(item("x", Status::Pass));
        assert!(verify_artifact(&serde_json::to_vec(&dup).unwrap(), None).is_err());
    }

    #[test]
    fn rule_metrics_are_read_from_single_and_multi_line_exprs() {
        let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          sum(rate(steward_http_requests_total{code=~\"5..\"}[5m]))\n            / sum(rate(steward_http_requests_total[5m])) > 0.05\n        for: 5m\n        labels:\n          steward_not_a_metric: x\n      - alert: B\n        expr: max(steward_break_glass_active_grants) > 0\n        annotations:\n          summary: steward_in_prose is not read\n";
        assert_eq!(
            rule_metrics(rules),
            vec![
                "steward_break_glass_active_grants",
                "steward_http_requests_total"
            ]
        );
        let families = metric_families(
            "# TYPE steward_http_requests counter\nsteward_http_requests_total{code=\"200\"} 3\n# TYPE steward_break_glass_active_grants gauge\nsteward_break_glass_active_grants 0\n# EOF\n",
        );
        assert!(exported("steward_http_requests_total", &families));
        assert!(exported("steward_break_glass_active_grants", &families));
        assert!(!exported("steward_missing", &families));
    }

    #[test]
    fn drill_records_must_pass_and_be_recent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drill.txt");
        let now = now_rfc3339();
        let line = |ok: bool, at: &str| {
            format!(
                "restored: x\nresult: PASS\n{}\n",
                serde_json::json!({"drill": "restore", "ok": ok, "rows": 10, "chains_ok": 1, "restored_at": at})
            )
        };
        std::fs::write(&path, line(true, &now)).unwrap();
        assert_eq!(drill_item(Some(&path), 30).0.status, Status::Pass);
        std::fs::write(&path, line(false, &now)).unwrap();
        assert_eq!(drill_item(Some(&path), 30).0.status, Status::Fail);
        std::fs::write(&path, line(true, "2020-01-01T00:00:00Z")).unwrap();
        assert_eq!(drill_item(Some(&path), 30).0.status, Status::Fail);
        std::fs::write(&path, line(true, "2999-01-01T00:00:00Z")).unwrap();
        assert_eq!(drill_item(Some(&path), 30).0.status, Status::Fail);
        std::fs::write(&path, "not json at all").unwrap();
        assert_eq!(drill_item(Some(&path), 30).0.status, Status::Fail);
        assert_eq!(drill_item(None, 30).0.status, Status::Fail);
    }
}
