//! A tenant's connector settings as stored with the tenant (no secret values: those live sealed
//! in the vault under the names below).

use std::collections::BTreeMap;

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
    /// Approver groups for the tenant's policies: group name to the Slack user ids in it. A
    /// policy names a group as `Steward::Group::"name"`; `approvers` and `escalation` are the
    /// lists above and cannot be redefined here.
    #[serde(default)]
    pub approver_groups: BTreeMap<String, Vec<String>>,
    /// Who each Slack user is elsewhere, so that the person who asked for a change is known
    /// whichever system they asked from.
    #[serde(default)]
    pub people: Vec<PersonLink>,
}

/// One person across the systems Steward sees them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonLink {
    /// Their Slack user id.
    pub slack_user: String,
    /// Their ServiceNow user record (`sys_user` sys_id), as incident reference fields hold it.
    #[serde(default)]
    pub servicenow_user: Option<String>,
    /// Labels of the API tokens they use.
    #[serde(default)]
    pub token_labels: Vec<String>,
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
            approver_groups: BTreeMap::new(),
            people: Vec::new(),
        }
    }

    /// The policy groups `user` is in: `approvers`, `escalation` and the tenant's own.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        let mut groups = Vec::new();
        if self.approvers.iter().any(|a| a == user) {
            groups.push(crate::policy::APPROVERS_GROUP.to_owned());
        }
        if self.escalation_approvers.iter().any(|a| a == user) {
            groups.push(crate::policy::ESCALATION_GROUP.to_owned());
        }
        for (name, members) in &self.approver_groups {
            if members.iter().any(|m| m == user) {
                groups.push(name.clone());
            }
        }
        groups
    }

    /// Everyone who may approve something under some policy: listed, escalation and group
    /// approvers. A click by anyone else is refused before the policy is asked.
    pub fn knows_approver(&self, user: &str) -> bool {
        !self.groups_of(user).is_empty()
    }

    /// Whether the Slack user `user` is the requester: the same Slack user, the ServiceNow
    /// user who opened the incident, or the holder of the API token that started the run.
    pub fn is_requester(&self, user: &str, requester: &Requester) -> bool {
        if requester.slack.as_deref() == Some(user) {
            return true;
        }
        self.people
            .iter()
            .filter(|p| p.slack_user == user)
            .any(|p| {
                let servicenow = p.servicenow_user.is_some()
                    && p.servicenow_user.as_deref() == requester.servicenow.as_deref();
                let token = requester
                    .token_label
                    .as_ref()
                    .is_some_and(|label| p.token_labels.iter().any(|l| l == label));
                servicenow || token
            })
    }
}

/// Who asked for a run's change, as each system names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    pub slack: Option<String>,
    pub servicenow: Option<String>,
    pub token_label: Option<String>,
}

impl SlackSettings {
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

/// What a tenant decides about its own runs beyond reaching its services: shadow mode and its
/// budgets. Stored as the `shadow` and `budgets` sections of the settings document, beside the
/// connector sections, and taken out of it before those are read ([`TenantControls::take`]),
/// so the connector settings keep refusing unknown fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantControls {
    pub shadow: ShadowSettings,
    pub budgets: crate::budgets::Budgets,
}

/// Shadow mode: a run does everything up to the write (fetch, triage, policy, a marked notice
/// in Slack) and writes nothing; it ends `shadowed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSettings {
    pub enabled: bool,
}

impl TenantControls {
    /// The settings section of shadow mode.
    pub const SHADOW: &'static str = "shadow";
    /// The settings section of the budgets.
    pub const BUDGETS: &'static str = "budgets";

    /// Removes the control sections from a stored settings document and reads them; absent
    /// sections take their defaults (no shadow mode, the platform's budgets).
    pub fn take(document: &mut serde_json::Value) -> Result<Self, String> {
        let Some(object) = document.as_object_mut() else {
            return Ok(Self::default());
        };
        let shadow = object
            .remove(Self::SHADOW)
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| format!("the `shadow` settings are invalid: {e}"))?
            .unwrap_or_default();
        let budgets = object
            .remove(Self::BUDGETS)
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| format!("the `budgets` settings are invalid: {e}"))?
            .unwrap_or_default();
        Ok(Self { shadow, budgets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requester_is_known_from_any_system_they_asked_from() {
        let mut slack = SlackSettings::new("http://x/".into(), "C1".into(), vec!["U1".into()]);
        slack.people = vec![
            PersonLink {
                slack_user: "U1".into(),
                servicenow_user: Some("snow-ana".into()),
                token_labels: vec!["ana-cli".into()],
            },
            PersonLink {
                slack_user: "U2".into(),
                servicenow_user: None,
                token_labels: vec![],
            },
        ];
        let by_slack = Requester {
            slack: Some("U2".into()),
            ..Requester::default()
        };
        assert!(slack.is_requester("U2", &by_slack));
        assert!(!slack.is_requester("U1", &by_slack));
        let by_servicenow = Requester {
            servicenow: Some("snow-ana".into()),
            ..Requester::default()
        };
        assert!(slack.is_requester("U1", &by_servicenow));
        assert!(
            !slack.is_requester("U2", &by_servicenow),
            "an unmapped person is not"
        );
        let by_token = Requester {
            token_label: Some("ana-cli".into()),
            ..Requester::default()
        };
        assert!(slack.is_requester("U1", &by_token));
        let nobody = Requester::default();
        assert!(!slack.is_requester("U1", &nobody) && !slack.is_requester("U2", &nobody));
    }

    #[test]
    fn groups_come_from_the_lists_and_the_tenant_groups() {
        let mut slack = SlackSettings::new("http://x/".into(), "C1".into(), vec!["U1".into()]);
        slack.escalation_approvers = vec!["U2".into()];
        slack
            .approver_groups
            .insert("leads".into(), vec!["U1".into(), "U3".into()]);
        assert_eq!(slack.groups_of("U1"), vec!["approvers", "leads"]);
        assert_eq!(slack.groups_of("U2"), vec!["escalation"]);
        assert_eq!(slack.groups_of("U3"), vec!["leads"]);
        assert!(slack.groups_of("U4").is_empty());
    }

    #[test]
    fn control_sections_are_taken_out_of_the_settings_document() {
        let mut doc = serde_json::json!({
            "llm": {"x": 1},
            "shadow": {"enabled": true},
            "budgets": {"llm_calls_per_hour": 5},
        });
        let controls = TenantControls::take(&mut doc).unwrap();
        assert!(controls.shadow.enabled);
        assert_eq!(controls.budgets.llm_calls_per_hour, Some(5));
        assert_eq!(doc, serde_json::json!({"llm": {"x": 1}}));
        let mut none = serde_json::json!({});
        assert_eq!(
            TenantControls::take(&mut none).unwrap(),
            TenantControls::default()
        );
        let mut bad = serde_json::json!({"shadow": {"on": true}});
        let err = TenantControls::take(&mut bad).unwrap_err();
        assert!(err.contains("shadow") && err.contains("on"), "{err}");
    }

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
