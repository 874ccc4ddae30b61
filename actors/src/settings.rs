//! A tenant's connector settings as stored with the tenant (no secret values: those live sealed
//! in the vault under the names below).

use serde::{Deserialize, Serialize};

/// Vault names of a tenant's secrets.
pub mod secret_names {
    pub const SERVICENOW_CLIENT_SECRET: &str = "servicenow.client_secret";
    pub const SERVICENOW_PASSWORD: &str = "servicenow.password";
    pub const SERVICENOW_REFRESH_TOKEN: &str = "servicenow.refresh_token";
    pub const SLACK_BOT_TOKEN: &str = "slack.bot_token";
    pub const SLACK_SIGNING_SECRET: &str = "slack.signing_secret";
    pub const LLM_API_KEY: &str = "llm.api_key";

    /// The vault name of a webhook source's `whsec_` secret.
    pub fn webhook_source(source: &str) -> String {
        format!("webhook.{source}")
    }
}

/// Everything Steward needs to reach a tenant's outside world, minus the secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    pub servicenow: ServiceNowSettings,
    pub slack: SlackSettings,
    pub llm: LlmConfig,
    /// The tenant's own Cedar policies, used instead of the default set when present.
    #[serde(default)]
    pub policy: Option<String>,
}

/// How a ServiceNow instance is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowSettings {
    /// Instance base URL, for example `https://acme.service-now.com`.
    pub instance_url: String,
    /// OAuth grant: `password`, `refresh_token` or `client_credentials`.
    pub grant: String,
    pub client_id: String,
    /// The integration user, for the password grant.
    #[serde(default)]
    pub username: Option<String>,
}

/// How the tenant's Slack workspace is reached, and who may approve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// Web API base, `https://slack.com/api/` in production.
    pub api_base: String,
    /// Channel id where approval requests are posted.
    pub approval_channel: String,
    /// Slack user ids allowed to approve or reject.
    pub approvers: Vec<String>,
}

/// The tenant's own LLM provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// `openai` (any OpenAI-compatible Chat Completions endpoint) or `anthropic`.
    pub provider: String,
    pub base_url: String,
    pub model: String,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
}

fn default_temperature() -> f32 {
    0.0
}

fn default_max_tokens() -> u32 {
    1024
}
