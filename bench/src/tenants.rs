//! The benchmark's tenants: many, each with one Standard Webhooks source, their connectors
//! pointed at the local stand-ins, and secrets derived from the tenant's index so that a child
//! server process and the load generator agree on them without passing them around.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use secrecy::SecretString;
use serde_json::json;
use sha2::{Digest, Sha256};
use steward_actors::secret_names;
use steward_actors::settings::TenantSettings;
use steward_adapters::http::HttpSettings;
use steward_adapters::webhook::WebhookSecret;
use steward_core::{SourceName, TenantId};
use steward_persistence::{MasterKey, WebhookSource};
use steward_runtime::boot::{ServeOptions, TenantSpec};
use steward_runtime::standins::StandinSettings;

/// The webhook source every tenant has.
pub(crate) const SOURCE: &str = "alerts";

/// The approval channel every tenant posts to.
pub(crate) const CHANNEL: &str = "C0BENCHAPPR";

/// The Slack user (id, name) who may approve, and who clicks.
pub(crate) const APPROVER: (&str, &str) = ("U0BENCHAPPR", "bench.approver");

/// Where the tenants' connectors point.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// ServiceNow instance base, `http://127.0.0.1:PORT`.
    pub(crate) servicenow: String,
    /// Slack Web API base, `http://127.0.0.1:PORT/api/`.
    pub(crate) slack_api: String,
    /// OpenAI-compatible base, `http://127.0.0.1:PORT/v1/`.
    pub(crate) llm: String,
}

/// The id of tenant `i`: `us-bench-000`, `us-bench-001`, …
pub(crate) fn tenant_id(i: usize) -> TenantId {
    TenantId::parse(&format!("us-bench-{i:03}")).expect("bench tenant ids are valid")
}

/// The `whsec_` secret of tenant `i`'s source.
pub(crate) fn webhook_secret(i: usize) -> String {
    let key = Sha256::digest(format!("steward-bench webhook secret {i}").as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The parsed key of tenant `i`'s source, for signing.
pub(crate) fn signing_key(i: usize) -> WebhookSecret {
    WebhookSecret::parse(&webhook_secret(i)).expect("derived secrets are well-formed")
}

/// The master key of every benchmark database (a fixed fixture, like the demo's values).
pub(crate) fn master_key() -> MasterKey {
    MasterKey::from_bytes(Sha256::digest(b"steward-bench master key").into())
}

/// Tenant `i`, its connectors at `endpoints`, holding the stand-ins' credentials. The settings
/// are read from their stored JSON form, so that settings added later with defaults need no
/// change here.
pub(crate) fn spec(
    i: usize,
    endpoints: &Endpoints,
    standins: &StandinSettings,
) -> anyhow::Result<TenantSpec> {
    let secret = |v: &str| SecretString::from(v.to_owned());
    let settings: TenantSettings = serde_json::from_value(json!({
        "servicenow": {
            "instance_url": endpoints.servicenow,
            "grant": "password",
            "client_id": standins.oauth_client_id,
            "username": standins.sn_username,
        },
        "slack": {
            "api_base": endpoints.slack_api,
            "approval_channel": CHANNEL,
            "approvers": [APPROVER.0],
        },
        "llm": {
            "provider": "openai",
            "base_url": endpoints.llm,
            "model": "gpt-4o-mini",
            "temperature": 0.0,
            "max_tokens": 1024,
        },
    }))
    .context("the benchmark tenant's settings do not fit TenantSettings")?;
    let secrets = vec![
        (
            secret_names::SERVICENOW_CLIENT_SECRET.into(),
            secret(&standins.oauth_client_secret),
        ),
        (
            secret_names::SERVICENOW_PASSWORD.into(),
            secret(&standins.sn_password),
        ),
        (
            secret_names::SLACK_BOT_TOKEN.into(),
            secret(&standins.slack_bot_token),
        ),
        (
            secret_names::SLACK_SIGNING_SECRET.into(),
            secret(&standins.slack_signing_secret),
        ),
        (
            secret_names::LLM_API_KEY.into(),
            secret(&standins.llm_api_key),
        ),
    ];
    let source = WebhookSource {
        secret_name: secret_names::webhook_source(SOURCE),
        name: SourceName::parse(SOURCE).expect("the bench source name is valid"),
        scheme: "standard-webhooks".into(),
        sys_id_pointers: vec!["/incident/sys_id".into()],
        number_pointers: vec!["/incident/number".into()],
    };
    Ok(TenantSpec {
        id: tenant_id(i),
        name: format!("Bench tenant {i}"),
        settings,
        secrets,
        sources: vec![(source, secret(&webhook_secret(i)))],
        api_token: None,
    })
}

/// Serve options for `tenants` tenants on a loopback port, SQLite at `database`.
/// The cap on live run actors every Steward of this process gets, when one was asked for.
static MAX_LIVE_ACTORS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sets the cap on live run actors for every Steward this process starts (the first call wins).
pub(crate) fn set_max_live_actors(max: usize) {
    let _ = MAX_LIVE_ACTORS.set(max);
}

/// The cap asked for on the command line, if any.
pub(crate) fn max_live_actors() -> Option<usize> {
    MAX_LIVE_ACTORS.get().copied()
}

pub(crate) fn serve_options(
    database: PathBuf,
    tenants: usize,
    endpoints: &Endpoints,
    synchronous_full: bool,
) -> anyhow::Result<ServeOptions> {
    let standins = StandinSettings::default();
    let mut opts = ServeOptions::new(database, master_key());
    opts.synchronous_full = synchronous_full;
    opts.http = HttpSettings {
        https_only: false,
        ..HttpSettings::default()
    };
    opts.tenants = (0..tenants)
        .map(|i| spec(i, endpoints, &standins))
        .collect::<anyhow::Result<_>>()?;
    if let Some(max) = max_live_actors() {
        opts.actors.max_live_runs = max;
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secrets_differ_per_tenant_and_parse() {
        assert_ne!(webhook_secret(0), webhook_secret(1));
        assert_eq!(webhook_secret(7), webhook_secret(7));
        WebhookSecret::parse(&webhook_secret(49)).unwrap();
    }

    #[test]
    fn tenant_specs_point_at_the_endpoints() {
        let endpoints = Endpoints {
            servicenow: "http://127.0.0.1:1".into(),
            slack_api: "http://127.0.0.1:2/api/".into(),
            llm: "http://127.0.0.1:3/v1/".into(),
        };
        let spec = spec(2, &endpoints, &StandinSettings::default()).unwrap();
        assert_eq!(spec.settings.slack.api_base, endpoints.slack_api);
        assert_eq!(spec.settings.slack.approvers, vec![APPROVER.0.to_owned()]);
        assert_eq!(spec.sources.len(), 1);
        assert_eq!(spec.id, tenant_id(2));
    }

    #[test]
    fn tenant_ids_are_valid_and_distinct() {
        assert_eq!(tenant_id(3).as_str(), "us-bench-003");
        assert_ne!(tenant_id(10), tenant_id(100));
        assert_eq!(tenant_id(1000).as_str(), "us-bench-1000");
    }
}
