//! A tenant set up from nothing over the API, as a new operator does it: the platform token
//! creates it (`POST /v1/tenants`), and its first admin token sets the three connectors,
//! a webhook source (whose generated secret the answer shows once) and a token for the runs
//! API.

use serde_json::json;
use steward_adapters::slack::sign_slack;
use steward_core::Clock;

use crate::harness::{Harness, OPS_TOKEN, Reply};
use crate::llm::{self, LlmMock};
use crate::servicenow::{self, ServiceNowMock};
use crate::slack::{self, Person, PostedMessage, SlackMock};
use crate::webhook::Delivery;

/// What the operator decides about a new tenant.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Its id (`us-…`, `eu-…`).
    pub id: String,
    /// Its display name.
    pub name: String,
    /// The name of its webhook source.
    pub source: String,
    /// Its Slack approval channel.
    pub channel: String,
    /// Its one approver.
    pub approver: Person,
    /// Its Slack app's signing secret.
    pub signing_secret: String,
}

/// A tenant onboarded over the API, with the credentials the answers handed out.
#[derive(Debug, Clone)]
pub struct Onboarded {
    /// What it was set up with.
    pub spec: NewTenant,
    /// The first admin token.
    pub admin_token: String,
    /// The public id (`tok_…`) of the admin token.
    pub admin_token_id: String,
    /// A token with `runs:read` and `runs:write` only.
    pub runs_token: String,
    /// The public id of the runs token.
    pub runs_token_id: String,
    /// The source's generated `whsec_` secret.
    pub whsec: String,
}

fn expect(reply: &Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
}

/// Creates `tenant` with the platform token on `h`, then configures it with its admin token to
/// use the given mocks. Panics when any step is refused.
pub async fn onboard(
    h: &Harness,
    tenant: &NewTenant,
    servicenow: &ServiceNowMock,
    slack_mock: &SlackMock,
    llm_mock: &LlmMock,
) -> Onboarded {
    let created = h
        .request(
            "POST",
            "/v1/tenants",
            Some(OPS_TOKEN),
            Some(&json!({ "id": tenant.id, "name": tenant.name })),
        )
        .await;
    expect(&created, 201, "creating the tenant");
    let admin = created.body["admin_token"]["value"]
        .as_str()
        .expect("the first admin token")
        .to_owned();
    let admin_id = created.body["admin_token"]["id"]
        .as_str()
        .expect("the admin token's id")
        .to_owned();
    let connectors = [
        (
            "/v1/tenant/connectors/servicenow",
            json!({
                "instance_url": servicenow.uri(), "grant": "password",
                "client_id": servicenow::CLIENT_ID, "username": servicenow::USERNAME,
                "client_secret": servicenow::CLIENT_SECRET, "password": servicenow::PASSWORD,
            }),
        ),
        (
            "/v1/tenant/connectors/slack",
            json!({
                "api_base": slack_mock.api_base(), "approval_channel": tenant.channel,
                "approvers": [tenant.approver.id], "bot_token": slack::BOT_TOKEN,
                "signing_secret": tenant.signing_secret,
            }),
        ),
        (
            "/v1/tenant/connectors/llm",
            json!({
                "provider": "openai", "model": llm::MODEL, "base_url": llm_mock.base_url(),
                "api_key": llm::API_KEY,
            }),
        ),
    ];
    for (path, body) in connectors {
        let reply = h.request("PUT", path, Some(&admin), Some(&body)).await;
        expect(&reply, 200, path);
    }
    let source = json!({
        "name": tenant.source, "sys_id_pointers": ["/incident/sys_id"],
        "number_pointers": ["/incident/number"],
    });
    let reply = h
        .request("POST", "/v1/tenant/sources", Some(&admin), Some(&source))
        .await;
    expect(&reply, 201, "creating the source");
    let whsec = reply.body["secret"]
        .as_str()
        .expect("a generated secret")
        .to_owned();
    let token = json!({ "label": "runs", "scopes": ["runs:read", "runs:write"] });
    let reply = h
        .request("POST", "/v1/tenant/tokens", Some(&admin), Some(&token))
        .await;
    expect(&reply, 201, "issuing the runs token");
    Onboarded {
        spec: tenant.clone(),
        admin_token: admin,
        admin_token_id: admin_id,
        runs_token: reply.body["value"].as_str().expect("a token").to_owned(),
        runs_token_id: reply.body["token"]["id"]
            .as_str()
            .expect("a token id")
            .to_owned(),
        whsec,
    }
}

impl Onboarded {
    /// The tenant's webhook path.
    pub fn webhook_path(&self) -> String {
        format!("/v1/webhooks/{}/{}", self.spec.id, self.spec.source)
    }
}

/// A signed click by `who` on the button `action_id` of `message`: the form body, its
/// timestamp and its `v0` signature under `signing_secret`.
pub fn signed_click(
    message: &PostedMessage,
    action_id: &str,
    who: Person,
    response_url: &str,
    signing_secret: &str,
) -> (Vec<u8>, String, String) {
    let payload = slack::block_actions(message, action_id, who, response_url);
    let body = slack::form_body(&payload);
    let now = steward_core::SystemClock.now_secs();
    let signature = sign_slack(signing_secret, now, &body);
    (body, now.to_string(), signature)
}

/// A delivery of `body`, signed now with `whsec`, under the delivery id `id`.
pub fn delivery(whsec: &str, id: &str, body: Vec<u8>) -> Delivery {
    Delivery::signed(whsec, id, steward_core::SystemClock.now_secs(), body)
}
