//! Configuration: a TOML file, with `STEWARD_*` environment variables over it. Secrets are never
//! written in the file itself: each names a file or an environment variable to read it from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings};
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
    /// How long delivery ids are remembered for deduplication, in days (at least 7).
    #[serde(default = "default_retention")]
    pub delivery_retention_days: u32,
    /// Allow plain-HTTP connector URLs (never in production).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// How run actors are restarted and passivated.
    #[serde(default)]
    pub runs: RunsConfig,
    /// The operator token for the ops API and page (`/v1/ops/…`, `/ops`), at least 24
    /// characters; only its SHA-256 is kept. Without one, the ops surface refuses everyone.
    #[serde(default)]
    pub ops_token: Option<SecretRef>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
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
}

impl Default for RunsConfig {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            restart_window_secs: 60,
            passivate_after_secs: 30,
        }
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
    /// The `whsec_…` secret shared with the sender.
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
        if self.profile != Profile::Dev && self.master_key.is_none() {
            return Err(format!(
                "profile {:?} needs a master key (STEWARD_MASTER_KEY_FILE)",
                self.profile
            ));
        }
        if self.profile == Profile::Production && self.allow_plain_http {
            return Err("production refuses allow_plain_http".into());
        }
        self.peers().map(drop)
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
}
