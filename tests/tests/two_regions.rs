//! Two deployments in one process: one serving `us`, one serving `eu`, each with its own
//! database and its own ServiceNow, Slack and LLM. An operator onboards a tenant in each over
//! the platform and tenant APIs, each runs the whole flow (signed webhook, triage, approval
//! request in Slack, approve, exactly one `PATCH` to its own ServiceNow), and neither region
//! stores or forwards the other's data: every row of each database and every request each
//! region's mocks received is scanned for the other tenant's ids, incident and texts. Every
//! request naming the other region's tenant (intake, Slack, platform) is `421` with the home
//! region's base URL and stores no row; a tenant token, which names no tenant, is unknown in
//! the other region (`401`) and stores no row either.

use std::collections::BTreeMap;
use std::future::Future;

use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;
use steward_core::Region;
use steward_tests::database::PgServer;
use steward_tests::harness::{Harness, OPS_TOKEN, Reply, Scenario, eventually};
use steward_tests::onboarding::{self, NewTenant, Onboarded};
use steward_tests::{Delivery, Person, fixtures, webhook};
use wiremock::Request;

/// Everything that identifies one region's tenant, its incident and what its model says.
struct Identity {
    region: Region,
    tenant: &'static str,
    name: &'static str,
    source: &'static str,
    channel: &'static str,
    approver: Person,
    signing_secret: &'static str,
    sys_id: &'static str,
    number: &'static str,
    title: &'static str,
    description: &'static str,
    summary: &'static str,
    note: &'static str,
    group: &'static str,
}

const US: Identity = Identity {
    region: Region::Us,
    tenant: "us-northwind",
    name: "Northwind Traders",
    source: "northwind-itsm",
    channel: "C0NWAPPROV1",
    approver: Person {
        id: "U0NWAPPRV01",
        name: "nora.west",
    },
    signing_secret: "northwind-slack-signing-secret-us",
    sys_id: "1f0e2d3c4b5a69788796a5b4c3d2e1f0",
    number: "INC0051001",
    title: "Reno warehouse scanners drop off the wireless network",
    description: "Handheld scanners in the Reno warehouse lose Wi-Fi every few minutes.",
    summary: "The Reno access points reboot under load after the firmware push.",
    note: "Roll the Reno access point firmware back to the previous release.",
    group: "4b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
};

const EU: Identity = Identity {
    region: Region::Eu,
    tenant: "eu-contoso",
    name: "Contoso Europa",
    source: "contoso-itsm",
    channel: "C0COAPPROV2",
    approver: Person {
        id: "U0COAPPRV02",
        name: "colm.east",
    },
    signing_secret: "contoso-slack-signing-secret-eu",
    sys_id: "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b",
    number: "INC0062002",
    title: "Lyon payroll batch rejects the SEPA transfer file",
    description: "The Lyon payroll run stops at the SEPA export with a signature error.",
    summary: "The Lyon SEPA export is signed with a certificate that expired overnight.",
    note: "Renew the Lyon SEPA signing certificate and rerun the batch.",
    group: "7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d",
};

/// One deployment and what its tenant was handed and did.
struct Side {
    h: Harness,
    who: &'static Identity,
    tenant: Option<Onboarded>,
    run_id: Option<String>,
    delivery_id: Option<String>,
    approval_id: Option<String>,
}

impl Side {
    fn tenant(&self) -> &Onboarded {
        self.tenant.as_ref().expect("the tenant is onboarded")
    }

    /// Every text that names or belongs to this side's tenant, with what it is.
    fn identifying(&self) -> Vec<(&'static str, String)> {
        let w = self.who;
        let mut all: Vec<(&'static str, String)> = [
            ("tenant id", w.tenant),
            ("tenant name", w.name),
            ("source", w.source),
            ("channel", w.channel),
            ("approver", w.approver.id),
            ("approver name", w.approver.name),
            ("signing secret", w.signing_secret),
            ("incident sys_id", w.sys_id),
            ("incident number", w.number),
            ("incident title", w.title),
            ("incident description", w.description),
            ("model summary", w.summary),
            ("model note", w.note),
            ("proposed group", w.group),
        ]
        .into_iter()
        .map(|(what, v)| (what, v.to_owned()))
        .collect();
        if let Some(t) = &self.tenant {
            all.push(("webhook secret", t.whsec.clone()));
            all.push(("admin token", t.admin_token.clone()));
            all.push(("admin token id", t.admin_token_id.clone()));
            all.push(("runs token", t.runs_token.clone()));
            all.push(("runs token id", t.runs_token_id.clone()));
        }
        for (what, v) in [
            ("run id", &self.run_id),
            ("delivery id", &self.delivery_id),
            ("approval id", &self.approval_id),
        ] {
            if let Some(v) = v {
                all.push((what, v.clone()));
            }
        }
        all
    }
}

async fn start(
    who: &'static Identity,
    peer: Option<(Region, String)>,
    pg: Option<&PgServer>,
) -> Side {
    let mut scenario = Scenario::new()
        .region(who.region)
        .incident_field("sys_id", who.sys_id)
        .incident_field("number", who.number)
        .incident_field("short_description", who.title)
        .incident_field("description", who.description)
        .proposing(fixtures::proposal(
            who.summary,
            &[
                ("category", "software"),
                ("urgency", "1"),
                ("assignment_group", who.group),
                ("work_notes", who.note),
            ],
        ));
    if let Some((region, url)) = peer {
        scenario = scenario.peer(region, &url);
    }
    if let Some(server) = pg {
        scenario = scenario.postgres(server);
    }
    Side {
        h: scenario.start().await,
        who,
        tenant: None,
        run_id: None,
        delivery_id: None,
        approval_id: None,
    }
}

/// Runs `call` against `away` and checks it was refused as misdirected to `home` and that
/// `away` stored no row for it.
async fn misdirected(
    away: &Harness,
    home: &Harness,
    what: &str,
    call: impl Future<Output = Reply>,
) {
    let before = away.row_counts().await;
    let reply = call.await;
    assert_eq!(reply.status, 421, "{what}: {}", reply.text);
    assert_eq!(reply.error_code(), "misdirected", "{what}: {}", reply.text);
    assert_eq!(
        reply.body["home_base_url"],
        json!(home.url()),
        "{what}: the answer names the home region's deployment: {}",
        reply.text
    );
    assert_rows_unchanged(away, &before, what).await;
}

async fn assert_rows_unchanged(h: &Harness, before: &BTreeMap<String, usize>, what: &str) {
    let after = h.row_counts().await;
    assert_eq!(
        &after,
        before,
        "{what}: the {} region stored rows",
        h.region()
    );
}

/// The run's state, read over the runs API with the tenant's own token.
async fn run_state(side: &Side, run: &str) -> String {
    let reply = side
        .h
        .get(&format!("/v1/runs/{run}"), Some(&side.tenant().runs_token))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["run"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn wait_for(side: &Side, run: &str, state: &str) {
    eventually(&format!("run {run} to be {state}"), || async {
        (run_state(side, run).await == state).then_some(())
    })
    .await;
}

/// Onboards the side's tenant, asking the other region first.
async fn onboard(home: &mut Side, away: &Side) {
    let who = home.who;
    let create = json!({ "id": who.tenant, "name": who.name });
    misdirected(
        &away.h,
        &home.h,
        "platform: creating the tenant",
        away.h
            .request("POST", "/v1/tenants", Some(OPS_TOKEN), Some(&create)),
    )
    .await;
    let spec = NewTenant {
        id: who.tenant.into(),
        name: who.name.into(),
        source: who.source.into(),
        channel: who.channel.into(),
        approver: who.approver,
        signing_secret: who.signing_secret.into(),
    };
    let h = &home.h;
    home.tenant = Some(onboarding::onboard(h, &spec, &h.servicenow, &h.slack, &h.llm).await);
}

/// The flagship path in the side's own region, with each request first sent to the other.
async fn flagship(home: &mut Side, away: &Side) {
    let who = home.who;
    let tenant = home.tenant().clone();
    let body = webhook::incident_event(who.sys_id, who.number, who.title);
    let now = steward_core::Clock::now_secs(&steward_core::SystemClock);
    let delivery = Delivery::new(&tenant.whsec, now, body);
    misdirected(
        &away.h,
        &home.h,
        "intake: a signed webhook",
        away.h.send_to(who.tenant, who.source, &delivery),
    )
    .await;
    let accepted = home.h.send_to(who.tenant, who.source, &delivery).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let run = accepted.run_id().to_string();
    home.run_id = Some(run.clone());
    home.delivery_id = Some(delivery.id.clone());

    wait_for(home, &run, states::AWAITING_APPROVAL).await;
    let named = format!("Run {run}");
    let request = home
        .h
        .slack
        .posted()
        .into_iter()
        .find(|m| m.blocks.to_string().contains(&named))
        .expect("the approval request names the run");
    assert_eq!(request.channel, who.channel);
    home.approval_id = Some(request.button_value(APPROVE_ACTION));
    let (click, ts, signature) = onboarding::signed_click(
        &request,
        APPROVE_ACTION,
        who.approver,
        &home.h.slack.response_url(),
        who.signing_secret,
    );
    misdirected(
        &away.h,
        &home.h,
        "Slack: the approver's click",
        away.h
            .slack_callback(who.tenant, click.clone(), &ts, &signature),
    )
    .await;
    let clicked = home
        .h
        .slack_callback(who.tenant, click, &ts, &signature)
        .await;
    assert_eq!(clicked.status, 200, "{}", clicked.text);
    wait_for(home, &run, states::COMPLETED).await;

    let patches = home.h.servicenow.patches().await;
    assert_eq!(patches.len(), 1, "exactly one write: {patches:?}");
    assert_eq!(patches[0]["assignment_group"], json!(who.group));
    assert_eq!(
        patches[0]["work_notes"]
            .as_str()
            .map(|n| n.contains(who.note)),
        Some(true)
    );

    // The platform calls naming the tenant, asked of the other region.
    let export = format!("/v1/tenants/{}/export", who.tenant);
    misdirected(
        &away.h,
        &home.h,
        "platform: the export",
        away.h.request("GET", &export, Some(OPS_TOKEN), None),
    )
    .await;
    let offboard = json!({ "confirm": who.tenant, "exported": true });
    misdirected(
        &away.h,
        &home.h,
        "platform: offboarding",
        away.h.request(
            "DELETE",
            &format!("/v1/tenants/{}", who.tenant),
            Some(OPS_TOKEN),
            Some(&offboard),
        ),
    )
    .await;

    // A tenant token names no tenant: the other region does not know it, and stores nothing.
    let before = away.h.row_counts().await;
    let start = json!({ "incident": { "number": who.number } });
    for (method, path, body) in [
        ("GET", "/v1/runs".to_owned(), None),
        ("GET", format!("/v1/runs/{run}"), None),
        ("POST", "/v1/runs".to_owned(), Some(&start)),
        ("GET", "/v1/tenant/tokens".to_owned(), None),
    ] {
        for token in [&tenant.runs_token, &tenant.admin_token] {
            let reply = away.h.request(method, &path, Some(token), body).await;
            assert_eq!(reply.status, 401, "{method} {path}: {}", reply.text);
            assert_eq!(reply.error_code(), "unauthenticated", "{}", reply.text);
        }
    }
    assert_rows_unchanged(
        &away.h,
        &before,
        "the tenant API with a token of the other region",
    )
    .await;
}

/// A request the mock received, as text: method, URL and body.
fn request_text(r: &Request) -> String {
    format!(
        "{} {}\n{}",
        r.method,
        r.url,
        String::from_utf8_lossy(&r.body)
    )
}

/// Checks that nothing of `other`'s tenant is in `side`'s database or reached `side`'s mocks,
/// and that `side`'s own data is (so the scans can see what they look for).
async fn assert_keeps_only_its_own(side: &Side, other: &Side) {
    let region = side.h.region();
    let rows = side.h.stored_rows().await;
    assert!(!rows.is_empty(), "the {region} database has rows");
    for (what, value) in other.identifying() {
        if let Some(row) = rows.iter().find(|r| r.text.contains(&value)) {
            panic!(
                "the {region} database holds the other region's {what} ({value}) in {}: {}",
                row.table, row.text
            );
        }
    }
    for own in [side.who.tenant, side.run_id.as_deref().unwrap_or("-")] {
        assert!(
            rows.iter().any(|r| r.text.contains(own)),
            "the {region} database holds its own {own}"
        );
    }

    let mocks: [(&str, Vec<Request>); 3] = [
        ("ServiceNow", side.h.servicenow.requests().await),
        ("Slack", side.h.slack.requests().await),
        ("LLM", side.h.llm.requests().await),
    ];
    for (mock, requests) in &mocks {
        assert!(!requests.is_empty(), "the {region} {mock} was called");
        for request in requests {
            let text = request_text(request);
            for (what, value) in other.identifying() {
                assert!(
                    !text.contains(&value),
                    "the {region} {mock} received the other region's {what} ({value}): {text}"
                );
            }
        }
    }
    let [(_, servicenow), (_, slack), (_, llm)] = &mocks;
    assert!(
        servicenow
            .iter()
            .filter(|r| r.url.path().starts_with("/api/now/table/incident/"))
            .all(|r| r.url.path().ends_with(side.who.sys_id)),
        "the {region} ServiceNow was asked only about its own incident"
    );
    for call in slack {
        let args: Value = call.body_json().unwrap_or(Value::Null);
        assert_eq!(
            args["channel"],
            json!(side.who.channel),
            "the {region} Slack was asked only about its own channel"
        );
    }
    assert!(
        llm.iter()
            .all(|r| String::from_utf8_lossy(&r.body).contains(side.who.number)),
        "the {region} model was asked only about its own incident"
    );
}

async fn two_regions(pg: Option<&PgServer>) {
    // The us deployment learns the eu one's address once that one is up.
    let mut us = start(&US, None, pg).await;
    let eu = start(&EU, Some((Region::Us, us.h.url())), pg).await;
    us.h.set_peer(Region::Eu, &eu.h.url()).await;
    let mut eu = eu;

    onboard(&mut us, &eu).await;
    onboard(&mut eu, &us).await;
    flagship(&mut us, &eu).await;
    flagship(&mut eu, &us).await;

    assert_keeps_only_its_own(&us, &eu).await;
    assert_keeps_only_its_own(&eu, &us).await;
    us.h.shutdown().await;
    eu.h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_each_serve_and_keep_only_their_own_tenant_on_sqlite() {
    two_regions(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_each_serve_and_keep_only_their_own_tenant_on_postgres() {
    let Some(server) = PgServer::from_env("two_regions_each_serve_and_keep_only_their_own_tenant")
    else {
        return;
    };
    two_regions(Some(&server)).await;
}
