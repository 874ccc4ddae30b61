//! Configuration: a TOML file, with `STEWARD_*` environment variables over it. Secrets are never
//! written in the file itself: each names a file or an environment variable to read it from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings};
use steward_adapters::egress::{Egress, EgressKind, HostPattern};
use steward_api::{RateLimit, RateLimits, ServerLimits};
use steward_core::Region;

/// Deployment profile. Production refuses insecure settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Dev,
    Staging,
    Production,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dev" => Ok(Self::Dev),
            "staging" => Ok(Self::Staging),
            "production" => Ok(Self::Production),
            other => Err(format!(
                "unknown profile `{other}`; expected dev, staging or production"
            )),
        }
    }
}

/// Where a secret is read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SecretRef {
    /// A file holding the secret (trailing newline removed).
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

impl SecretRef {
    /// Reads the secret. Errors name the file or variable, never the value.
    pub fn read(&self, base: &Path) -> Result<SecretString, String> {
        let value = match self {
            SecretRef::File(path) => {
                let path = if path.is_absolute() {
                    path.clone()
                } else {
                    base.join(path)
                };
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
            }
            SecretRef::Env(var) => {
                std::env::var(var).map_err(|_| format!("secret variable {var} is not set"))?
            }
        };
        let value = value.trim_end_matches(['\n', '\r']).to_owned();
        if value.is_empty() {
            return Err(format!("secret {self:?} is empty"));
        }
        Ok(SecretString::from(value))
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub profile: Profile,
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// SQLite database file.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// PostgreSQL instead of the SQLite file: where to read the service role's URL
    /// (`postgres://steward_service:…@host/db`). When set, `database` is not used.
    #[serde(default)]
    pub postgres_url: Option<SecretRef>,
    /// Where to read the schema owner role's URL; when set, migrations run through it at
    /// startup, before the service pool opens.
    #[serde(default)]
    pub postgres_migrate_url: Option<SecretRef>,
    /// The region this deployment serves.
    #[serde(default = "default_region")]
    pub region: Region,
    /// The base URL of the deployment serving each other region (`us`, `eu`), given to
    /// callers who try to onboard a tenant homed there.
    #[serde(default)]
    pub peer_base_urls: std::collections::BTreeMap<String, String>,
    /// The master key (64 hex digits or base64 of 32 bytes). Only the dev profile may omit it,
    /// and then runs on the well-known dev key.
    #[serde(default)]
    pub master_key: Option<SecretRef>,
    /// The master key `master_key` replaces, while a rotation is under way: data keys still
    /// wrapped by it open too. Remove it once `steward keys rotate-master` has finished.
    #[serde(default)]
    pub previous_master_key: Option<SecretRef>,
    /// How long delivery ids are remembered for deduplication, in days (at least 7).
    #[serde(default = "default_retention")]
    pub delivery_retention_days: u32,
    /// Allow plain-HTTP connector URLs (never in production).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// How run actors are restarted and passivated.
    #[serde(default)]
    pub runs: RunsConfig,
    /// The platform's budget ceilings (`[limits]`): LLM calls and tokens per tenant per hour
    /// and per day, runs per webhook source per minute. Tenants may set lower values.
    #[serde(default)]
    pub limits: steward_actors::budgets::PlatformLimits,
    /// The HTTP server's timeouts, header limits and rate limits.
    #[serde(default)]
    pub http: HttpConfig,
    /// Server TLS (`[tls]`): the certificate and key Steward serves, or that a proxy in front
    /// ends TLS. Staging and production refuse to start with neither.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `GET /metrics` and the periodic audit verification that feeds it (`[metrics]`).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Signed evidence checkpoints and their witness (`[evidence]`).
    #[serde(default)]
    pub evidence: EvidenceConfig,
    /// The retention sweeper (`[retention]`).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The ServiceNow catch-up pass (`[catchup]`).
    #[serde(default)]
    pub catchup: CatchupConfig,
    /// Several nodes on one PostgreSQL database (`[cluster]`); absent: this node owns every
    /// tenant.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// OpenTelemetry trace export over OTLP/HTTP (`[telemetry]`); off unless an endpoint is set.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The outbound hosts each region's tenants may be connected to, per connector kind
    /// (`[egress.us]`, `[egress.eu]`).
    #[serde(default)]
    pub egress: EgressConfig,
    /// The operator token for the ops API and page (`/v1/ops/…`, `/ops`), at least 24
    /// characters; only its SHA-256 is kept. Without one, the ops surface refuses everyone.
    #[serde(default)]
    pub ops_token: Option<SecretRef>,
    /// People sign in to the ops API and page through this OpenID provider (`[oidc]`); the
    /// operator token then serves only to open break-glass grants.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// `steward backup` and `steward restore` (`[backup]`): the PostgreSQL backup role's URL
    /// and where the PostgreSQL client tools are.
    #[serde(default)]
    pub backup: crate::backup_cli::BackupConfig,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

/// `[oidc]`: the OpenID provider operators, on-call engineers and approvers sign in with.
/// `issuer` and `redirect_url` must be https; plain http is accepted only for a loopback host
/// in the `dev` profile (or with `allow_plain_http` outside production).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer identifier, as in the tokens' `iss`; discovery is read under it.
    pub issuer: String,
    /// Steward's client id at the provider (the page's code flow and `steward login`).
    pub client_id: String,
    /// The client secret of a confidential client (a file or a variable); without it Steward
    /// is a public client and relies on PKCE.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// `https://<steward>/ops/oidc/callback`, as registered at the provider.
    pub redirect_url: String,
    /// Scopes to ask for (`openid` is always added).
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Provider group → Steward role (`operator`, `oncall`, `approver`). A person none of
    /// whose groups is listed is refused (403).
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, steward_api::Role>,
    /// Tolerance on the tokens' `exp`, `iat` and `nbf`, in seconds (at most 300).
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
}

fn default_oidc_scopes() -> Vec<String> {
    ["openid", "email", "profile", "groups"]
        .map(String::from)
        .to_vec()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_clock_skew() -> u64 {
    60
}

impl OidcConfig {
    /// The relying party's settings under `profile`, reading the client secret. Refuses what
    /// [`steward_api::OidcSettings::check`] refuses, and a skew over 300 s.
    pub fn settings(
        &self,
        profile: Profile,
        allow_plain_http: bool,
        base: &Path,
    ) -> Result<steward_api::OidcSettings, String> {
        let mut s = self.unchecked(profile, allow_plain_http)?;
        s.client_secret = self
            .client_secret
            .as_ref()
            .map(|r| r.read(base))
            .transpose()
            .map_err(|e| format!("[oidc] client_secret: {e}"))?;
        Ok(s)
    }

    fn unchecked(
        &self,
        profile: Profile,
        allow_plain_http: bool,
    ) -> Result<steward_api::OidcSettings, String> {
        if self.clock_skew_secs > 300 {
            return Err("[oidc] clock_skew_secs must be at most 300".into());
        }
        let mut s =
            steward_api::OidcSettings::new(&self.issuer, &self.client_id, &self.redirect_url);
        s.scopes = self.scopes.clone();
        s.groups_claim = self.groups_claim.clone();
        s.roles = self.roles.clone();
        s.clock_skew = Duration::from_secs(self.clock_skew_secs);
        s.allow_loopback_http =
            profile == Profile::Dev || (allow_plain_http && profile != Profile::Production);
        s.check().map_err(|e| format!("[oidc] {e}"))?;
        Ok(s)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_database() -> PathBuf {
    PathBuf::from("steward.db")
}
fn default_region() -> Region {
    Region::Us
}
fn default_retention() -> u32 {
    7
}

/// `[egress]`: per region (`us`, `eu`), per kind (`llm`, `servicenow`, `slack`, `siem`), the
/// host patterns a tenant homed there may be connected to: an exact host (`slack.com`,
/// `127.0.0.1`) or `*.` and a suffix (`*.service-now.com`), without scheme or port. A list given
/// replaces that kind's default; an empty list allows nothing. The defaults: LLM
/// `api.openai.com` and `api.anthropic.com` for `us`, `api.mistral.ai` for `eu`; ServiceNow
/// `*.service-now.com` and Slack `slack.com` in both; no SIEM host (list the hosts tenants may
/// stream their audit entries to). The `dev` profile adds `127.0.0.1`,
/// `localhost` and `[::1]` to every default list (for the stand-ins); no other profile does,
/// so a staging test setup on loopback lists them itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    #[serde(default)]
    pub us: RegionEgressConfig,
    #[serde(default)]
    pub eu: RegionEgressConfig,
}

/// One region's lists in `[egress]`; a kind left out keeps its default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEgressConfig {
    pub llm: Option<Vec<String>>,
    pub servicenow: Option<Vec<String>>,
    pub slack: Option<Vec<String>>,
    pub siem: Option<Vec<String>>,
}

impl EgressConfig {
    /// The allow-lists for this profile; refuses a pattern that is not a host pattern.
    pub fn egress(&self, profile: Profile) -> Result<Egress, String> {
        let mut egress = Egress::default();
        if profile == Profile::Dev {
            egress = egress.with_loopback();
        }
        for (region, lists) in [(Region::Us, &self.us), (Region::Eu, &self.eu)] {
            for (kind, list) in [
                (EgressKind::Llm, &lists.llm),
                (EgressKind::ServiceNow, &lists.servicenow),
                (EgressKind::Slack, &lists.slack),
                (EgressKind::Siem, &lists.siem),
            ] {
                let Some(list) = list else { continue };
                let patterns = list
                    .iter()
                    .map(|text| HostPattern::parse(text))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("egress.{region}.{kind}: {e}"))?;
                *egress.region_mut(region).kind_mut(kind) = patterns;
            }
        }
        Ok(egress)
    }
}

/// `[tls]`: either `cert_file` and `key_file` (a PEM certificate chain, the server's own
/// certificate first, and its PEM private key; relative paths are from the config file's
/// folder), which Steward serves itself and reads again every `reload_interval_secs` and on
/// `SIGHUP`, or `terminates_at_proxy = true`: TLS ends at a proxy in front, which must then
/// send `X-Forwarded-Proto: https`. Neither is allowed only in the `dev` profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub terminates_at_proxy: bool,
    /// Seconds between looks at the files for a new pair (default 5, 1 to 3600).
    pub reload_interval_secs: u64,
    /// Seconds a client may take to finish its handshake (default 10, 1 to 120).
    pub handshake_timeout_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            terminates_at_proxy: false,
            reload_interval_secs: 5,
            handshake_timeout_secs: 10,
        }
    }
}

impl TlsConfig {
    /// What Steward serves under `profile`: None for plain HTTP (dev, or TLS ended at a
    /// proxy). Refuses half a pair, a pair together with `terminates_at_proxy`, and, outside
    /// `dev`, neither.
    pub fn options(
        &self,
        profile: Profile,
        base: &Path,
    ) -> Result<Option<crate::tls::TlsOptions>, String> {
        if !(1..=3600).contains(&self.reload_interval_secs) {
            return Err("tls.reload_interval_secs must be 1 to 3600".into());
        }
        if !(1..=120).contains(&self.handshake_timeout_secs) {
            return Err("tls.handshake_timeout_secs must be 1 to 120".into());
        }
        let (cert, key) = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if self.terminates_at_proxy || profile == Profile::Dev => return Ok(None),
            (None, None) => {
                return Err(format!(
                    "profile {profile:?} needs TLS: set [tls] cert_file and key_file (Steward \
                     serves TLS itself) or [tls] terminates_at_proxy = true (TLS ends at a \
                     proxy in front)"
                ));
            }
            _ => return Err("tls.cert_file and tls.key_file must be set together".into()),
        };
        if self.terminates_at_proxy {
            return Err(
                "[tls] sets cert_file and key_file and terminates_at_proxy: choose one".into(),
            );
        }
        let path = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        let mut options = crate::tls::TlsOptions::new(path(cert), path(key));
        options.reload_every = Duration::from_secs(self.reload_interval_secs);
        options.handshake_timeout = Duration::from_secs(self.handshake_timeout_secs);
        Ok(Some(options))
    }
}

/// Restart budget and passivation of run actors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunsConfig {
    /// Restarts a crashing run actor gets within `restart_window_secs` before the run is
    /// failed (default 3).
    pub max_restarts: usize,
    /// The window the restart budget counts over, in seconds (default 60).
    pub restart_window_secs: u64,
    /// How long a waiting run's actor stays in memory before it is passivated, in seconds
    /// (default 30; 0 stops it at once).
    pub passivate_after_secs: u64,
    /// The most run actors alive at once in this process (default 2,000, at least 1), which
    /// bounds the memory a burst of runs takes: about 60 KB each. Runs woken beyond it wait for
    /// an actor to end, the tenants taking turns.
    pub max_live_actors: usize,
}

impl Default for RunsConfig {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            restart_window_secs: 60,
            passivate_after_secs: 30,
            max_live_actors: steward_actors::live::DEFAULT_MAX_LIVE,
        }
    }
}

/// OpenTelemetry traces (`[telemetry]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL (for example `http://127.0.0.1:4318`); spans are
    /// posted, batched, to `{otlp_endpoint}/v1/traces` as protobuf. Unset: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of the exported spans (default `steward`).
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "steward".into(),
        }
    }
}

impl TelemetryConfig {
    /// The export settings, or None when no endpoint is set; refuses an endpoint that is not an
    /// http(s) URL and an empty service name.
    pub fn options(&self) -> Result<Option<crate::telemetry::TelemetryOptions>, String> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let ok = url::Url::parse(endpoint)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(format!(
                "telemetry.otlp_endpoint must be an http(s) URL (got {endpoint})"
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err("telemetry.service_name must not be empty".into());
        }
        Ok(Some(crate::telemetry::TelemetryOptions::new(
            endpoint,
            &self.service_name,
        )))
    }
}

/// The metrics endpoint (`[metrics]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (no credential; counts, ages and latencies only). Default: on in
    /// the `dev` profile, off in the others.
    pub enabled: Option<bool>,
    /// Seconds between verifications of every tenant's audit chain, each bad chain counted in
    /// `steward_audit_verification_failures_total` (default 3600; 0 turns them off). Only
    /// while metrics are served.
    pub audit_verify_interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            audit_verify_interval_secs: 3600,
        }
    }
}

impl MetricsConfig {
    /// Whether `/metrics` is served under `profile`.
    pub fn enabled(&self, profile: Profile) -> bool {
        self.enabled.unwrap_or(profile == Profile::Dev)
    }

    /// How often the audit chains are verified; None when never.
    pub fn audit_verify_every(&self, profile: Profile) -> Option<Duration> {
        let secs = self.audit_verify_interval_secs;
        (self.enabled(profile) && secs > 0).then(|| Duration::from_secs(secs))
    }
}

/// The retention sweeper (`[retention]`), which applies each tenant's retention settings
/// (`PUT /v1/tenant/retention`); a tenant that set none keeps everything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Seconds between sweeps (default 3600, at most 86400; 0 turns the sweeper off).
    pub sweep_interval_secs: u64,
    /// Rows of each kind one batch removes (default 500, 1 to 5000).
    pub batch: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            sweep_interval_secs: 3600,
            batch: 500,
        }
    }
}

impl RetentionConfig {
    /// The sweeper's options; None when it is off. Errors name the bad value.
    pub fn sweep(&self) -> Result<Option<steward_actors::retention::SweepOptions>, String> {
        if self.sweep_interval_secs > 86_400 {
            return Err("retention.sweep_interval_secs must be 0 to 86400".into());
        }
        if !(1..=steward_persistence::MAX_SWEEP_BATCH).contains(&self.batch) {
            return Err("retention.batch must be 1 to 5000".into());
        }
        Ok(
            (self.sweep_interval_secs > 0).then(|| steward_actors::retention::SweepOptions {
                every: Duration::from_secs(self.sweep_interval_secs),
                batch: self.batch,
                ..Default::default()
            }),
        )
    }
}

/// The ServiceNow catch-up pass (`[catchup]`): after downtime, the incidents changed since the
/// last one seen get the runs that were missed (`docs/operations/catchup.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatchupConfig {
    /// Seconds between passes (default 300, at most 86400; 0 turns the pass off). The first
    /// pass runs at startup.
    pub interval_secs: u64,
    /// How far back a tenant's first pass looks, in hours (default 24, 1 to 720).
    pub lookback_hours: u32,
    /// Pages of incidents one pass reads per tenant at most (default 20, 1 to 1000).
    pub max_pages: u32,
    /// Incidents per page (default 100, 1 to 1000).
    pub page_size: u32,
    /// The longest `Retry-After` of a 429 the pass waits out, in seconds (default 120, at
    /// most 3600); a longer one ends the pass until the next.
    pub max_retry_after_secs: u64,
}

impl Default for CatchupConfig {
    fn default() -> Self {
        Self {
            interval_secs: 300,
            lookback_hours: 24,
            max_pages: 20,
            page_size: 100,
            max_retry_after_secs: 120,
        }
    }
}

impl CatchupConfig {
    /// The pass's options; None when it is off. Errors name the bad value.
    pub fn options(&self) -> Result<Option<steward_actors::catchup::CatchupOptions>, String> {
        if self.interval_secs > 86_400 {
            return Err("catchup.interval_secs must be 0 to 86400".into());
        }
        if !(1..=720).contains(&self.lookback_hours) {
            return Err("catchup.lookback_hours must be 1 to 720".into());
        }
        if !(1..=1000).contains(&self.max_pages) {
            return Err("catchup.max_pages must be 1 to 1000".into());
        }
        if !(1..=steward_adapters::servicenow::MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err("catchup.page_size must be 1 to 1000".into());
        }
        if self.max_retry_after_secs > 3600 {
            return Err("catchup.max_retry_after_secs must be 0 to 3600".into());
        }
        Ok(
            (self.interval_secs > 0).then(|| steward_actors::catchup::CatchupOptions {
                every: Duration::from_secs(self.interval_secs),
                lookback: Duration::from_secs(u64::from(self.lookback_hours) * 3600),
                max_pages: self.max_pages,
                page_size: self.page_size,
                max_retry_after: Duration::from_secs(self.max_retry_after_secs),
                ..Default::default()
            }),
        )
    }
}

/// Several nodes on one PostgreSQL database (`[cluster]`, `docs/operations/multi-node.md`):
/// each tenant is run by the node that holds its lease.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, unique among the nodes (a pod name); `STEWARD_NODE_ID` overrides it.
    pub node_id: Option<String>,
    /// How long a lease lasts unless renewed, in seconds (default 15, 3 to 600): a dead
    /// node's tenants move after at most this long.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_lease_secs() -> u64 {
    15
}

impl ClusterConfig {
    /// The cluster options for a node; `node_id` is the configured id or `STEWARD_NODE_ID`.
    /// A cluster needs PostgreSQL (`postgres`). Errors name the bad value.
    pub fn options(
        &self,
        env_node_id: Option<String>,
        postgres: bool,
    ) -> Result<steward_actors::cluster::ClusterOptions, String> {
        if !postgres {
            return Err("[cluster] needs postgres_url: nodes share one PostgreSQL database".into());
        }
        if !(3..=600).contains(&self.lease_secs) {
            return Err("cluster.lease_secs must be 3 to 600".into());
        }
        let node_id = env_node_id
            .or_else(|| self.node_id.clone())
            .ok_or("[cluster] needs node_id (or STEWARD_NODE_ID), unique per node")?;
        let ok = !node_id.is_empty()
            && node_id.len() <= steward_persistence::MAX_NODE_ID_BYTES
            && node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if !ok {
            return Err(format!(
                "cluster.node_id must be 1 to {} letters, digits, `.`, `_`, `-` or `:`",
                steward_persistence::MAX_NODE_ID_BYTES
            ));
        }
        Ok(steward_actors::cluster::ClusterOptions {
            node_id,
            lease: Duration::from_secs(self.lease_secs),
        })
    }
}

/// Signed evidence checkpoints (`[evidence]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// Seconds between checkpoints of every tenant's chain head (default 3600; 0 turns the
    /// schedule off; offboarding and exports still sign theirs).
    pub checkpoint_interval_secs: u64,
    /// The witness that countersigns each checkpoint; https, except a loopback host in `dev`
    /// (or with `allow_plain_http` outside production). None: checkpoints stay unwitnessed.
    pub witness_url: Option<url::Url>,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_secs: 3600,
            witness_url: None,
        }
    }
}

impl EvidenceConfig {
    /// The schedule: how often, and the witness URL once checked for `profile`.
    pub fn schedule(
        &self,
        profile: Profile,
        allow_plain_http: bool,
    ) -> Result<Option<(Duration, Option<url::Url>)>, String> {
        if let Some(url) = &self.witness_url {
            let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
            let plain_ok =
                profile == Profile::Dev || (allow_plain_http && profile != Profile::Production);
            match url.scheme() {
                "https" => {}
                "http" if loopback && plain_ok => {}
                _ => return Err(
                    "[evidence] witness_url must be https (http only to a loopback host in dev)"
                        .into(),
                ),
            }
        }
        let secs = self.checkpoint_interval_secs;
        Ok((secs > 0).then(|| (Duration::from_secs(secs), self.witness_url.clone())))
    }
}

/// The HTTP server's limits (`[http]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Seconds a client may take to send a request's line and headers; also how long an idle
    /// keep-alive connection is kept. Then the connection is closed (default 10).
    pub header_read_timeout_secs: u64,
    /// Seconds a client may take to send a request's body once its headers are in; then the
    /// answer is `408` (default 30).
    pub request_timeout_secs: u64,
    /// The largest request line and headers together, in bytes; larger is `431` (default
    /// 16384).
    pub max_header_bytes: usize,
    /// The most header fields a request may carry; more is `431` (default 64).
    pub max_headers: usize,
    /// Rate limiting on or off (default on; off for benchmarks).
    pub rate_limit: bool,
    /// Requests per second per client address (default 100; 0 for no per-address limit). The
    /// address is the connection's peer: behind a proxy, the proxy must limit per client.
    pub per_address_per_second: u32,
    /// Requests a client address may send at once (default 200).
    pub per_address_burst: u32,
    /// Requests per second per tenant, webhooks and token-authenticated calls together
    /// (default 100; 0 for no per-tenant limit).
    pub per_tenant_per_second: u32,
    /// Requests a tenant may send at once (default 200).
    pub per_tenant_burst: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client (default none: the header is
    /// never read, and every client behind a proxy shares the proxy's address).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// A PEM file of CA certificates that every outbound call (connectors, SIEM, the
    /// ServiceNow catch-up) trusts besides the built-in web roots, in every profile: for a
    /// private CA in front of a connector. Relative to the config file's folder; a file that
    /// does not load stops startup with the reason. Default: none.
    pub outbound_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = ServerLimits::default();
        let rate = RateLimits::recommended();
        let (address, tenant) = (
            rate.per_address.expect("recommended limits are set"),
            rate.per_tenant.expect("recommended limits are set"),
        );
        Self {
            header_read_timeout_secs: limits.header_read_timeout.as_secs(),
            request_timeout_secs: limits.request_timeout.as_secs(),
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
            rate_limit: true,
            per_address_per_second: address.per_second.get(),
            per_address_burst: address.burst.get(),
            per_tenant_per_second: tenant.per_second.get(),
            per_tenant_burst: tenant.burst.get(),
            trusted_proxies: Vec::new(),
            outbound_ca_file: None,
        }
    }
}

impl HttpConfig {
    /// The CA certificates `outbound_ca_file` names, read relative to `base` (none without
    /// it); the error names the setting, the file and what is wrong with it.
    pub fn outbound_roots(&self, base: &Path) -> Result<Vec<reqwest::Certificate>, String> {
        match &self.outbound_ca_file {
            None => Ok(Vec::new()),
            Some(path) => steward_adapters::http::read_ca_file(&base.join(path))
                .map_err(|e| format!("http.outbound_ca_file: {e}")),
        }
    }

    /// The server limits this section describes; refuses values no server should run with.
    pub fn limits(&self) -> Result<ServerLimits, String> {
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            return Err("http.header_read_timeout_secs must be 1 to 300".into());
        }
        if !(1..=3600).contains(&self.request_timeout_secs) {
            return Err("http.request_timeout_secs must be 1 to 3600".into());
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err("http.max_header_bytes must be 1024 to 1048576".into());
        }
        if !(8..=1000).contains(&self.max_headers) {
            return Err("http.max_headers must be 8 to 1000".into());
        }
        let rate = if self.rate_limit {
            RateLimits {
                per_address: RateLimit::new(self.per_address_per_second, self.per_address_burst),
                per_tenant: RateLimit::new(self.per_tenant_per_second, self.per_tenant_burst),
                trusted_proxies: self.trusted_proxies.clone(),
            }
        } else {
            RateLimits::off()
        };
        Ok(ServerLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            rate,
        })
    }
}

/// A tenant declared in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// `us-…` or `eu-…`: the id names the home region.
    pub id: String,
    pub name: String,
    /// A tenant API token to register (scopes `runs:read`, `runs:write`); only its hash is kept.
    #[serde(default)]
    pub api_token: Option<SecretRef>,
    pub servicenow: ServiceNowConfig,
    pub slack: SlackConfig,
    pub llm: LlmFileConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// A file with the tenant's own Cedar policies.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
}

/// ServiceNow: the instance, the OAuth grant and its credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowConfig {
    pub instance_url: String,
    /// `password`, `refresh_token` or `client_credentials`.
    pub grant: String,
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
    pub client_secret: SecretRef,
    #[serde(default)]
    pub password: Option<SecretRef>,
    #[serde(default)]
    pub refresh_token: Option<SecretRef>,
}

impl ServiceNowConfig {
    pub fn settings(&self) -> ServiceNowSettings {
        ServiceNowSettings {
            instance_url: self.instance_url.clone(),
            grant: self.grant.clone(),
            client_id: self.client_id.clone(),
            username: self.username.clone(),
        }
    }
}

/// Slack: the Web API, the approval channel and approvers, and the app's secrets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    #[serde(default = "default_slack_api")]
    pub api_base: String,
    pub approval_channel: String,
    pub approvers: Vec<String>,
    pub bot_token: SecretRef,
    pub signing_secret: SecretRef,
    /// Approver groups the tenant's policies name: group name to Slack user ids.
    #[serde(default)]
    pub approver_groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Who each Slack user is in ServiceNow and which API tokens they use.
    #[serde(default)]
    pub people: Vec<steward_actors::PersonLink>,
    /// Seconds before a reminder in the request's thread (default 4 h; 0 for none).
    #[serde(default)]
    pub remind_after_secs: Option<u64>,
    /// Seconds before the request is escalated (default 24 h; 0 for never).
    #[serde(default)]
    pub escalate_after_secs: Option<u64>,
    /// Channel id an escalated request is posted to.
    #[serde(default)]
    pub escalation_channel: Option<String>,
    /// Slack user ids who may also decide once the request is escalated.
    #[serde(default)]
    pub escalation_approvers: Vec<String>,
    /// Seconds before the request expires and its run ends `expired` (default 72 h; 0 for
    /// never).
    #[serde(default)]
    pub expire_after_secs: Option<u64>,
}

fn default_slack_api() -> String {
    "https://slack.com/api/".into()
}

impl SlackConfig {
    pub fn settings(&self) -> SlackSettings {
        let mut settings = SlackSettings::new(
            self.api_base.clone(),
            self.approval_channel.clone(),
            self.approvers.clone(),
        );
        if let Some(secs) = self.remind_after_secs {
            settings.remind_after_secs = secs;
        }
        if let Some(secs) = self.escalate_after_secs {
            settings.escalate_after_secs = secs;
        }
        if let Some(secs) = self.expire_after_secs {
            settings.expire_after_secs = secs;
        }
        settings
            .escalation_channel
            .clone_from(&self.escalation_channel);
        settings
            .escalation_approvers
            .clone_from(&self.escalation_approvers);
        settings.approver_groups.clone_from(&self.approver_groups);
        settings.people.clone_from(&self.people);
        settings
    }
}

/// The tenant's own LLM provider and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmFileConfig {
    /// `openai` (any Chat Completions endpoint: OpenAI, Azure OpenAI, Ollama, vLLM) or
    /// `anthropic`.
    pub provider: String,
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    pub api_key: SecretRef,
}

impl LlmFileConfig {
    pub fn settings(&self) -> LlmConfig {
        LlmConfig {
            provider: self.provider.clone(),
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            temperature: self.temperature.unwrap_or(0.0),
            max_tokens: self.max_tokens.unwrap_or(1024),
        }
    }
}

/// A webhook source: its secret and where in its body the incident is named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// How the sender signs: `standard-webhooks` (the default), `slack` or `stripe`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The secret shared with the sender, of the scheme's shape: a `whsec_…` secret for
    /// Standard Webhooks; the Slack app's signing secret or the Stripe endpoint secret.
    pub secret: SecretRef,
    #[serde(default)]
    pub sys_id_pointers: Vec<String>,
    #[serde(default)]
    pub number_pointers: Vec<String>,
}

impl FileConfig {
    /// Reads the file, then applies `STEWARD_*` variables over it.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let mut config: FileConfig = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("config {}: {e}", p.display()))?
            }
            None => toml::from_str("").map_err(|e| e.to_string())?,
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Applies `STEWARD_PROFILE`, `STEWARD_LISTEN`, `STEWARD_DATABASE`, `STEWARD_REGION`,
    /// `STEWARD_MASTER_KEY`, `STEWARD_MASTER_KEY_FILE`, `STEWARD_OPS_TOKEN`,
    /// `STEWARD_OPS_TOKEN_FILE`, `STEWARD_POSTGRES_URL`, `STEWARD_POSTGRES_URL_FILE`,
    /// `STEWARD_POSTGRES_MIGRATE_URL` and `STEWARD_POSTGRES_MIGRATE_URL_FILE`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = var("STEWARD_PROFILE") {
            self.profile = v.parse()?;
        }
        if let Some(v) = var("STEWARD_LISTEN") {
            self.listen = v.parse().map_err(|e| format!("STEWARD_LISTEN: {e}"))?;
        }
        if let Some(v) = var("STEWARD_DATABASE") {
            self.database = PathBuf::from(v);
        }
        if let Some(v) = var("STEWARD_REGION") {
            self.region = v.parse().map_err(|e| format!("STEWARD_REGION: {e}"))?;
        }
        if var("STEWARD_MASTER_KEY").is_some() {
            self.master_key = Some(SecretRef::Env("STEWARD_MASTER_KEY".into()));
        }
        if let Some(v) = var("STEWARD_MASTER_KEY_FILE") {
            self.master_key = Some(SecretRef::File(PathBuf::from(v)));
        }
        if var("STEWARD_PREVIOUS_MASTER_KEY").is_some() {
            self.previous_master_key = Some(SecretRef::Env("STEWARD_PREVIOUS_MASTER_KEY".into()));
        }
        if let Some(v) = var("STEWARD_PREVIOUS_MASTER_KEY_FILE") {
            self.previous_master_key = Some(SecretRef::File(PathBuf::from(v)));
        }
        if var("STEWARD_OPS_TOKEN").is_some() {
            self.ops_token = Some(SecretRef::Env("STEWARD_OPS_TOKEN".into()));
        }
        if let Some(v) = var("STEWARD_OPS_TOKEN_FILE") {
            self.ops_token = Some(SecretRef::File(PathBuf::from(v)));
        }
        if let Some(url) = secret_from_env(&var, "STEWARD_POSTGRES_URL") {
            self.postgres_url = Some(url);
        }
        if let Some(url) = secret_from_env(&var, "STEWARD_POSTGRES_MIGRATE_URL") {
            self.postgres_migrate_url = Some(url);
        }
        Ok(())
    }

    /// Refuses settings the profile does not allow.
    pub fn check(&self) -> Result<(), String> {
        if self.delivery_retention_days < 7 {
            return Err(
                "delivery_retention_days must be at least 7: senders retry for days".into(),
            );
        }
        if self.runs.max_live_actors == 0 {
            return Err("runs.max_live_actors must be at least 1".into());
        }
        if self.profile != Profile::Dev && self.master_key.is_none() {
            return Err(format!(
                "profile {:?} needs a master key (STEWARD_MASTER_KEY_FILE)",
                self.profile
            ));
        }
        if self.profile == Profile::Production && self.allow_plain_http {
            return Err("production refuses allow_plain_http".into());
        }
        self.http.limits()?;
        self.tls.options(self.profile, Path::new("."))?;
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && self.https_only()
            && !endpoint.to_ascii_lowercase().starts_with("https://")
        {
            return Err(format!(
                "telemetry.otlp_endpoint must be an https:// URL in profile {:?} (got \
                 {endpoint}); plain HTTP is allowed only in the dev profile or with \
                 allow_plain_http",
                self.profile
            ));
        }
        self.telemetry.options()?;
        self.retention.sweep()?;
        self.egress.egress(self.profile)?;
        if let Some(oidc) = &self.oidc {
            oidc.unchecked(self.profile, self.allow_plain_http)?;
        }
        self.peers().map(drop)
    }

    /// Whether outbound calls (connectors, the OTLP endpoint) must be `https://`: in every
    /// profile but `dev`, unless a test setup sets `allow_plain_http` (refused in production).
    pub fn https_only(&self) -> bool {
        self.profile != Profile::Dev && !self.allow_plain_http
    }

    /// The peer base URLs by region; refuses an unknown region or a URL that is not http(s).
    pub fn peers(&self) -> Result<std::collections::HashMap<Region, String>, String> {
        let mut peers = std::collections::HashMap::new();
        for (region, url) in &self.peer_base_urls {
            let parsed: Region = region
                .parse()
                .map_err(|e| format!("peer_base_urls: `{region}` is not a region: {e}"))?;
            let ok = url::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(format!(
                    "peer_base_urls.{region} must be an http or https URL"
                ));
            }
            peers.insert(parsed, url.clone());
        }
        Ok(peers)
    }
}

/// `name_FILE` as a file reference, or else `name` as a variable reference, when set.
fn secret_from_env(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<SecretRef> {
    if let Some(path) = var(&format!("{name}_FILE")) {
        return Some(SecretRef::File(PathBuf::from(path)));
    }
    var(name).map(|_| SecretRef::Env(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        profile = "staging"
        listen = "127.0.0.1:9000"
        database = "/var/lib/steward/steward.db"
        master_key = { file = "master.key" }

        [tls]
        terminates_at_proxy = true

        [[tenants]]
        id = "eu-acme"
        name = "Acme"
        api_token = { env = "ACME_TOKEN" }
        servicenow = { instance_url = "https://acme.service-now.com", grant = "password", client_id = "c", username = "steward", client_secret = { file = "sn_secret" }, password = { file = "sn_password" } }
        slack = { api_base = "https://slack.com/api/", approval_channel = "C1", approvers = ["U1"], bot_token = { file = "bot" }, signing_secret = { file = "signing" } }
        llm = { provider = "openai", base_url = "https://api.openai.com/v1/", model = "gpt-4o-mini", api_key = { env = "ACME_LLM_KEY" } }
        sources = [{ name = "servicenow", secret = { file = "whsec" }, sys_id_pointers = ["/sys_id"] }]
    "#;

    #[test]
    fn the_sample_parses_and_env_overrides_it() {
        let mut c: FileConfig = toml::from_str(SAMPLE).unwrap();
        assert_eq!(c.tenants[0].servicenow.settings().grant, "password");
        c.apply_env(|k| (k == "STEWARD_LISTEN").then(|| "127.0.0.1:7000".to_owned()))
            .unwrap();
        assert_eq!(c.listen.port(), 7000);
        c.check().unwrap();
        assert_eq!(c.runs.max_live_actors, 2_000, "the default");
        let capped = format!("{SAMPLE}\n[runs]\nmax_live_actors = 0\n");
        let c: FileConfig = toml::from_str(&capped).unwrap();
        let err = c.check().unwrap_err();
        assert!(err.contains("max_live_actors must be at least 1"), "{err}");
    }

    #[test]
    fn a_source_names_its_scheme_and_its_secret_must_suit_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("sn_secret", "s"),
            ("sn_password", "p"),
            ("bot", "xoxb-1"),
            ("signing", "sig"),
            ("llm_key", "k"),
            ("token", "stw_x"),
            ("whsec", "8f742231b10e8888abcd99yyyzzz85a5"),
        ];
        for (file, value) in files {
            std::fs::write(dir.path().join(file), value).unwrap();
        }
        let spec = |scheme: &str| {
            let text = SAMPLE
                .replace(r#"{ env = "ACME_TOKEN" }"#, r#"{ file = "token" }"#)
                .replace(r#"{ env = "ACME_LLM_KEY" }"#, r#"{ file = "llm_key" }"#)
                .replace(
                    r#"{ name = "servicenow","#,
                    &format!(r#"{{ name = "servicenow", scheme = "{scheme}","#),
                );
            let c: FileConfig = toml::from_str(&text).unwrap();
            crate::boot::tenant_from_config(&c.tenants[0], dir.path())
        };
        assert_eq!(spec("slack").unwrap().sources[0].0.scheme, "slack");
        let err = spec("standard-webhooks").err().unwrap().to_string();
        assert!(err.contains("whsec_") && !err.contains("8f7422"), "{err}");
        let err = spec("hmac").err().unwrap().to_string();
        assert!(err.contains("unknown signature scheme"), "{err}");
        let c: FileConfig = toml::from_str(SAMPLE).unwrap();
        assert_eq!(c.tenants[0].sources[0].scheme, None, "the default");
    }

    #[test]
    fn approval_timing_defaults_unless_the_tenant_sets_it() {
        let c: FileConfig = toml::from_str(SAMPLE).unwrap();
        let defaults = c.tenants[0].slack.settings();
        assert_eq!(defaults.remind_after_secs, 4 * 3600);
        assert_eq!(defaults.expire_after_secs, 72 * 3600);
        assert!(!defaults.escalates());

        let custom = SAMPLE.replace(
            "approvers = [\"U1\"],",
            "approvers = [\"U1\"], remind_after_secs = 0, escalate_after_secs = 600, \
             escalation_channel = \"C2\", escalation_approvers = [\"U9\"], \
             expire_after_secs = 3600,",
        );
        let c: FileConfig = toml::from_str(&custom).unwrap();
        let slack = c.tenants[0].slack.settings();
        assert_eq!(slack.remind_after_secs, 0);
        assert_eq!(slack.escalate_after_secs, 600);
        assert_eq!(slack.escalation_channel.as_deref(), Some("C2"));
        assert_eq!(slack.escalation_approvers, vec!["U9".to_owned()]);
        assert_eq!(slack.expire_after_secs, 3600);
        assert!(slack.escalates());
    }

    #[test]
    fn the_documented_example_config_parses() {
        let c: FileConfig =
            toml::from_str(include_str!("../../deploy/steward.example.toml")).unwrap();
        assert_eq!(c.tenants.len(), 1);
        c.check().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_profiles_are_refused() {
        assert!(toml::from_str::<FileConfig>("colour = 1").is_err());
        let mut c: FileConfig = toml::from_str("").unwrap();
        assert!(
            c.apply_env(|k| (k == "STEWARD_PROFILE").then(|| "prod".to_owned()))
                .is_err()
        );
        c.profile = Profile::Production;
        assert!(c.check().unwrap_err().contains("master key"));
    }

    #[test]
    fn staging_and_production_refuse_to_start_without_tls() {
        for profile in ["staging", "production"] {
            let text = format!(
                "profile = \"{profile}\"\nmaster_key = {{ file = \"k\" }}\n[http]\nrate_limit = true\n"
            );
            let c: FileConfig = toml::from_str(&text).unwrap();
            let err = c.check().unwrap_err();
            assert!(
                err.contains("needs TLS")
                    && err.contains("cert_file and key_file")
                    && err.contains("terminates_at_proxy = true"),
                "{err}"
            );
        }
        let dev: FileConfig = toml::from_str("").unwrap();
        dev.check().unwrap();
        assert!(
            dev.tls
                .options(Profile::Dev, Path::new("."))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn tls_takes_a_pair_of_files_or_a_proxy_but_not_both() {
        let base = Path::new("/etc/steward");
        let parse = |tls: &str| -> FileConfig {
            toml::from_str(&format!(
                "profile = \"production\"\nmaster_key = {{ file = \"k\" }}\n[tls]\n{tls}"
            ))
            .unwrap()
        };
        let proxy = parse("terminates_at_proxy = true\n");
        proxy.check().unwrap();
        assert!(proxy.tls.options(proxy.profile, base).unwrap().is_none());

        let files = parse(
            "cert_file = \"tls/tls.crt\"\nkey_file = \"/run/tls.key\"\nreload_interval_secs = 2\n",
        );
        files.check().unwrap();
        let options = files.tls.options(files.profile, base).unwrap().unwrap();
        assert_eq!(options.cert_file, Path::new("/etc/steward/tls/tls.crt"));
        assert_eq!(options.key_file, Path::new("/run/tls.key"));
        assert_eq!(options.reload_every, Duration::from_secs(2));
        assert_eq!(options.handshake_timeout, Duration::from_secs(10));

        for (bad, want) in [
            ("cert_file = \"a\"\n", "set together"),
            ("key_file = \"a\"\n", "set together"),
            (
                "cert_file = \"a\"\nkey_file = \"b\"\nterminates_at_proxy = true\n",
                "choose one",
            ),
            (
                "terminates_at_proxy = true\nreload_interval_secs = 0\n",
                "reload_interval",
            ),
            (
                "terminates_at_proxy = true\nhandshake_timeout_secs = 0\n",
                "handshake",
            ),
            (
                "terminates_at_proxy = true\nhandshake_timeout_secs = 999\n",
                "handshake",
            ),
        ] {
            let err = parse(bad).check().unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
        assert!(toml::from_str::<FileConfig>("[tls]\ncert = \"a\"\n").is_err());
    }

    #[test]
    fn outside_dev_the_otlp_endpoint_must_be_https() {
        let text = |profile: &str, endpoint: &str, plain: bool| {
            format!(
                "profile = \"{profile}\"\nmaster_key = {{ file = \"k\" }}\n\
                 allow_plain_http = {plain}\n[tls]\nterminates_at_proxy = true\n\
                 [telemetry]\notlp_endpoint = \"{endpoint}\"\n"
            )
        };
        let check = |profile, endpoint, plain| {
            toml::from_str::<FileConfig>(&text(profile, endpoint, plain))
                .unwrap()
                .check()
        };
        let err = check("production", "http://otel.example:4318", false).unwrap_err();
        assert!(
            err.contains("otlp_endpoint must be an https:// URL"),
            "{err}"
        );
        assert!(check("staging", "http://127.0.0.1:4318", false).is_err());
        check("production", "https://otel.example:4318", false).unwrap();
        check("staging", "http://127.0.0.1:4318", true).unwrap();
        check("dev", "http://127.0.0.1:4318", false).unwrap();
    }

    #[test]
    fn peer_base_urls_name_known_regions_and_http_urls() {
        let c: FileConfig =
            toml::from_str("peer_base_urls = { eu = \"https://eu.steward.example\" }").unwrap();
        let peers = c.peers().unwrap();
        assert_eq!(peers[&Region::Eu], "https://eu.steward.example");
        for bad in [
            "peer_base_urls = { mars = \"https://m.example\" }",
            "peer_base_urls = { eu = \"ftp://eu.example\" }",
            "peer_base_urls = { eu = \"not a url\" }",
        ] {
            let c: FileConfig = toml::from_str(bad).unwrap();
            assert!(c.peers().is_err(), "{bad}");
        }
    }

    #[test]
    fn oidc_needs_https_outside_dev_and_known_roles() {
        let text = r#"
            [oidc]
            issuer = "http://127.0.0.1:18084"
            client_id = "steward"
            client_secret = { env = "STEWARD_TEST_OIDC_SECRET_UNSET" }
            redirect_url = "http://127.0.0.1:8080/ops/oidc/callback"
            [oidc.roles]
            sre = "operator"
            "on-call" = "oncall"
            cab = "approver"
        "#;
        let mut c: FileConfig = toml::from_str(text).unwrap();
        let oidc = c.oidc.clone().unwrap();
        assert_eq!(oidc.groups_claim, "groups");
        assert_eq!(oidc.roles["on-call"], steward_api::Role::Oncall);
        assert!(c.check().is_ok(), "dev takes a loopback http issuer");
        assert!(
            oidc.settings(Profile::Dev, false, Path::new("."))
                .unwrap_err()
                .contains("client_secret"),
            "an unset secret is named, not guessed"
        );
        c.profile = Profile::Staging;
        c.master_key = Some(SecretRef::Env("K".into()));
        c.tls.terminates_at_proxy = true;
        assert!(c.check().unwrap_err().contains("https"));
        c.allow_plain_http = true;
        assert!(c.check().is_ok());
        c.profile = Profile::Production;
        c.allow_plain_http = false;
        assert!(c.check().unwrap_err().contains("https"));
        let https = text
            .replace(
                "http://127.0.0.1:18084",
                "https://idp.example.com/realms/ops",
            )
            .replace("http://127.0.0.1:8080", "https://steward.example.com");
        let mut p: FileConfig = toml::from_str(&https).unwrap();
        p.profile = Profile::Production;
        p.master_key = Some(SecretRef::Env("K".into()));
        p.tls.terminates_at_proxy = true;
        assert!(p.check().is_ok());
        assert!(toml::from_str::<FileConfig>(&text.replace("\"oncall\"", "\"admin\"")).is_err());
        assert!(toml::from_str::<FileConfig>(&format!("{text}\nbogus = 1")).is_err());
        let no_roles = text.split("[oidc.roles]").next().unwrap();
        let c: FileConfig = toml::from_str(no_roles).unwrap();
        assert!(c.check().unwrap_err().contains("roles"));
        let mut skew: FileConfig = toml::from_str(text).unwrap();
        skew.oidc.as_mut().unwrap().clock_skew_secs = 301;
        assert!(skew.check().is_err());
    }

    #[test]
    fn the_ops_token_comes_from_the_file_or_the_environment() {
        let c: FileConfig = toml::from_str("ops_token = { file = \"ops.token\" }").unwrap();
        assert!(matches!(c.ops_token, Some(SecretRef::File(_))));
        let mut c: FileConfig = toml::from_str("").unwrap();
        assert!(c.ops_token.is_none());
        c.apply_env(|k| (k == "STEWARD_OPS_TOKEN_FILE").then(|| "/run/ops".to_owned()))
            .unwrap();
        assert!(matches!(c.ops_token, Some(SecretRef::File(p)) if p == Path::new("/run/ops")));
        assert!(toml::from_str::<FileConfig>("ops_token = \"inline-secret\"").is_err());
    }

    #[test]
    fn secrets_read_from_files_lose_their_newline_and_errors_hide_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "hunter2\n").unwrap();
        let s = SecretRef::File("s".into()).read(dir.path()).unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&s), "hunter2");
        let e = SecretRef::Env("STEWARD_TEST_UNSET_VAR".into())
            .read(dir.path())
            .unwrap_err();
        assert!(e.contains("STEWARD_TEST_UNSET_VAR"));
    }

    #[test]
    fn the_postgres_urls_come_from_the_file_or_the_environment() {
        let c: FileConfig = toml::from_str(
            "postgres_url = { env = \"PG_URL\" }\npostgres_migrate_url = { file = \"owner\" }",
        )
        .unwrap();
        assert!(matches!(&c.postgres_url, Some(SecretRef::Env(v)) if v == "PG_URL"));
        assert!(matches!(c.postgres_migrate_url, Some(SecretRef::File(_))));
        assert!(toml::from_str::<FileConfig>("postgres_url = \"postgres://u:pw@h/db\"").is_err());

        let mut c: FileConfig = toml::from_str("").unwrap();
        assert!(c.postgres_url.is_none());
        c.apply_env(|k| match k {
            "STEWARD_POSTGRES_URL" => Some("postgres://steward_service@db/steward".to_owned()),
            "STEWARD_POSTGRES_MIGRATE_URL_FILE" => Some("/run/owner".to_owned()),
            _ => None,
        })
        .unwrap();
        assert!(matches!(&c.postgres_url, Some(SecretRef::Env(v)) if v == "STEWARD_POSTGRES_URL"));
        assert!(
            matches!(&c.postgres_migrate_url, Some(SecretRef::File(p)) if p == Path::new("/run/owner"))
        );
    }

    #[test]
    fn the_http_section_has_limiting_defaults_and_can_turn_rate_limits_off() {
        let c: FileConfig = toml::from_str("").unwrap();
        let limits = c.http.limits().unwrap();
        assert_eq!(limits.rate, RateLimits::recommended());
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.max_header_bytes, 16 * 1024);

        let c: FileConfig = toml::from_str(
            "[http]\nrate_limit = false\nheader_read_timeout_secs = 2\nmax_headers = 40",
        )
        .unwrap();
        let limits = c.http.limits().unwrap();
        assert_eq!(limits.rate, RateLimits::off());
        assert_eq!(limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(limits.max_headers, 40);

        let c: FileConfig =
            toml::from_str("[http]\nper_address_per_second = 0\nper_tenant_burst = 1").unwrap();
        let rate = c.http.limits().unwrap().rate;
        assert_eq!(rate.per_address, None);
        assert_eq!(rate.per_tenant, RateLimit::new(100, 100));
        assert!(rate.trusted_proxies.is_empty());

        let c: FileConfig =
            toml::from_str("[http]\ntrusted_proxies = [\"10.0.0.5\", \"::1\"]").unwrap();
        assert_eq!(c.http.limits().unwrap().rate.trusted_proxies.len(), 2);
        assert!(toml::from_str::<FileConfig>("[http]\ntrusted_proxies = [\"proxy\"]").is_err());

        for bad in [
            "[http]\nheader_read_timeout_secs = 0",
            "[http]\nmax_header_bytes = 100",
            "[http]\nmax_headers = 2",
        ] {
            let c: FileConfig = toml::from_str(bad).unwrap();
            assert!(c.check().is_err(), "{bad}");
        }
        assert!(toml::from_str::<FileConfig>("[http]\nrate = 1").is_err());
        let c: FileConfig =
            toml::from_str("[http]\noutbound_ca_file = \"missing-ca.pem\"").unwrap();
        assert_eq!(
            c.http.outbound_ca_file,
            Some(PathBuf::from("missing-ca.pem"))
        );
        let err = c.http.outbound_roots(Path::new(".")).unwrap_err();
        assert!(
            err.starts_with("http.outbound_ca_file: cannot read the CA file"),
            "{err}"
        );
        let none: FileConfig = toml::from_str("").unwrap();
        assert!(none.http.outbound_roots(Path::new(".")).unwrap().is_empty());
    }

    #[test]
    fn telemetry_is_off_unless_an_endpoint_is_set() {
        let c: FileConfig = toml::from_str("").unwrap();
        assert!(c.telemetry.options().unwrap().is_none());
        assert_eq!(c.telemetry.service_name, "steward");
        let on: FileConfig = toml::from_str(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nservice_name = \"s\"",
        )
        .unwrap();
        let options = on.telemetry.options().unwrap().unwrap();
        assert_eq!(options.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(options.service_name, "s");
        for bad in [
            "[telemetry]\notlp_endpoint = \"collector:4318\"",
            "[telemetry]\notlp_endpoint = \"http://c\"\nservice_name = \"\"",
        ] {
            let c: FileConfig = toml::from_str(bad).unwrap();
            assert!(c.check().is_err(), "{bad}");
        }
        assert!(toml::from_str::<FileConfig>("[telemetry]\nsampler = 1").is_err());
    }

    #[test]
    fn metrics_are_served_by_default_only_in_dev() {
        let c: FileConfig = toml::from_str("").unwrap();
        assert!(c.metrics.enabled(Profile::Dev));
        assert!(!c.metrics.enabled(Profile::Production));
        assert_eq!(c.metrics.audit_verify_every(Profile::Staging), None);
        let on: FileConfig = toml::from_str("[metrics]\nenabled = true").unwrap();
        assert!(on.metrics.enabled(Profile::Production));
        let every = on.metrics.audit_verify_every(Profile::Production);
        assert_eq!(every, Some(Duration::from_secs(3600)));
        let off: FileConfig = toml::from_str("[metrics]\nenabled = false").unwrap();
        assert!(!off.metrics.enabled(Profile::Dev));
        assert!(toml::from_str::<FileConfig>("[metrics]\nport = 1").is_err());
    }

    #[test]
    fn egress_defaults_by_profile_and_lists_replace_a_kind() {
        use steward_adapters::egress::EgressKind::{Llm, ServiceNow};
        let loopback = "http://127.0.0.1:9/v1";
        let c: FileConfig = toml::from_str(SAMPLE).unwrap();
        let staging = c.egress.egress(c.profile).unwrap();
        assert_eq!(staging, Egress::default(), "no loopback outside dev");
        assert!(staging.check(Region::Us, Llm, loopback).is_err());
        let dev = c.egress.egress(Profile::Dev).unwrap();
        assert!(dev.check(Region::Eu, Llm, loopback).is_ok());

        let text =
            format!("{SAMPLE}\n[egress.eu]\nllm = [\"llm.eu.example\", \"*.internal.example\"]\n");
        let c: FileConfig = toml::from_str(&text).unwrap();
        c.check().unwrap();
        let e = c.egress.egress(c.profile).unwrap();
        assert!(
            e.check(Region::Eu, Llm, "https://llm.eu.example/v1")
                .is_ok()
        );
        assert!(
            e.check(Region::Eu, Llm, "https://api.mistral.ai/v1")
                .is_err()
        );
        assert!(
            e.check(Region::Eu, ServiceNow, "https://acme.service-now.com")
                .is_ok(),
            "other kinds keep their defaults"
        );

        let bad = format!("{SAMPLE}\n[egress.us]\nslack = [\"slack.com:443\"]\n");
        let c: FileConfig = toml::from_str(&bad).unwrap();
        let err = c.check().unwrap_err();
        assert!(err.contains("egress.us.slack"), "{err}");
        let unknown = format!("{SAMPLE}\n[egress.us]\nteams = []\n");
        assert!(toml::from_str::<FileConfig>(&unknown).is_err());
    }

    #[test]
    fn the_retention_sweep_is_bounded_and_may_be_turned_off() {
        let c = RetentionConfig::default();
        let sweep = c.sweep().unwrap().unwrap();
        assert_eq!(sweep.every, Duration::from_secs(3600));
        assert_eq!(sweep.batch, 500);
        let off = RetentionConfig {
            sweep_interval_secs: 0,
            ..RetentionConfig::default()
        };
        assert_eq!(off.sweep().unwrap(), None);
        for bad in [
            RetentionConfig {
                sweep_interval_secs: 86_401,
                ..RetentionConfig::default()
            },
            RetentionConfig {
                batch: 0,
                ..RetentionConfig::default()
            },
            RetentionConfig {
                batch: 5001,
                ..RetentionConfig::default()
            },
        ] {
            assert!(bad.sweep().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cluster_needs_postgres_a_node_id_and_a_sane_lease() {
        let c: FileConfig = toml::from_str("[cluster]\nnode_id = \"steward-0\"").unwrap();
        let cluster = c.cluster.unwrap();
        let o = cluster.options(None, true).unwrap();
        assert_eq!(
            (o.node_id.as_str(), o.lease),
            ("steward-0", Duration::from_secs(15))
        );
        let o = cluster.options(Some("pod-7".into()), true).unwrap();
        assert_eq!(o.node_id, "pod-7", "the variable wins");
        assert!(
            cluster
                .options(None, false)
                .unwrap_err()
                .contains("postgres_url")
        );
        let c: FileConfig = toml::from_str("[cluster]\nlease_secs = 30").unwrap();
        assert!(
            c.cluster
                .unwrap()
                .options(None, true)
                .unwrap_err()
                .contains("node_id")
        );
        for bad in [
            "lease_secs = 2",
            "lease_secs = 601",
            "node_id = \"a b\"",
            "node_id = \"\"",
            "node_id = \"x\"\nnope = 1",
        ] {
            let parsed = toml::from_str::<FileConfig>(&format!("[cluster]\n{bad}"));
            let refused = match parsed {
                Err(_) => true,
                Ok(c) => c.cluster.unwrap().options(None, true).is_err(),
            };
            assert!(refused, "{bad}");
        }
        let long = "n".repeat(129);
        let c: FileConfig = toml::from_str(&format!("[cluster]\nnode_id = \"{long}\"")).unwrap();
        assert!(c.cluster.unwrap().options(None, true).is_err());
    }

    #[test]
    fn the_catchup_pass_is_bounded_and_may_be_turned_off() {
        let c: CatchupConfig = toml::from_str("").unwrap();
        let options = c.options().unwrap().unwrap();
        assert_eq!(options.every, Duration::from_secs(300));
        assert_eq!(options.lookback, Duration::from_secs(24 * 3600));
        assert_eq!((options.max_pages, options.page_size), (20, 100));
        let off: CatchupConfig = toml::from_str("interval_secs = 0").unwrap();
        assert_eq!(off.options().unwrap(), None);
        for bad in [
            "interval_secs = 86401",
            "lookback_hours = 0",
            "lookback_hours = 721",
            "max_pages = 0",
            "page_size = 1001",
            "max_retry_after_secs = 3601",
        ] {
            let c: CatchupConfig = toml::from_str(bad).unwrap();
            assert!(c.options().is_err(), "{bad}");
        }
        assert!(toml::from_str::<CatchupConfig>("interval = 5").is_err());
        assert!(toml::from_str::<CatchupConfig>("page_size = -1").is_err());
    }
}
