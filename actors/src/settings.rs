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
    /// Seconds after the request before a reminder is posted in its thread; 0 for none.
    #[serde(default = "default_remind_after_secs")]
    pub remind_after_secs: u64,
    /// Seconds after the request before it is escalated; 0 for never. Escalation needs an
    /// escalation channel or escalation approvers.
    #[serde(default = "default_escalate_after_secs")]
    pub escalate_after_secs: u64,
    /// Channel id the request is posted to again when it is escalated.
    #[serde(default)]
    pub escalation_channel: Option<String>,
    /// Slack user ids who may also approve or reject once the request is escalated.
    #[serde(default)]
    pub escalation_approvers: Vec<String>,
    /// Seconds after the request before it expires and the run ends `expired`; 0 for never.
    #[serde(default = "default_expire_after_secs")]
    pub expire_after_secs: u64,
}

impl SlackSettings {
    /// Settings for `api_base` with approval requests in `approval_channel`, decided by
    /// `approvers`, and the default reminder, escalation and expiry times.
    pub fn new(api_base: String, approval_channel: String, approvers: Vec<String>) -> Self {
        Self {
            api_base,
            approval_channel,
            approvers,
            remind_after_secs: default_remind_after_secs(),
            escalate_after_secs: default_escalate_after_secs(),
            escalation_channel: None,
            escalation_approvers: Vec::new(),
            expire_after_secs: default_expire_after_secs(),
        }
    }

    /// Whether escalating would reach anyone: a channel to post to or approvers to add.
    pub fn escalates(&self) -> bool {
        self.escalate_after_secs > 0
            && (self.escalation_channel.is_some() || !self.escalation_approvers.is_empty())
    }
}

fn default_remind_after_secs() -> u64 {
    4 * 3600
}

fn default_escalate_after_secs() -> u64 {
    24 * 3600
}

fn default_expire_after_secs() -> u64 {
    72 * 3600
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_settings_without_the_timing_fields_get_the_defaults() {
        let settings: SlackSettings = serde_json::from_value(serde_json::json!({
            "api_base": "https://slack.com/api/",
            "approval_channel": "C1",
            "approvers": ["U1"],
        }))
        .unwrap();
        assert_eq!(
            settings,
            SlackSettings::new(
                "https://slack.com/api/".into(),
                "C1".into(),
                vec!["U1".into()]
            )
        );
        assert_eq!(settings.remind_after_secs, 4 * 3600);
        assert_eq!(settings.escalate_after_secs, 24 * 3600);
        assert_eq!(settings.expire_after_secs, 72 * 3600);
        assert!(!settings.escalates(), "nobody to escalate to");
    }

    #[test]
    fn escalation_needs_a_time_and_someone_to_reach() {
        let mut settings = SlackSettings::new("b".into(), "C1".into(), vec![]);
        settings.escalation_approvers = vec!["U2".into()];
        assert!(settings.escalates());
        settings.escalate_after_secs = 0;
        assert!(!settings.escalates());
        settings.escalate_after_secs = 60;
        settings.escalation_approvers.clear();
        settings.escalation_channel = Some("C2".into());
        assert!(settings.escalates());
    }

    #[test]
    fn unknown_slack_settings_are_refused() {
        let err = serde_json::from_value::<SlackSettings>(serde_json::json!({
            "api_base": "b", "approval_channel": "C1", "approvers": [],
            "remind_after": 5,
        }))
        .unwrap_err();
        assert!(err.to_string().contains("remind_after"), "{err}");
    }
}
