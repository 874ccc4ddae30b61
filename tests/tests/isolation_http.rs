//! Three tenants, each onboarded over the API with its own tokens, webhook source, Slack app
//! and ServiceNow, Slack and LLM services, make random sequences of calls over HTTP against one
//! Steward: webhooks (with current, previous and retired secrets, and redeliveries), runs
//! started over the API (with `Idempotency-Key`s), run reads and listings, approve and reject
//! clicks signed with the tenant's Slack signing secret, the operator's export, secret and
//! webhook secret rotations, and token revocations; and each also uses another tenant's ids,
//! paths, source names, token ids, delivery ids, keys and incident.
//!
//! Each answer is checked against a model of what each tenant owns. Another tenant's data is
//! never returned (no answer, export or outbound request carries an id, incident, text,
//! approver, channel or secret of another tenant, unless the caller itself sent it), never
//! changed (its runs, secrets, sources and tokens stay as the model says, and its ServiceNow
//! gets no write it did not approve), and its existence is never revealed (an id, source or
//! token id that exists in another tenant is answered exactly as one that exists nowhere).
//! Runs on SQLite, and on PostgreSQL when `STEWARD_TEST_POSTGRES` names a server.
//!
//! A webhook or Slack path names its tenant, and a delivery or click that does not verify
//! there is `401` while an unknown tenant or source is `404`: those URLs are the tenant's
//! public endpoints, so the test holds them to "refused, nothing stored", not to hiding.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::slack::{APPROVE_ACTION, REJECT_ACTION};
use steward_core::{ApprovalId, RunId};
use steward_tests::database::PgServer;
use steward_tests::harness::{Harness, OPS_TOKEN, Reply, Scenario, eventually};
use steward_tests::llm::{self, LlmMock};
use steward_tests::onboarding::{self, NewTenant, Onboarded};
use steward_tests::servicenow::ServiceNowMock;
use steward_tests::slack::SlackMock;
use steward_tests::{Delivery, Person, PostedMessage, fixtures, webhook};

/// One of the three tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum T {
    Alpha,
    Bravo,
    Charlie,
}

const ALL: [T; 3] = [T::Alpha, T::Bravo, T::Charlie];

/// What identifies a tenant and its incident.
struct Who {
    id: &'static str,
    source: &'static str,
    channel: &'static str,
    approver: Person,
    sys_id: &'static str,
    number: &'static str,
    title: &'static str,
    description: &'static str,
    summary: &'static str,
    note: &'static str,
    group: &'static str,
}

const WHO: [Who; 3] = [
    Who {
        id: "us-alpha",
        source: "alpha-itsm",
        channel: "C0ALPHAAPR1",
        approver: Person {
            id: "U0ALPHAAPR1",
            name: "ada.alpha",
        },
        sys_id: "a1b2c3d4e5f60718293a4b5c6d7e8f90",
        number: "INC0071001",
        title: "Austin badge readers refuse every card",
        description: "Since 07:10 the Austin office badge readers blink red for every card.",
        summary: "The Austin badge controller lost its client certificate.",
        note: "Reissue the Austin badge controller certificate.",
        group: "a1a1a1a1b2b2b2b2c3c3c3c3d4d4d4d4",
    },
    Who {
        id: "us-bravo",
        source: "bravo-itsm",
        channel: "C0BRAVOAPR2",
        approver: Person {
            id: "U0BRAVOAPR2",
            name: "bo.bravo",
        },
        sys_id: "b2c3d4e5f60718293a4b5c6d7e8f90a1",
        number: "INC0082002",
        title: "Boston print queue holds every job",
        description: "Jobs sent to the Boston third-floor printers wait in the queue forever.",
        summary: "The Boston print spooler disk is full of stuck jobs.",
        note: "Purge the Boston spooler and grow its disk.",
        group: "b2b2b2b2c3c3c3c3d4d4d4d4e5e5e5e5",
    },
    Who {
        id: "us-charlie",
        source: "charlie-itsm",
        channel: "C0CHARLAPR3",
        approver: Person {
            id: "U0CHARLAPR3",
            name: "cy.charlie",
        },
        sys_id: "c3d4e5f60718293a4b5c6d7e8f90a1b2",
        number: "INC0093003",
        title: "Chicago VPN drops every hour",
        description: "Remote staff in Chicago lose the VPN tunnel at the top of each hour.",
        summary: "The Chicago VPN concentrator renegotiates keys with a short lifetime.",
        note: "Raise the Chicago VPN key lifetime to eight hours.",
        group: "c3c3c3c3d4d4d4d4e5e5e5e5f6f6f6f6",
    },
];

impl T {
    fn who(self) -> &'static Who {
        &WHO[self as usize]
    }
}

/// Which credential asks for an export.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Operator,
    AdminOf(T),
}

/// One call. `pick`s choose among everything made so far, any tenant's.
#[derive(Debug, Clone)]
enum Call {
    /// `by` posts a delivery to its own source, signed with its webhook secret of `age`
    /// rotations ago (0: the current one).
    Webhook { by: T, age: usize },
    /// `by` posts to its own source under the delivery id of an earlier delivery.
    Redeliver { by: T, pick: usize },
    /// `by` signs a delivery with its own secret and posts it to `victim`'s source.
    WebhookToOthersSource { by: T, victim: T },
    /// `by` names `victim`'s source on its own webhook path.
    OwnPathOthersSource { by: T, victim: T },
    /// `by` starts a run over the API for `incident_of`'s incident, reusing the
    /// `Idempotency-Key` of an earlier API run or with a fresh one.
    ApiStart {
        by: T,
        incident_of: T,
        reuse: Option<usize>,
    },
    /// `by` lists its runs, from the start or before an earlier run's id.
    ListRuns { by: T, before: Option<usize> },
    /// `by` reads a run by id.
    ReadRun { by: T, pick: usize },
    /// `by` clicks approve or reject for a run's request: its own on the message it got,
    /// another tenant's by the approval id on its own Slack path.
    Decide { by: T, pick: usize, approve: bool },
    /// `by` signs a click with its own signing secret and posts it to `victim`'s Slack path.
    ClickOnOthersPath { by: T, victim: T },
    /// The export of `of`, asked for by `caller`.
    Export { of: T, caller: Caller },
    /// `by` sets a new Slack signing secret.
    RotateSigningSecret { by: T },
    /// `by` rotates its webhook source's secret.
    RotateWebhookSecret { by: T },
    /// `by` rotates a source of `victim`'s name through its own API.
    RotateOthersSource { by: T, victim: T },
    /// `by` sets the secret `webhook.<victim's source>` in its own tenant.
    SetSecretNamedForOthersSource { by: T, victim: T },
    /// `by` revokes `victim`'s runs token by its id through its own API.
    RevokeOthersToken { by: T, victim: T },
}

fn tenant() -> impl Strategy<Value = T> {
    prop::sample::select(ALL.to_vec())
}

/// Two different tenants.
fn pair() -> impl Strategy<Value = (T, T)> {
    (0..3usize, 1..3usize).prop_map(|(a, d)| (ALL[a], ALL[(a + d) % 3]))
}

fn call() -> impl Strategy<Value = Call> {
    let pick = 0usize..32;
    prop_oneof![
        4 => (tenant(), 0usize..3).prop_map(|(by, age)| Call::Webhook { by, age }),
        2 => (tenant(), pick.clone()).prop_map(|(by, pick)| Call::Redeliver { by, pick }),
        1 => pair().prop_map(|(by, victim)| Call::WebhookToOthersSource { by, victim }),
        1 => pair().prop_map(|(by, victim)| Call::OwnPathOthersSource { by, victim }),
        3 => (tenant(), tenant(), prop::option::of(pick.clone())).prop_map(
            |(by, incident_of, reuse)| Call::ApiStart { by, incident_of, reuse }
        ),
        2 => (tenant(), prop::option::of(pick.clone()))
            .prop_map(|(by, before)| Call::ListRuns { by, before }),
        3 => (tenant(), pick.clone()).prop_map(|(by, pick)| Call::ReadRun { by, pick }),
        4 => (tenant(), pick, any::<bool>())
            .prop_map(|(by, pick, approve)| Call::Decide { by, pick, approve }),
        1 => pair().prop_map(|(by, victim)| Call::ClickOnOthersPath { by, victim }),
        2 => (tenant(), prop::option::of(tenant())).prop_map(|(of, admin)| Call::Export {
            of,
            caller: admin.map_or(Caller::Operator, Caller::AdminOf),
        }),
        1 => tenant().prop_map(|by| Call::RotateSigningSecret { by }),
        1 => tenant().prop_map(|by| Call::RotateWebhookSecret { by }),
        1 => pair().prop_map(|(by, victim)| Call::RotateOthersSource { by, victim }),
        1 => pair().prop_map(|(by, victim)| Call::SetSecretNamedForOthersSource { by, victim }),
        1 => pair().prop_map(|(by, victim)| Call::RevokeOthersToken { by, victim }),
    ]
}

/// What the model knows of a run.
#[derive(Debug, Clone)]
struct RunModel {
    owner: T,
    id: String,
    delivery: Option<String>,
    key: Option<String>,
    /// Started for the owner's own incident, so it reaches an approval request.
    approvable: bool,
    /// The owner clicked on its request.
    decided: bool,
}

/// One tenant as the model knows it, with its own outside world.
struct Tenant {
    api: Onboarded,
    /// Every webhook secret it had, the current one last.
    whsecs: Vec<String>,
    /// Every Slack signing secret it had, the current one last.
    signing: Vec<String>,
    servicenow: ServiceNowMock,
    slack: SlackMock,
    llm: LlmMock,
    /// Values of other tenants this tenant sent in calls that store them in its own data.
    submitted: BTreeSet<String>,
    approve_clicks: usize,
}

impl Tenant {
    fn whsec(&self) -> &str {
        self.whsecs.last().expect("a webhook secret")
    }

    fn signing_secret(&self) -> &str {
        self.signing.last().expect("a signing secret")
    }
}

struct World {
    h: Harness,
    tenants: Vec<Tenant>,
    runs: Vec<RunModel>,
    /// The call being played, for failure messages.
    step: usize,
}

fn incident(t: T) -> serde_json::Map<String, Value> {
    let w = t.who();
    let mut record = fixtures::incident();
    for (field, value) in [
        ("sys_id", w.sys_id),
        ("number", w.number),
        ("short_description", w.title),
        ("description", w.description),
    ] {
        record.insert(field.into(), json!(value));
    }
    record
}

fn triage(t: T) -> Value {
    let w = t.who();
    fixtures::proposal(
        w.summary,
        &[
            ("category", "software"),
            ("urgency", "1"),
            ("assignment_group", w.group),
            ("work_notes", w.note),
        ],
    )
}

fn fresh_id(prefix: &str) -> String {
    format!("{prefix}{}", RunId::new().to_string().replace('-', ""))
}

impl World {
    async fn start(postgres: Option<&PgServer>) -> Self {
        let mut scenario = Scenario::new();
        if let Some(server) = postgres {
            scenario = scenario.postgres(server);
        }
        let h = scenario.start().await;
        let mut tenants = Vec::new();
        for t in ALL {
            let w = t.who();
            let servicenow = ServiceNowMock::start(incident(t)).await;
            let slack = SlackMock::start().await;
            let llm = LlmMock::start(llm::answering(&triage(t).to_string())).await;
            let spec = NewTenant {
                id: w.id.into(),
                name: format!("Tenant {}", w.id),
                source: w.source.into(),
                channel: w.channel.into(),
                approver: w.approver,
                signing_secret: format!("{}-signing-secret-0", w.id),
            };
            let api = onboarding::onboard(&h, &spec, &servicenow, &slack, &llm).await;
            tenants.push(Tenant {
                whsecs: vec![api.whsec.clone()],
                signing: vec![spec.signing_secret.clone()],
                api,
                servicenow,
                slack,
                llm,
                submitted: BTreeSet::new(),
                approve_clicks: 0,
            });
        }
        Self {
            h,
            tenants,
            runs: Vec::new(),
            step: 0,
        }
    }

    /// Where the test is, for failure messages.
    fn at(&self) -> String {
        if self.step == usize::MAX {
            "the final checks".to_owned()
        } else {
            format!("call {}", self.step)
        }
    }

    fn tenant(&self, t: T) -> &Tenant {
        &self.tenants[t as usize]
    }

    fn tenant_mut(&mut self, t: T) -> &mut Tenant {
        &mut self.tenants[t as usize]
    }

    /// Everything of `t`'s: its identity, incident, texts, secrets, token ids, and the ids of
    /// its runs, deliveries, keys and approval requests.
    fn values_of(&self, t: T) -> BTreeSet<String> {
        let w = t.who();
        let tenant = self.tenant(t);
        let mut all: BTreeSet<String> = [
            w.id,
            w.source,
            w.channel,
            w.approver.id,
            w.approver.name,
            w.sys_id,
            w.number,
            w.title,
            w.description,
            w.summary,
            w.note,
            w.group,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        all.extend(tenant.whsecs.iter().cloned());
        all.extend(tenant.signing.iter().cloned());
        for v in [
            &tenant.api.admin_token,
            &tenant.api.admin_token_id,
            &tenant.api.runs_token,
            &tenant.api.runs_token_id,
        ] {
            all.insert(v.clone());
        }
        for run in self.runs.iter().filter(|r| r.owner == t) {
            all.insert(run.id.clone());
            all.extend(run.delivery.iter().cloned());
            all.extend(run.key.iter().cloned());
        }
        for message in tenant.slack.posted() {
            all.extend(approval_ids(&message.blocks));
        }
        all
    }

    /// What `viewer` must never see: every other tenant's values, except those that are also
    /// the viewer's own, that it sent itself earlier, or that it sent in this call (`echo`).
    fn forbidden(&self, viewer: T, echo: &[&str]) -> Vec<(T, String)> {
        let own = self.values_of(viewer);
        let mine = &self.tenant(viewer).submitted;
        let mut out = Vec::new();
        for other in ALL.into_iter().filter(|o| *o != viewer) {
            for v in self.values_of(other) {
                if !own.contains(&v) && !mine.contains(&v) && !echo.contains(&v.as_str()) {
                    out.push((other, v));
                }
            }
        }
        out
    }

    /// Fails when `text`, seen by `viewer`, carries anything of another tenant's.
    fn assert_private(&self, viewer: T, what: &str, text: &str, echo: &[&str]) {
        for (other, value) in self.forbidden(viewer, echo) {
            assert!(
                !text.contains(&value),
                "{}: {what} seen by {viewer:?} carries {other:?}'s {value:?}: {text}",
                self.at()
            );
        }
    }

    fn expect(&self, reply: &Reply, status: u16, what: &str) {
        assert_eq!(
            reply.status,
            status,
            "{}: {what}: {}",
            self.at(),
            reply.text
        );
    }

    /// Two answers that must not tell "another tenant's" from "nobody's" apart.
    fn assert_same_answer(&self, theirs: &Reply, nobodys: &Reply, what: &str) {
        assert_eq!(
            (theirs.status, &theirs.text),
            (nobodys.status, &nobodys.text),
            "{}: {what}: another tenant's is answered unlike a missing one",
            self.at()
        );
    }

    async fn webhook(&self, by: T, whsec: &str, id: &str) -> Reply {
        let w = by.who();
        let body = webhook::incident_event(w.sys_id, w.number, w.title);
        let delivery = onboarding::delivery(whsec, id, body);
        self.h.send_to(w.id, w.source, &delivery).await
    }

    fn record_run(
        &mut self,
        owner: T,
        reply: &Reply,
        delivery: Option<String>,
        key: Option<String>,
        approvable: bool,
    ) {
        let id = reply.run_id().to_string();
        assert!(
            self.runs.iter().all(|r| r.id != id),
            "{}: a new run reuses the id {id}",
            self.at()
        );
        self.runs.push(RunModel {
            owner,
            id,
            delivery,
            key,
            approvable,
            decided: false,
        });
    }

    async fn run_state(&self, run: &RunModel) -> String {
        let token = &self.tenant(run.owner).api.runs_token;
        let reply = self
            .h
            .get(&format!("/v1/runs/{}", run.id), Some(token))
            .await;
        self.expect(&reply, 200, "the owner reads its run");
        reply.body["run"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The latest approval request naming `run`, once the run has one.
    async fn request_for(&self, run: &RunModel) -> PostedMessage {
        if !run.decided {
            eventually(&format!("run {} to await approval", run.id), || async {
                (self.run_state(run).await == states::AWAITING_APPROVAL).then_some(())
            })
            .await;
        }
        let named = format!("Run {}", run.id);
        self.tenant(run.owner)
            .slack
            .posted()
            .into_iter()
            .rev()
            .find(|m| m.blocks.to_string().contains(&named))
            .unwrap_or_else(|| panic!("{}: no request names run {}", self.at(), run.id))
    }

    /// A click by `by`'s approver, signed with its current signing secret, posted to
    /// `path_tenant`'s Slack path.
    async fn click(&self, by: T, message: &PostedMessage, action: &str, path_tenant: T) -> Reply {
        let tenant = self.tenant(by);
        let (body, ts, signature) = onboarding::signed_click(
            message,
            action,
            by.who().approver,
            &tenant.slack.response_url(),
            tenant.signing_secret(),
        );
        self.h
            .slack_callback(path_tenant.who().id, body, &ts, &signature)
            .await
    }

    async fn play(&mut self, call: &Call) {
        match *call {
            Call::Webhook { by, age } => {
                let secrets = &self.tenant(by).whsecs;
                let age = if age < secrets.len() { age } else { 0 };
                let whsec = secrets[secrets.len() - 1 - age].clone();
                let id = fresh_id("msg_");
                let reply = self.webhook(by, &whsec, &id).await;
                self.assert_private(by, "a webhook answer", &reply.text, &[]);
                // The secret before the current one verifies during the overlap; older ones do not.
                if age <= 1 {
                    self.expect(&reply, 202, "a delivery signed with a valid secret");
                    self.record_run(by, &reply, Some(id), None, true);
                } else {
                    self.expect(&reply, 401, "a delivery signed with a retired secret");
                }
            }
            Call::Redeliver { by, pick } => {
                let deliveries: Vec<String> = self
                    .runs
                    .iter()
                    .filter_map(|r| r.delivery.clone())
                    .collect();
                if deliveries.is_empty() {
                    return;
                }
                let id = deliveries[pick % deliveries.len()].clone();
                let whsec = self.tenant(by).whsec().to_owned();
                let reply = self.webhook(by, &whsec, &id).await;
                self.assert_private(by, "a redelivery's answer", &reply.text, &[&id]);
                let own = self
                    .runs
                    .iter()
                    .find(|r| r.owner == by && r.delivery.as_deref() == Some(id.as_str()));
                match own {
                    Some(run) => {
                        self.expect(&reply, 200, "a redelivery of an own delivery");
                        assert_eq!(reply.run_id().to_string(), run.id, "{}", self.at());
                    }
                    None => {
                        // Another tenant's delivery id means nothing here: a new run.
                        self.expect(&reply, 202, "another tenant's delivery id");
                        self.tenant_mut(by).submitted.insert(id.clone());
                        self.record_run(by, &reply, Some(id), None, true);
                    }
                }
            }
            Call::WebhookToOthersSource { by, victim } => {
                let v = victim.who();
                let body =
                    webhook::incident_event(by.who().sys_id, by.who().number, by.who().title);
                let now = steward_core::Clock::now_secs(&steward_core::SystemClock);
                let delivery = Delivery::new(self.tenant(by).whsec(), now, body);
                let reply = self.h.send_to(v.id, v.source, &delivery).await;
                self.expect(&reply, 401, "a delivery signed for another tenant");
                self.assert_private(
                    by,
                    "a refused delivery's answer",
                    &reply.text,
                    &[v.id, v.source],
                );
            }
            Call::OwnPathOthersSource { by, victim } => {
                let (b, v) = (by.who(), victim.who());
                let whsec = self.tenant(by).whsec().to_owned();
                let body = webhook::incident_event(b.sys_id, b.number, b.title);
                let delivery = Delivery::new(
                    &whsec,
                    steward_core::Clock::now_secs(&steward_core::SystemClock),
                    body,
                );
                let theirs = self.h.send_to(b.id, v.source, &delivery).await;
                let nobodys = self.h.send_to(b.id, "no-such-source", &delivery).await;
                self.expect(&theirs, 404, "another tenant's source on the own path");
                self.assert_same_answer(&theirs, &nobodys, "a source name");
                self.assert_private(by, "an unknown source's answer", &theirs.text, &[v.source]);
            }
            Call::ApiStart {
                by,
                incident_of,
                reuse,
            } => {
                let keys: Vec<String> = self.runs.iter().filter_map(|r| r.key.clone()).collect();
                let key = match reuse {
                    Some(pick) if !keys.is_empty() => keys[pick % keys.len()].clone(),
                    _ => fresh_id("key-"),
                };
                let number = incident_of.who().number;
                let body = json!({ "incident": { "number": number } });
                let token = self.tenant(by).api.runs_token.clone();
                let reply = self
                    .h
                    .request_with(
                        "POST",
                        "/v1/runs",
                        Some(&token),
                        Some(&body),
                        &[("idempotency-key", &key)],
                    )
                    .await;
                self.assert_private(by, "a run start's answer", &reply.text, &[&key, number]);
                let own = self
                    .runs
                    .iter()
                    .find(|r| r.owner == by && r.key.as_deref() == Some(key.as_str()));
                if let Some(run) = own {
                    self.expect(&reply, 200, "a repeated own Idempotency-Key");
                    assert_eq!(reply.run_id().to_string(), run.id, "{}", self.at());
                    return;
                }
                self.expect(&reply, 202, "a new run over the API");
                let foreign_key = self
                    .runs
                    .iter()
                    .any(|r| r.key.as_deref() == Some(key.as_str()));
                if foreign_key {
                    self.tenant_mut(by).submitted.insert(key.clone());
                }
                if incident_of != by {
                    self.tenant_mut(by).submitted.insert(number.to_owned());
                }
                self.record_run(by, &reply, None, Some(key), incident_of == by);
            }
            Call::ListRuns { by, before } => {
                let cursor = before
                    .filter(|_| !self.runs.is_empty())
                    .map(|pick| self.runs[pick % self.runs.len()].id.clone());
                let path = match &cursor {
                    Some(c) => format!("/v1/runs?limit=200&before={c}"),
                    None => "/v1/runs?limit=200".to_owned(),
                };
                let reply = self
                    .h
                    .get(&path, Some(&self.tenant(by).api.runs_token))
                    .await;
                self.expect(&reply, 200, "listing own runs");
                let echo: Vec<&str> = cursor.iter().map(String::as_str).collect();
                self.assert_private(by, "a run listing", &reply.text, &echo);
                let listed: Vec<String> = reply.body["runs"]
                    .as_array()
                    .expect("a list of runs")
                    .iter()
                    .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
                    .collect();
                let mut expected: Vec<String> = self
                    .runs
                    .iter()
                    .filter(|r| r.owner == by)
                    .filter(|r| cursor.as_ref().is_none_or(|c| r.id < *c))
                    .map(|r| r.id.clone())
                    .collect();
                expected.sort_by(|a, b| b.cmp(a));
                assert_eq!(
                    listed,
                    expected,
                    "{}: {by:?} lists exactly its runs",
                    self.at()
                );
            }
            Call::ReadRun { by, pick } => {
                if self.runs.is_empty() {
                    return;
                }
                let run = self.runs[pick % self.runs.len()].clone();
                let token = self.tenant(by).api.runs_token.clone();
                let reply = self
                    .h
                    .get(&format!("/v1/runs/{}", run.id), Some(&token))
                    .await;
                self.assert_private(by, "a run read", &reply.text, &[&run.id]);
                if run.owner == by {
                    self.expect(&reply, 200, "reading an own run");
                    assert_eq!(reply.body["run"]["id"], json!(run.id), "{}", self.at());
                    assert_eq!(reply.body["run"]["tenant"], json!(by.who().id));
                } else {
                    let nobodys = self
                        .h
                        .get(&format!("/v1/runs/{}", RunId::new()), Some(&token))
                        .await;
                    self.expect(&reply, 404, "reading another tenant's run");
                    self.assert_same_answer(&reply, &nobodys, "a run id");
                }
            }
            Call::Decide { by, pick, approve } => {
                let candidates: Vec<usize> = (0..self.runs.len())
                    .filter(|i| self.runs[*i].approvable)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let index = candidates[pick % candidates.len()];
                let run = self.runs[index].clone();
                let message = self.request_for(&run).await;
                let action = if approve {
                    APPROVE_ACTION
                } else {
                    REJECT_ACTION
                };
                if run.owner == by {
                    let reply = self.click(by, &message, action, by).await;
                    self.expect(&reply, 200, "the owner's click");
                    self.assert_private(by, "a click's answer", &reply.text, &[]);
                    self.runs[index].decided = true;
                    if approve {
                        self.tenant_mut(by).approve_clicks += 1;
                    }
                    return;
                }
                // Another tenant's approval id, clicked on a message in the caller's own
                // channel and posted to its own path: answered as an id nobody has.
                let approval = message.button_value(APPROVE_ACTION);
                let theirs = self.click(by, &forged(by, &approval), action, by).await;
                let nobody = ApprovalId::new().to_string();
                let nobodys = self.click(by, &forged(by, &nobody), action, by).await;
                self.expect(&theirs, 200, "a click naming another tenant's approval");
                self.assert_same_answer(&theirs, &nobodys, "an approval id");
                self.tenant_mut(by).submitted.insert(approval.clone());
                self.tenant_mut(by).submitted.insert(nobody);
                if !run.decided {
                    let state = self.run_state(&run).await;
                    assert_eq!(
                        state,
                        states::AWAITING_APPROVAL,
                        "{}: another tenant's click changed run {}",
                        self.at(),
                        run.id
                    );
                }
            }
            Call::ClickOnOthersPath { by, victim } => {
                let waiting = self
                    .runs
                    .iter()
                    .find(|r| r.owner == victim && r.approvable && !r.decided)
                    .cloned();
                let named = waiting.as_ref().and_then(|run| {
                    let named = format!("Run {}", run.id);
                    self.tenant(victim)
                        .slack
                        .posted()
                        .into_iter()
                        .find(|m| m.blocks.to_string().contains(&named))
                });
                let message =
                    named.unwrap_or_else(|| forged(victim, &ApprovalId::new().to_string()));
                let reply = self.click(by, &message, APPROVE_ACTION, victim).await;
                self.expect(&reply, 401, "a click signed by another tenant's app");
                if let Some(run) = &waiting {
                    let state = self.run_state(run).await;
                    assert!(
                        !matches!(
                            state.as_str(),
                            states::COMPLETED | states::REJECTED | states::WRITING
                        ),
                        "{}: a forged click decided run {}",
                        self.at(),
                        run.id
                    );
                }
            }
            Call::Export { of, caller } => {
                let path = format!("/v1/tenants/{}/export", of.who().id);
                match caller {
                    Caller::Operator => {
                        let reply = self.h.get(&path, Some(OPS_TOKEN)).await;
                        self.expect(&reply, 200, "the operator's export");
                        self.assert_private(of, "an export", &reply.text, &[]);
                        self.check_export(of, &reply.text);
                    }
                    Caller::AdminOf(by) => {
                        let token = self.tenant(by).api.admin_token.clone();
                        let theirs = self.h.get(&path, Some(&token)).await;
                        let nobodys = self
                            .h
                            .get("/v1/tenants/us-nobody/export", Some(&token))
                            .await;
                        assert!(
                            matches!(theirs.status, 401 | 403),
                            "{}: a tenant token on the platform export: {}",
                            self.at(),
                            theirs.text
                        );
                        self.assert_same_answer(&theirs, &nobodys, "a tenant on the platform API");
                        self.assert_private(by, "a refused export", &theirs.text, &[of.who().id]);
                    }
                }
            }
            Call::RotateSigningSecret { by } => {
                let value = fresh_id(&format!("{}-signing-", by.who().id));
                let token = self.tenant(by).api.admin_token.clone();
                let reply = self
                    .h
                    .request(
                        "PUT",
                        "/v1/tenant/secrets/slack.signing_secret",
                        Some(&token),
                        Some(&json!({ "value": value })),
                    )
                    .await;
                self.expect(&reply, 200, "setting the signing secret");
                assert!(
                    !reply.text.contains(&value),
                    "{}: the answer carries the secret",
                    self.at()
                );
                self.assert_private(by, "a secret's answer", &reply.text, &[]);
                self.tenant_mut(by).signing.push(value);
            }
            Call::RotateWebhookSecret { by } => {
                let token = self.tenant(by).api.admin_token.clone();
                let path = format!("/v1/tenant/sources/{}/rotate", by.who().source);
                let reply = self.h.request("POST", &path, Some(&token), None).await;
                self.expect(&reply, 200, "rotating the own source");
                self.assert_private(by, "a rotation's answer", &reply.text, &[]);
                let secret = reply.body["secret"]
                    .as_str()
                    .expect("the new secret")
                    .to_owned();
                self.tenant_mut(by).whsecs.push(secret);
            }
            Call::RotateOthersSource { by, victim } => {
                let token = self.tenant(by).api.admin_token.clone();
                let v = victim.who();
                let theirs = self
                    .h
                    .request(
                        "POST",
                        &format!("/v1/tenant/sources/{}/rotate", v.source),
                        Some(&token),
                        None,
                    )
                    .await;
                let nobodys = self
                    .h
                    .request(
                        "POST",
                        "/v1/tenant/sources/no-such-source/rotate",
                        Some(&token),
                        None,
                    )
                    .await;
                self.expect(&theirs, 404, "rotating another tenant's source");
                self.assert_same_answer(&theirs, &nobodys, "a source name");
                self.assert_private(by, "a refused rotation", &theirs.text, &[v.source]);
                self.victim_still_verifies(victim).await;
            }
            Call::SetSecretNamedForOthersSource { by, victim } => {
                let token = self.tenant(by).api.admin_token.clone();
                let v = victim.who();
                let value = steward_adapters::webhook::WebhookSecret::generate();
                let reply = self
                    .h
                    .request(
                        "PUT",
                        &format!("/v1/tenant/secrets/webhook.{}", v.source),
                        Some(&token),
                        Some(&json!({ "value": value })),
                    )
                    .await;
                // A secret of the caller's own, ahead of a source of that name.
                self.expect(&reply, 200, "a secret named for another tenant's source");
                self.tenant_mut(by).submitted.insert(v.source.to_owned());
                self.assert_private(by, "a secret's answer", &reply.text, &[]);
                self.victim_still_verifies(victim).await;
            }
            Call::RevokeOthersToken { by, victim } => {
                let token = self.tenant(by).api.admin_token.clone();
                let id = self.tenant(victim).api.runs_token_id.clone();
                let theirs = self
                    .h
                    .request(
                        "DELETE",
                        &format!("/v1/tenant/tokens/{id}"),
                        Some(&token),
                        None,
                    )
                    .await;
                let nobodys = self
                    .h
                    .request(
                        "DELETE",
                        "/v1/tenant/tokens/tok_0000000000000000",
                        Some(&token),
                        None,
                    )
                    .await;
                self.expect(&theirs, 404, "revoking another tenant's token");
                self.assert_same_answer(&theirs, &nobodys, "a token id");
                self.assert_private(by, "a refused revocation", &theirs.text, &[&id]);
                let still = self
                    .h
                    .get(
                        "/v1/runs?limit=1",
                        Some(&self.tenant(victim).api.runs_token),
                    )
                    .await;
                self.expect(&still, 200, "the victim's token still works");
            }
        }
    }

    /// The victim's own source still verifies its own current secret, and nothing else.
    async fn victim_still_verifies(&mut self, victim: T) {
        let whsec = self.tenant(victim).whsec().to_owned();
        let id = fresh_id("msg_");
        let reply = self.webhook(victim, &whsec, &id).await;
        self.expect(&reply, 202, "the victim's own delivery");
        self.record_run(victim, &reply, Some(id), None, true);
    }

    /// The export of `of` is `of`'s alone: its tenant line, audit entries and exactly its runs.
    fn check_export(&self, of: T, text: &str) {
        let id = of.who().id;
        let mut runs = Vec::new();
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).expect("a JSON line");
            match line["type"].as_str() {
                Some("tenant") => assert_eq!(line["id"], json!(id)),
                Some("audit") => assert_eq!(line["entry"]["tenant"], json!(id), "{line}"),
                Some("run") => {
                    assert_eq!(line["run"]["tenant"], json!(id), "{line}");
                    runs.push(line["run"]["id"].as_str().unwrap_or_default().to_owned());
                }
                other => panic!("{}: an export line of type {other:?}", self.at()),
            }
        }
        runs.sort();
        let mut expected: Vec<String> = self
            .runs
            .iter()
            .filter(|r| r.owner == of)
            .map(|r| r.id.clone())
            .collect();
        expected.sort();
        assert_eq!(
            runs,
            expected,
            "{}: the export holds exactly {of:?}'s runs",
            self.at()
        );
    }

    /// After the calls: each tenant's runs, tokens and outside world are its own.
    async fn check_end(&mut self) {
        self.step = usize::MAX;
        for t in ALL {
            self.play(&Call::ListRuns {
                by: t,
                before: None,
            })
            .await;
            let tenant = self.tenant(t);
            let tokens = self
                .h
                .get("/v1/tenant/tokens", Some(&tenant.api.admin_token))
                .await;
            self.expect(&tokens, 200, "listing own tokens");
            self.assert_private(t, "a token listing", &tokens.text, &[]);
            let mut ids: Vec<&str> = tokens.body["tokens"]
                .as_array()
                .expect("a list of tokens")
                .iter()
                .inspect(|k| assert_eq!(k["revoked_at"], Value::Null, "{t:?}'s token was revoked"))
                .filter_map(|k| k["id"].as_str())
                .collect();
            ids.sort();
            let mut expected = vec![
                tenant.api.admin_token_id.as_str(),
                tenant.api.runs_token_id.as_str(),
            ];
            expected.sort();
            assert_eq!(ids, expected, "{t:?} holds exactly its tokens");

            for (mock, requests) in [
                ("ServiceNow", tenant.servicenow.requests().await),
                ("Slack", tenant.slack.requests().await),
                ("LLM", tenant.llm.requests().await),
            ] {
                for request in requests {
                    let text = format!(
                        "{} {}\n{}",
                        request.method,
                        request.url,
                        String::from_utf8_lossy(&request.body)
                    );
                    self.assert_private(t, &format!("a request to {t:?}'s {mock}"), &text, &[]);
                }
            }
            let patches = tenant.servicenow.patches().await;
            assert!(
                patches.len() <= tenant.approve_clicks,
                "{t:?}'s ServiceNow got {} writes for {} approvals of its own",
                patches.len(),
                tenant.approve_clicks
            );
            for run in self
                .runs
                .iter()
                .filter(|r| r.owner == t && r.approvable && !r.decided)
            {
                let state = self.run_state(run).await;
                assert!(
                    !matches!(
                        state.as_str(),
                        states::COMPLETED | states::REJECTED | states::WRITING | states::CLOSING
                    ),
                    "run {} of {t:?} was decided by nobody of its own: {state}",
                    run.id
                );
            }
        }
    }
}

/// The values of every decision button in `blocks`: the approval ids a message carries.
fn approval_ids(blocks: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![blocks];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(fields) => {
                let decision = fields
                    .get("action_id")
                    .is_some_and(|a| a == APPROVE_ACTION || a == REJECT_ACTION);
                if let (true, Some(Value::String(id))) = (decision, fields.get("value")) {
                    found.push(id.clone());
                }
                stack.extend(fields.values());
            }
            _ => {}
        }
    }
    found
}

/// A message in `t`'s own channel carrying buttons for the approval `id`.
fn forged(t: T, id: &str) -> PostedMessage {
    PostedMessage {
        channel: t.who().channel.to_owned(),
        ts: "1700000000.999999".into(),
        text: "Approval request".into(),
        blocks: json!([{
            "type": "actions",
            "block_id": "steward_decision",
            "elements": [
                {"type": "button", "action_id": APPROVE_ACTION, "value": id,
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": REJECT_ACTION, "value": id,
                 "text": {"type": "plain_text", "text": "Reject"}},
            ],
        }]),
    }
}

async fn play(postgres: Option<&PgServer>, calls: &[Call]) {
    let mut world = World::start(postgres).await;
    for (n, call) in calls.iter().enumerate() {
        world.step = n;
        world.play(call).await;
    }
    world.check_end().await;
    world.h.shutdown().await;
}

/// Up to 25 calls per case, 16 cases; a failure shrinks to a short sequence, printed in full.
fn check(postgres: Option<&PgServer>) {
    let config = Config {
        cases: 16,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(call(), 1..=25), |calls| {
        // A runtime per case, so that nothing of a failed case runs on into the next.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(play(postgres, &calls));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn random_http_calls_by_three_tenants_never_cross_tenants_on_sqlite() {
    check(None);
}

#[test]
fn random_http_calls_by_three_tenants_never_cross_tenants_on_postgres() {
    let Some(server) = PgServer::from_env("random_http_calls_by_three_tenants_never_cross_tenants")
    else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let server = rt.block_on(server.with_template());
    check(Some(&server));
}
