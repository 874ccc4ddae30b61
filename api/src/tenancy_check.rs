//! `POST /v1/tenant/check`: tests each connection of a tenant with its stored settings and
//! secrets. ServiceNow: an OAuth token, then one page of the incident list with
//! `sysparm_limit=1`. Slack: `auth.test`. LLM: the provider's `models` listing. Each check is
//! `ok` or says what is wrong; no message quotes a secret or a response body. A URL whose host
//! is off the home region's allow-list fails before any request, with the reason runs give.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use steward_actors::secret_names;
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings};
use steward_adapters::egress::EgressKind;
use steward_persistence::TenantScope;

use crate::state::AppState;

/// The outcome of one connection check: Ok, or what is wrong.
type Outcome = Result<(), String>;

/// Checks every connection; the answer maps each to `{"ok": true}` or
/// `{"ok": false, "problem": "…"}`, plus `ok` for all of them.
pub(crate) async fn run(state: &AppState, scope: &TenantScope, settings: &Value) -> Value {
    let http = match steward_adapters::http::client(&state.tenancy.http) {
        Ok(c) => c,
        Err(e) => return json!({ "ok": false, "problem": format!("no http client: {e}") }),
    };
    let checker = Checker {
        state,
        scope,
        http: &http,
    };
    let servicenow = checker.servicenow(settings.get("servicenow")).await;
    let slack = checker.slack(settings.get("slack")).await;
    let llm = checker.llm(settings.get("llm")).await;
    let all = servicenow.is_ok() && slack.is_ok() && llm.is_ok();
    json!({
        "ok": all,
        "servicenow": shown(servicenow),
        "slack": shown(slack),
        "llm": shown(llm),
    })
}

fn shown(outcome: Outcome) -> Value {
    match outcome {
        Ok(()) => json!({ "ok": true }),
        Err(problem) => json!({ "ok": false, "problem": problem }),
    }
}

fn section<T: serde::de::DeserializeOwned>(value: Option<&Value>, name: &str) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("not configured: PUT /v1/tenant/connectors/{name}"))?;
    serde_json::from_value(value.clone()).map_err(|e| format!("stored settings are invalid: {e}"))
}

/// `base` joined with `path`, keeping the base's own path.
fn endpoint(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// Why a request failed, without the URL's query or any body.
fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the request timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "the request failed".into()
    }
}

struct Checker<'a> {
    state: &'a AppState,
    scope: &'a TenantScope,
    http: &'a reqwest::Client,
}

impl Checker<'_> {
    /// The allow-list check runs make before their clients are built, with the same reason,
    /// so a stored URL no longer allowed fails here without a request.
    fn allowed(&self, kind: EgressKind, url: &str) -> Outcome {
        let region = self.scope.tenant().region();
        self.state
            .tenancy
            .http
            .check_url(region, kind, url)
            .map_err(|refused| refused.to_string())
    }

    async fn secret(&self, name: &str) -> Result<SecretString, String> {
        match self
            .state
            .store
            .secret(self.scope, &self.state.master_key, name)
            .await
        {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(format!("secret `{name}` is not set")),
            Err(_) => Err(format!("secret `{name}` could not be opened")),
        }
    }

    async fn servicenow(&self, value: Option<&Value>) -> Outcome {
        let sn: ServiceNowSettings = section(value, "servicenow")?;
        self.allowed(EgressKind::ServiceNow, &sn.instance_url)?;
        let mut form = vec![
            ("grant_type".to_owned(), sn.grant.clone()),
            ("client_id".to_owned(), sn.client_id.clone()),
        ];
        let client_secret = self.secret(secret_names::SERVICENOW_CLIENT_SECRET).await?;
        form.push(("client_secret".into(), client_secret.expose_secret().into()));
        match sn.grant.as_str() {
            "password" => {
                let password = self.secret(secret_names::SERVICENOW_PASSWORD).await?;
                form.push(("username".into(), sn.username.clone().unwrap_or_default()));
                form.push(("password".into(), password.expose_secret().into()));
            }
            "refresh_token" => {
                let refresh = self.secret(secret_names::SERVICENOW_REFRESH_TOKEN).await?;
                form.push(("refresh_token".into(), refresh.expose_secret().into()));
            }
            _ => {}
        }
        let response = self
            .http
            .post(endpoint(&sn.instance_url, "oauth_token.do"))
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("oauth token: {}", transport(&e)))?;
        if !response.status().is_success() {
            return Err(format!(
                "oauth token: the instance answered {} (check the client id, secret and grant)",
                response.status().as_u16()
            ));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|_| "oauth token: the answer is not JSON".to_owned())?;
        let token = body["access_token"]
            .as_str()
            .ok_or("oauth token: the answer carries no access_token")?
            .to_owned();
        let list = self
            .http
            .get(endpoint(&sn.instance_url, "api/now/table/incident"))
            .query(&[("sysparm_limit", "1")])
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("incident list: {}", transport(&e)))?;
        status_ok(list.status().as_u16(), "incident list")
    }

    async fn slack(&self, value: Option<&Value>) -> Outcome {
        let slack: SlackSettings = section(value, "slack")?;
        self.allowed(EgressKind::Slack, &slack.api_base)?;
        self.secret(secret_names::SLACK_SIGNING_SECRET).await?;
        let bot = self.secret(secret_names::SLACK_BOT_TOKEN).await?;
        let response = self
            .http
            .post(endpoint(&slack.api_base, "auth.test"))
            .bearer_auth(bot.expose_secret())
            .send()
            .await
            .map_err(|e| format!("auth.test: {}", transport(&e)))?;
        status_ok(response.status().as_u16(), "auth.test")?;
        let body: Value = response
            .json()
            .await
            .map_err(|_| "auth.test: the answer is not JSON".to_owned())?;
        if body["ok"].as_bool() == Some(true) {
            Ok(())
        } else {
            let code: String = body["error"]
                .as_str()
                .unwrap_or("unknown")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            Err(format!("auth.test: Slack refused the bot token ({code})"))
        }
    }

    async fn llm(&self, value: Option<&Value>) -> Outcome {
        let llm: LlmConfig = section(value, "llm")?;
        self.allowed(EgressKind::Llm, &llm.base_url)?;
        let key = self.secret(secret_names::LLM_API_KEY).await?;
        let request = self.http.get(endpoint(&llm.base_url, "models"));
        let request = match llm.provider.as_str() {
            "anthropic" => request
                .header("x-api-key", key.expose_secret())
                .header("anthropic-version", "2023-06-01"),
            _ => request.bearer_auth(key.expose_secret()),
        };
        let response = request
            .send()
            .await
            .map_err(|e| format!("models: {}", transport(&e)))?;
        status_ok(response.status().as_u16(), "models")
    }
}

fn status_ok(status: u16, what: &str) -> Outcome {
    match status {
        200..=299 => Ok(()),
        401 | 403 => Err(format!("{what}: the credentials were refused ({status})")),
        _ => Err(format!("{what}: answered {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_the_base_path_once() {
        assert_eq!(
            endpoint("https://api.example.com/v1/", "models"),
            "https://api.example.com/v1/models"
        );
        assert_eq!(
            endpoint("https://x.service-now.com", "oauth_token.do"),
            "https://x.service-now.com/oauth_token.do"
        );
    }

    #[test]
    fn statuses_say_what_is_wrong() {
        assert!(status_ok(204, "x").is_ok());
        assert!(status_ok(401, "x").unwrap_err().contains("refused"));
        assert!(status_ok(500, "x").unwrap_err().contains("500"));
    }

    #[test]
    fn a_missing_section_says_how_to_set_it() {
        let err = section::<LlmConfig>(None, "llm").unwrap_err();
        assert!(err.contains("/v1/tenant/connectors/llm"), "{err}");
        let bad = json!({ "provider": 5 });
        assert!(section::<LlmConfig>(Some(&bad), "llm").is_err());
    }
}
