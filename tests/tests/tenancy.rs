//! Tenants from nothing over the API: onboarding with the platform token, connectors, secrets,
//! policy and sources set by the tenant admin, the first approved run, tokens and their scopes,
//! hostile input, and offboarding. Every answer is scanned for the secret values it must never
//! carry.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::slack::{APPROVE_ACTION, sign_slack};
use steward_core::TenantId;
use steward_persistence::{Authenticator, MasterKey, Store, TenantScope};
use steward_runtime::boot::{self, ServeOptions, Server};
use steward_tests::harness::eventually;
use steward_tests::llm::{self, LlmMock};
use steward_tests::servicenow::{self, ServiceNowMock};
use steward_tests::slack::{self, APPROVER, SlackMock};
use steward_tests::webhook::{self, Delivery};
use steward_tests::{fixtures, harness};

const OPS_TOKEN: &str = "ops-platform-token-0123456789abcdef";
const SIGNING_SECRET: &str = "tenancy-e2e-slack-signing-secret";
const CHANNEL: &str = "C0TENANCY01";

/// A Steward with no tenants, the platform token, and the three mocked services.
struct World {
    server: Option<Server>,
    servicenow: ServiceNowMock,
    slack: SlackMock,
    llm: LlmMock,
    http: reqwest::Client,
    key: MasterKey,
    _dir: tempfile::TempDir,
    /// Every answer body seen, for the secret scan.
    seen: Mutex<Vec<String>>,
}

/// An answer: status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

impl World {
    async fn start() -> Self {
        let servicenow = ServiceNowMock::start(fixtures::incident()).await;
        let slack = SlackMock::start().await;
        let llm = LlmMock::start(llm::answering(&fixtures::triage().to_string())).await;
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let mut opts = ServeOptions::new(dir.path().join("steward.db"), key.clone());
        opts.ops_token = Some(SecretString::from(OPS_TOKEN));
        opts.peer_base_urls
            .insert(steward_core::Region::Eu, "https://eu.steward.test".into());
        opts.http.timeout = Duration::from_secs(10);
        let server = boot::start(opts).await.expect("Steward boots");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Self {
            server: Some(server),
            servicenow,
            slack,
            llm,
            http,
            key,
            _dir: dir,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn store(&self) -> &Store {
        &self.server().store
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let raw = body.map(Value::to_string);
        self.raw(method, path, token, raw.as_deref()).await
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server().url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("Steward answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// Onboards `id` and returns its first admin token.
    async fn onboard(&self, id: &str) -> String {
        let answer = self
            .call(
                "POST",
                "/v1/tenants",
                Some(OPS_TOKEN),
                Some(&json!({ "id": id, "name": "Acme" })),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["admin_token"]["value"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sets every connector, a source and the policy; returns the source's `whsec_` secret.
    async fn configure(&self, admin: &str) -> String {
        let puts = [
            (
                "/v1/tenant/connectors/servicenow",
                json!({
                    "instance_url": self.servicenow.uri(), "grant": "password",
                    "client_id": servicenow::CLIENT_ID, "username": servicenow::USERNAME,
                    "client_secret": servicenow::CLIENT_SECRET, "password": servicenow::PASSWORD,
                }),
            ),
            (
                "/v1/tenant/connectors/slack",
                json!({
                    "api_base": self.slack.api_base(), "approval_channel": CHANNEL,
                    "approvers": [APPROVER.id], "bot_token": slack::BOT_TOKEN,
                    "signing_secret": SIGNING_SECRET,
                }),
            ),
            (
                "/v1/tenant/connectors/llm",
                json!({
                    "provider": "openai", "model": llm::MODEL, "base_url": self.llm.base_url(),
                    "api_key": llm::API_KEY,
                }),
            ),
        ];
        for (path, body) in puts {
            let answer = self.call("PUT", path, Some(admin), Some(&body)).await;
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        }
        let source = json!({
            "name": harness::SOURCE, "sys_id_pointers": ["/incident/sys_id"],
            "number_pointers": ["/incident/number"],
        });
        let answer = self
            .call("POST", "/v1/tenant/sources", Some(admin), Some(&source))
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["secret"].as_str().unwrap().to_owned()
    }

    async fn send_webhook(&self, tenant: &str, whsec: &str) -> Answer {
        let now = steward_core::Clock::now_secs(&steward_core::SystemClock);
        let body = webhook::incident_event(fixtures::SYS_ID, fixtures::NUMBER, "Checkout fails");
        let d = Delivery::new(whsec, now, body);
        let response = self
            .http
            .post(format!(
                "{}/v1/webhooks/{tenant}/{}",
                self.server().url(),
                harness::SOURCE
            ))
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", &d.timestamp)
            .header("webhook-signature", &d.signature)
            .body(d.body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Answer { status, body }
    }

    async fn approve(&self, tenant: &str, run: &str) {
        let message = eventually("an approval request", || async {
            self.slack
                .posted()
                .into_iter()
                .find(|m| m.blocks.to_string().contains(run))
        })
        .await;
        let payload = slack::block_actions(
            &message,
            APPROVE_ACTION,
            APPROVER,
            &self.slack.response_url(),
        );
        let body = slack::form_body(&payload);
        let now = steward_core::Clock::now_secs(&steward_core::SystemClock);
        let signature = sign_slack(SIGNING_SECRET, now, &body);
        let response = self
            .http
            .post(format!(
                "{}/v1/slack/interactions/{tenant}",
                self.server().url()
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", now.to_string())
            .header("x-slack-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    async fn run_state(&self, tenant: &str, run: &str, state: &str) {
        let scope = scope(tenant);
        let id = steward_core::RunId::parse(run).unwrap();
        eventually(&format!("run {run} to be {state}"), || async {
            self.store()
                .run(&scope, id)
                .await
                .unwrap()
                .filter(|r| r.state == state)
        })
        .await;
    }

    /// Fails if any answer seen so far carries one of `secrets`.
    fn assert_no_answer_carries(&self, secrets: &[&str]) {
        for text in self.seen.lock().unwrap().iter() {
            for secret in secrets {
                assert!(!text.contains(secret), "an answer carries a secret: {text}");
            }
        }
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// A hostile request: method, path, token, body, and the statuses that may answer it.
type HostileCase<'a> = (&'a str, &'a str, Option<&'a str>, String, &'a [u16]);

fn scope(tenant: &str) -> TenantScope {
    TenantScope::assume(TenantId::parse(tenant).unwrap(), Authenticator::Operator)
}

#[tokio::test]
async fn a_tenant_onboarded_over_the_api_gets_its_first_approved_run() {
    let w = World::start().await;
    let admin = w.onboard("us-newco").await;
    let whsec = w.configure(&admin).await;

    let accepted = w.send_webhook("us-newco", &whsec).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let run = accepted.body["run_id"].as_str().unwrap().to_owned();
    w.run_state("us-newco", &run, states::AWAITING_APPROVAL)
        .await;
    w.approve("us-newco", &run).await;
    w.run_state("us-newco", &run, states::COMPLETED).await;
    assert!(
        !w.servicenow.patches().await.is_empty(),
        "the write-back reached ServiceNow"
    );

    let kinds: Vec<String> = w
        .store()
        .audit_entries(&scope("us-newco"), 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for kind in [
        "tenant.created",
        "token.issued",
        "connector.servicenow.set",
        "connector.slack.set",
        "connector.llm.set",
        "source.set",
    ] {
        assert!(
            kinds.contains(&kind.to_owned()),
            "{kind} missing from {kinds:?}"
        );
    }
    let audit = w
        .store()
        .audit_entries(&scope("us-newco"), 0, 1000)
        .await
        .unwrap();
    let connector = audit
        .iter()
        .find(|e| e.kind == "connector.slack.set")
        .unwrap();
    assert!(
        connector.actor.starts_with("token:tok_"),
        "{}",
        connector.actor
    );
    assert!(
        connector.body.contains(APPROVER.id),
        "approvers are audited"
    );
    let created = audit.iter().find(|e| e.kind == "tenant.created").unwrap();
    assert_eq!(created.actor, "operator");
    let chain = serde_json::to_string(&audit).unwrap();
    for secret in [
        servicenow::CLIENT_SECRET,
        servicenow::PASSWORD,
        slack::BOT_TOKEN,
        SIGNING_SECRET,
        llm::API_KEY,
        &whsec,
        &admin,
    ] {
        assert!(!chain.contains(secret), "the audit chain carries a secret");
    }

    // A changed setting reaches the running tenant: the next request goes to the new channel.
    let moved = json!({
        "api_base": w.slack.api_base(), "approval_channel": "C0MOVED0001",
        "approvers": [APPROVER.id],
    });
    let answer = w
        .call(
            "PUT",
            "/v1/tenant/connectors/slack",
            Some(&admin),
            Some(&moved),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let second = w.send_webhook("us-newco", &whsec).await;
    assert_eq!(second.status, 202, "{}", second.body);
    let second = second.body["run_id"].as_str().unwrap().to_owned();
    w.run_state("us-newco", &second, states::AWAITING_APPROVAL)
        .await;
    let posted = w.slack.posted();
    let request = posted
        .iter()
        .find(|m| m.blocks.to_string().contains(&second))
        .unwrap();
    assert_eq!(request.channel, "C0MOVED0001");

    let check = w.call("POST", "/v1/tenant/check", Some(&admin), None).await;
    assert_eq!(check.status, 200, "{}", check.body);
    assert_eq!(check.body["servicenow"]["ok"], true, "{}", check.body);
    for part in ["slack", "llm"] {
        let problem = check.body[part]["problem"].as_str().unwrap_or("");
        assert!(problem.contains("404"), "{part}: {}", check.body);
    }
    assert_eq!(check.body["ok"], false);

    let rotated = w
        .call(
            "PUT",
            "/v1/tenant/secrets/llm.api_key",
            Some(&admin),
            Some(&json!({ "value": "sk-rotated-0000000000000000" })),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(rotated.body["status"], json!({ "set": true, "version": 2 }));

    w.assert_no_answer_carries(&[
        servicenow::CLIENT_SECRET,
        servicenow::PASSWORD,
        slack::BOT_TOKEN,
        SIGNING_SECRET,
        llm::API_KEY,
        "sk-rotated-0000000000000000",
    ]);
    w.stop().await;
}

#[tokio::test]
async fn tokens_need_their_scope_and_never_reveal_another_tenant() {
    let w = World::start().await;
    let acme = w.onboard("us-acme").await;
    let globex = w.onboard("us-globex").await;

    let issue = |scopes: Value| json!({ "label": "ci", "scopes": scopes, "expires_in_secs": 3600 });
    let reader = w
        .call(
            "POST",
            "/v1/tenant/tokens",
            Some(&acme),
            Some(&issue(json!(["runs:read"]))),
        )
        .await;
    assert_eq!(reader.status, 201, "{}", reader.body);
    let reader_value = reader.body["value"].as_str().unwrap().to_owned();
    let reader_id = reader.body["token"]["id"].as_str().unwrap().to_owned();

    for bad in [
        json!([]),
        json!(["root"]),
        json!(["runs:read", "superuser"]),
        json!("admin"),
    ] {
        let answer = w
            .call(
                "POST",
                "/v1/tenant/tokens",
                Some(&acme),
                Some(&issue(bad.clone())),
            )
            .await;
        assert!(
            matches!(answer.status, 400 | 422),
            "{bad}: {}",
            answer.status
        );
    }

    let listed = w.call("GET", "/v1/tenant/tokens", Some(&acme), None).await;
    assert_eq!(listed.status, 200);
    let text = listed.body.to_string();
    assert!(
        !text.contains(&reader_value) && !text.contains(&acme),
        "listing shows values"
    );
    assert_eq!(listed.body["tokens"].as_array().unwrap().len(), 2);
    assert!(listed.body["tokens"][1]["expires_at"].is_i64());

    // The matrix: who may call what.
    let admin_paths = [
        ("GET", "/v1/tenant/tokens"),
        ("POST", "/v1/tenant/check"),
        ("PUT", "/v1/tenant/policy"),
    ];
    for (method, path) in admin_paths {
        assert_eq!(w.call(method, path, None, None).await.status, 401, "{path}");
        assert_eq!(
            w.call(method, path, Some("stw_not-a-real-token-0123456789"), None)
                .await
                .status,
            401
        );
        let forbidden = w.call(method, path, Some(&reader_value), None).await;
        assert_eq!(forbidden.status, 403, "{path}");
        assert_eq!(
            w.call(method, path, Some(OPS_TOKEN), None).await.status,
            401,
            "{path}"
        );
    }
    for (method, path) in [
        ("GET", "/v1/tenants"),
        ("POST", "/v1/tenants"),
        ("DELETE", "/v1/tenants/us-globex"),
    ] {
        assert_eq!(w.call(method, path, None, None).await.status, 401, "{path}");
        assert_eq!(
            w.call(method, path, Some(&acme), None).await.status,
            403,
            "{path}"
        );
    }
    // An absent tenant and a present one look the same to a caller without the platform token.
    let present = w
        .call("DELETE", "/v1/tenants/us-globex", Some(&acme), None)
        .await;
    let absent = w
        .call("DELETE", "/v1/tenants/us-nobody", Some(&acme), None)
        .await;
    assert_eq!((present.status, present.body), (absent.status, absent.body));
    let present = w
        .call(
            "GET",
            "/v1/tenants/us-globex/export",
            Some(&reader_value),
            None,
        )
        .await;
    let absent = w
        .call(
            "GET",
            "/v1/tenants/us-nobody/export",
            Some(&reader_value),
            None,
        )
        .await;
    assert_eq!((present.status, present.body), (absent.status, absent.body));

    // Another tenant's token id is indistinguishable from an unknown one.
    let cross = w
        .call(
            "DELETE",
            &format!("/v1/tenant/tokens/{reader_id}"),
            Some(&globex),
            None,
        )
        .await;
    let unknown = w
        .call(
            "DELETE",
            "/v1/tenant/tokens/tok_0000000000000000",
            Some(&globex),
            None,
        )
        .await;
    assert_eq!(cross.status, 404);
    assert_eq!((cross.status, cross.body), (unknown.status, unknown.body));
    assert_eq!(
        w.call("GET", "/v1/runs", Some(&reader_value), None)
            .await
            .status,
        200
    );

    let revoked = w
        .call(
            "DELETE",
            &format!("/v1/tenant/tokens/{reader_id}"),
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(
        w.call("GET", "/v1/runs", Some(&reader_value), None)
            .await
            .status,
        401
    );
    let audit = w
        .store()
        .audit_entries(&scope("us-acme"), 0, 100)
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.kind == "token.revoked" && e.body.contains(&reader_id))
    );
    w.stop().await;
}

#[tokio::test]
async fn a_policy_that_does_not_validate_is_refused_with_cedars_message() {
    let w = World::start().await;
    let admin = w.onboard("us-acme").await;
    let bad = json!({ "cedar": "permit(principal, action, resource) when { nonsense" });
    let answer = w
        .call("PUT", "/v1/tenant/policy", Some(&admin), Some(&bad))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let message = answer.body["message"].as_str().unwrap();
    assert!(message.contains("does not validate:"), "{message}");
    assert!(
        message.len() > "the policy does not validate: ".len() + 5,
        "{message}"
    );
    let kinds: Vec<String> = w
        .store()
        .audit_entries(&scope("us-acme"), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        !kinds.contains(&"policy.set".to_owned()),
        "a refused policy is not applied"
    );
    w.stop().await;
}

#[tokio::test]
async fn hostile_onboarding_and_admin_input_is_refused() {
    let w = World::start().await;
    let admin = w.onboard("us-acme").await;
    let cases: Vec<HostileCase<'_>> = vec![
        ("POST", "/v1/tenants", Some(OPS_TOKEN), "{not json".into(), &[400]),
        ("POST", "/v1/tenants", Some(OPS_TOKEN), json!({ "id": "us-x", "name": "X", "extra": 1 }).to_string(), &[400]),
        ("POST", "/v1/tenants", Some(OPS_TOKEN), json!({ "id": "US-ACME/../x", "name": "X" }).to_string(), &[422]),
        ("POST", "/v1/tenants", Some(OPS_TOKEN), json!({ "id": "mars-x", "name": "X" }).to_string(), &[422]),
        ("POST", "/v1/tenants", Some(OPS_TOKEN), json!({ "id": "us-x", "name": "a\u{0}b" }).to_string(), &[400]),
        ("POST", "/v1/tenants", Some(OPS_TOKEN), json!({ "id": "us-acme", "name": "Again" }).to_string(), &[409]),
        ("POST", "/v1/tenants", Some(OPS_TOKEN), "x".repeat(200 * 1024), &[413]),
        ("PUT", "/v1/tenant/connectors/llm", Some(&admin), json!({ "provider": "openai", "model": "m", "base_url": "file:///etc/passwd" }).to_string(), &[422]),
        ("PUT", "/v1/tenant/connectors/slack", Some(&admin), json!({ "api_base": "https://slack.com/api/", "approval_channel": "C1", "approvers": ["U1\nU2"] }).to_string(), &[422]),
        ("PUT", "/v1/tenant/connectors/servicenow", Some(&admin), json!({ "instance_url": "https://x.example", "grant": "implicit", "client_id": "c" }).to_string(), &[422]),
        ("PUT", "/v1/tenant/connectors/servicenow", Some(&admin), json!({ "instance_url": "https://x.example", "grant": "password", "client_id": "c", "sneaky": true }).to_string(), &[400]),
        ("POST", "/v1/tenant/sources", Some(&admin), json!({ "name": "../etc", "sys_id_pointers": ["/a"] }).to_string(), &[422]),
        ("POST", "/v1/tenant/sources", Some(&admin), json!({ "name": "ok", "sys_id_pointers": ["no-slash"] }).to_string(), &[400]),
        ("PUT", "/v1/tenant/secrets/not.a.secret", Some(&admin), json!({ "value": "v" }).to_string(), &[404]),
        ("PUT", "/v1/tenant/secrets/webhook.servicenow", Some(&admin), json!({ "value": "not-whsec" }).to_string(), &[422]),
        ("PUT", "/v1/tenant/secrets/llm.api_key", Some(&admin), json!({ "value": "" }).to_string(), &[400]),
        ("DELETE", "/v1/tenant/tokens/%00%00", Some(&admin), String::new(), &[404]),
        ("DELETE", "/v1/tenants/us-acme", Some(OPS_TOKEN), "[1,2".into(), &[400]),
        ("DELETE", "/v1/tenants/not%20an%20id", Some(OPS_TOKEN), String::new(), &[404]),
    ];
    for (method, path, token, body, want) in cases {
        let body = (!body.is_empty()).then_some(body.as_str());
        let answer = w.raw(method, path, token, body).await;
        assert!(
            want.contains(&answer.status),
            "{method} {path} {body:?}: {} {}",
            answer.status,
            answer.body
        );
    }
    let misdirected = w
        .call(
            "POST",
            "/v1/tenants",
            Some(OPS_TOKEN),
            Some(&json!({ "id": "eu-acme", "name": "Acme EU" })),
        )
        .await;
    assert_eq!(misdirected.status, 421, "{}", misdirected.body);
    assert_eq!(misdirected.body["home_base_url"], "https://eu.steward.test");
    let eu = TenantId::parse("eu-acme").unwrap();
    assert!(!w.store().tenant_exists(&eu).await.unwrap());
    w.stop().await;
}

#[tokio::test]
async fn offboarding_offers_the_export_then_destroys_keys_and_rows_and_keeps_a_verifying_chain() {
    let w = World::start().await;
    let admin = w.onboard("us-newco").await;
    let whsec = w.configure(&admin).await;
    let accepted = w.send_webhook("us-newco", &whsec).await;
    let run = accepted.body["run_id"].as_str().unwrap().to_owned();
    w.run_state("us-newco", &run, states::AWAITING_APPROVAL)
        .await;

    let first = w
        .call("DELETE", "/v1/tenants/us-newco", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(first.status, 409, "{}", first.body);
    assert_eq!(first.body["export"], "/v1/tenants/us-newco/export");
    let wrong = json!({ "confirm": "us-other", "exported": true });
    let wrong = w
        .call(
            "DELETE",
            "/v1/tenants/us-newco",
            Some(OPS_TOKEN),
            Some(&wrong),
        )
        .await;
    assert_eq!(wrong.status, 409);

    let export = w
        .http
        .get(format!("{}/v1/tenants/us-newco/export", w.server().url()))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status().as_u16(), 200);
    let export = export.text().await.unwrap();
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "tenant");
    assert!(lines.iter().any(|l| l["type"] == "audit"));
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "run" && l["run"]["id"] == run.as_str())
    );
    for secret in [
        servicenow::CLIENT_SECRET,
        slack::BOT_TOKEN,
        llm::API_KEY,
        &whsec,
        &admin,
    ] {
        assert!(!export.contains(secret), "the export carries a secret");
    }

    let scope = scope("us-newco");
    assert!(
        w.store()
            .secret(&scope, &w.key, "llm.api_key")
            .await
            .unwrap()
            .is_some()
    );
    let confirm = json!({ "confirm": "us-newco", "exported": true });
    let done = w
        .call(
            "DELETE",
            "/v1/tenants/us-newco",
            Some(OPS_TOKEN),
            Some(&confirm),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);

    // The sealed data can no longer be opened, and the rows are gone.
    assert!(
        w.store()
            .secret(&scope, &w.key, "llm.api_key")
            .await
            .unwrap()
            .is_none()
    );
    let run_id = steward_core::RunId::parse(&run).unwrap();
    assert!(w.store().run(&scope, run_id).await.unwrap().is_none());
    assert!(w.store().steps(&scope, run_id).await.unwrap().is_empty());
    assert_eq!(
        w.call("GET", "/v1/tenant/tokens", Some(&admin), None)
            .await
            .status,
        401
    );
    assert_eq!(w.send_webhook("us-newco", &whsec).await.status, 404);

    // The chain is kept, verifies, and ends with the signed checkpoint's entry.
    let report = w.store().verify_audit(&scope).await.unwrap();
    assert!(report.first_bad.is_none());
    let checkpoint = w.store().audit_checkpoint(&scope).await.unwrap().unwrap();
    assert_eq!(checkpoint.head_hash, report.head_hash);
    assert_eq!(
        done.body["checkpoint"]["signature"],
        checkpoint.signature.as_str()
    );
    assert!(w.store().checkpoint_verifies(&checkpoint, &w.key));
    let last = w
        .store()
        .audit_entries(&scope, checkpoint.seq - 1, 10)
        .await
        .unwrap();
    assert_eq!(last[0].kind, "tenant.offboarded");
    assert_eq!(last[0].actor, "operator");

    let again = w
        .call(
            "DELETE",
            "/v1/tenants/us-newco",
            Some(OPS_TOKEN),
            Some(&confirm),
        )
        .await;
    assert_eq!(again.status, 404);
    let listed = w.call("GET", "/v1/tenants", Some(OPS_TOKEN), None).await;
    assert!(
        listed.body["tenants"][0]["offboarded_at"].is_i64(),
        "{}",
        listed.body
    );
    let recreate = json!({ "id": "us-newco", "name": "Again" });
    assert_eq!(
        w.call("POST", "/v1/tenants", Some(OPS_TOKEN), Some(&recreate))
            .await
            .status,
        409
    );
    w.stop().await;
}

#[tokio::test]
async fn rotating_a_source_secret_over_the_api_keeps_the_old_one_valid_during_the_overlap() {
    let w = World::start().await;
    let admin = w.onboard("us-newco").await;
    let old = w.configure(&admin).await;
    let path = format!("/v1/tenant/sources/{}/rotate", harness::SOURCE);

    // Only an admin may rotate, and a source that does not exist is 404.
    let none = w.call("POST", &path, None, Some(&json!({}))).await;
    assert_eq!(none.status, 401);
    let missing = w
        .call(
            "POST",
            "/v1/tenant/sources/nosuch/rotate",
            Some(&admin),
            Some(&json!({})),
        )
        .await;
    assert_eq!(missing.status, 404);
    let past = w
        .call(
            "POST",
            &path,
            Some(&admin),
            Some(&json!({ "old_expires_at": 1 })),
        )
        .await;
    assert_eq!(past.status, 422, "{}", past.body);

    let rotated = w.call("POST", &path, Some(&admin), Some(&json!({}))).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new = rotated.body["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);

    // During the overlap both secrets verify; each delivery is a new run.
    assert_eq!(w.send_webhook("us-newco", &old).await.status, 202);
    assert_eq!(w.send_webhook("us-newco", &new).await.status, 202);
    let audit = w
        .store()
        .audit_entries(&scope("us-newco"), 0, 1000)
        .await
        .unwrap();
    let entry = audit
        .iter()
        .find(|e| e.kind == "secret.rotated")
        .expect("rotation audited");
    assert!(!entry.body.contains(&new) && !entry.body.contains(&old));
    w.stop().await;
}
