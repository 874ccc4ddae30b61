//! The kill switch and shadow mode end to end: writes paused for a tenant or the whole
//! platform hold approved runs at their write, with nothing sent to ServiceNow, until writes
//! resume (through the API, or at boot); shadow mode goes the whole way to the write and
//! writes nothing.

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::slack::{APPROVE_ACTION, sign_slack};
use steward_core::RunId;
use steward_persistence::{NewToken, RunRecord, generate_api_token};
use steward_tests::webhook::Delivery;
use steward_tests::{APPROVER, Harness, OPS_TOKEN, PostedMessage, SOURCE, Scenario, eventually};

/// Issues an `admin` token for the harness's main tenant (`other` for the second one).
async fn admin_token(h: &Harness, other: bool) -> String {
    let tenant = if other { &h.other } else { &h.tenant };
    let value = generate_api_token();
    let scopes = vec!["admin".to_owned()];
    let token = NewToken {
        value: &value,
        label: "e2e-admin",
        scopes: &scopes,
        expires_at: None,
    };
    h.server()
        .store
        .issue_token(&tenant.scope(), token, "operator")
        .await
        .expect("a token is issued");
    value.expose_secret().to_owned()
}

async fn put_json(h: &Harness, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client")
        .put(format!("{}{path}", h.url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("Steward answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until the run is parked, and returns it.
async fn held(h: &Harness, run: RunId) -> RunRecord {
    h.wait_for_state(run, states::PARKED).await
}

/// Approves the main tenant's run and waits until it is held at its write.
async fn approve_and_hold(h: &Harness, run: RunId) -> RunRecord {
    let message = h.awaiting_approval(run).await;
    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
    held(h, run).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_pause_holds_an_approved_run_and_resuming_writes_exactly_once() {
    let h = Scenario::new().start().await;
    let admin = admin_token(&h, false).await;
    let paused = h
        .post_json(
            "/v1/tenant/writes/pause",
            Some(&admin),
            &json!({"reason": "change freeze until Monday"}),
        )
        .await;
    assert_eq!(paused.status, 200, "{}", paused.text);
    assert_eq!(paused.body["paused"], true);

    let run = h.trigger().await;
    let record = approve_and_hold(&h, run).await;
    let reason = record.last_error.unwrap_or_default();
    assert!(
        reason.contains("writes are paused for tenant us-acme")
            && reason.contains("change freeze until Monday")
            && reason.contains("token:tok_"),
        "the run says why it waits: {reason}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        h.servicenow.patches().await.is_empty(),
        "no PATCH while writes are paused"
    );
    let held_step = h.step(run, "held").await;
    assert_eq!(held_step["gate"], "writes");

    let inspected = h.get(&format!("/v1/ops/runs/{run}"), Some(OPS_TOKEN)).await;
    assert_eq!(inspected.status, 200, "{}", inspected.text);
    assert_eq!(inspected.body["run"]["state"], "parked");
    assert!(
        inspected.body["run"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("change freeze")),
        "ops sees the reason: {}",
        inspected.body["run"]
    );

    let resumed = h
        .post_json(
            "/v1/tenant/writes/resume",
            Some(&admin),
            &json!({"reason": "freeze lifted"}),
        )
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    assert_eq!(h.servicenow.patches().await.len(), 1, "exactly one PATCH");

    let audit = h.audit().await;
    let entry = |kind: &str| {
        audit
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} entry"))
            .clone()
    };
    let pause = entry("writes.paused");
    assert!(pause.actor.starts_with("token:tok_"), "{}", pause.actor);
    assert!(pause.body.contains("change freeze until Monday"));
    assert!(entry("writes.resumed").body.contains("freeze lifted"));
    assert!(entry("run.held").body.contains("writes"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_needs_the_admin_token_and_a_reason() {
    let h = Scenario::new().start().await;
    let body = json!({"reason": "x"});
    let no_token = h.post_json("/v1/tenant/writes/pause", None, &body).await;
    assert_eq!(no_token.status, 401);
    let runs_token = h
        .post_json("/v1/tenant/writes/pause", Some(&h.tenant.api_token), &body)
        .await;
    assert_eq!(runs_token.status, 403, "runs:write is not admin");
    let admin = admin_token(&h, false).await;
    let platform = h
        .post_json("/v1/ops/writes/pause", Some(&admin), &body)
        .await;
    assert_eq!(
        platform.status, 403,
        "a tenant token never pauses the platform"
    );
    let empty = h
        .post_json(
            "/v1/tenant/writes/pause",
            Some(&admin),
            &json!({"reason": ""}),
        )
        .await;
    assert_eq!(empty.status, 422, "{}", empty.text);
    let other = h
        .post_json(
            "/v1/tenant/writes/pause",
            Some(&admin),
            &json!({"reason": "x", "tenant": "us-globex"}),
        )
        .await;
    assert_eq!(other.status, 404, "another tenant is not found");
    let status = h.get("/v1/tenant/writes", Some(&admin)).await;
    assert_eq!(status.body["pauses"], json!([]), "nothing was paused");
    h.shutdown().await;
}

/// The second tenant's approval request, once its run waits for it.
async fn other_awaiting(h: &Harness, run: RunId) -> PostedMessage {
    let scope = h.other.scope();
    eventually("the second tenant's run to await approval", || async {
        let record = h.server().store.run(&scope, run).await.ok().flatten()?;
        (record.state == states::AWAITING_APPROVAL).then_some(())
    })
    .await;
    let named = format!("Run {run}");
    h.slack
        .posted()
        .into_iter()
        .find(|m| m.blocks.to_string().contains(&named))
        .expect("the second tenant's request is in Slack")
}

async fn other_state(h: &Harness, run: RunId) -> RunRecord {
    h.server()
        .store
        .run(&h.other.scope(), run)
        .await
        .expect("the store answers")
        .expect("the run exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_pause_holds_every_tenant_until_the_operator_resumes() {
    let h = Scenario::new().start().await;
    let paused = h
        .post_json(
            "/v1/ops/writes/pause",
            Some(OPS_TOKEN),
            &json!({"reason": "ServiceNow upgrade", "operator": "ana"}),
        )
        .await;
    assert_eq!(paused.status, 200, "{}", paused.text);

    let run = h.trigger().await;
    approve_and_hold(&h, run).await;

    let delivery = Delivery::new(&h.other.whsec, h.now_secs(), h.incident_event());
    let reply = h.send_to(h.other.id.as_str(), SOURCE, &delivery).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let other_run = reply.run_id();
    let message = other_awaiting(&h, other_run).await;
    let payload = steward_tests::slack::block_actions(
        &message,
        APPROVE_ACTION,
        APPROVER,
        &h.slack.response_url(),
    );
    let body = steward_tests::slack::form_body(&payload);
    let now = h.now_secs();
    let signature = sign_slack(&h.other.signing_secret, now, &body);
    let click = h
        .slack_callback(h.other.id.as_str(), body, &now.to_string(), &signature)
        .await;
    assert_eq!(click.status, 200, "{}", click.text);
    let other_held = eventually("the second tenant's run to be held", || async {
        let record = other_state(&h, other_run).await;
        (record.state == states::PARKED).then_some(record)
    })
    .await;
    for record in [h.run(run).await.expect("the run"), other_held] {
        let reason = record.last_error.unwrap_or_default();
        assert!(
            reason.contains("paused for the platform by operator:ana: ServiceNow upgrade"),
            "{reason}"
        );
    }
    assert!(h.servicenow.patches().await.is_empty(), "no tenant writes");
    let listed = h.get("/v1/ops/writes", Some(OPS_TOKEN)).await;
    assert_eq!(listed.body["pauses"][0]["tenant"], Value::Null);
    for scope in [h.tenant.scope(), h.other.scope()] {
        let audit = h
            .server()
            .store
            .audit_entries(&scope, 0, 1000)
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.kind == "writes.paused" && e.actor == "operator:ana"),
            "every tenant's chain records the platform pause"
        );
    }

    let resumed = h
        .post_json(
            "/v1/ops/writes/resume",
            Some(OPS_TOKEN),
            &json!({"reason": "upgrade done", "operator": "ana"}),
        )
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    eventually("the second tenant's run to leave its hold", || async {
        (other_state(&h, other_run).await.state != states::PARKED).then_some(())
    })
    .await;
    assert!(!h.servicenow.patches().await.is_empty());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_held_when_the_process_stopped_writes_once_after_boot() {
    let mut h = Scenario::new().start().await;
    let admin = admin_token(&h, false).await;
    let paused = h
        .post_json(
            "/v1/tenant/writes/pause",
            Some(&admin),
            &json!({"reason": "freeze"}),
        )
        .await;
    assert_eq!(paused.status, 200, "{}", paused.text);
    let run = h.trigger().await;
    approve_and_hold(&h, run).await;

    // Writes resume in the store with nobody woken, as if the process died right after.
    h.server()
        .store
        .resume_tenant_writes(&h.tenant.scope(), "token:tok_e2e", "freeze lifted")
        .await
        .expect("resumed");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(h.run(run).await.expect("the run").state, states::PARKED);
    h.restart().await;
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    assert_eq!(h.servicenow.patches().await.len(), 1, "exactly one PATCH");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_goes_to_the_write_and_writes_nothing() {
    let h = Scenario::new().start().await;
    let admin = admin_token(&h, false).await;
    let (status, body) = put_json(&h, "/v1/tenant/shadow", &admin, &json!({"enabled": true})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = put_json(&h, "/v1/tenant/shadow", &admin, &json!({"on": true})).await;
    assert_eq!(status, 400, "unknown fields are refused");

    let run = h.trigger().await;
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::SHADOWED,
        "{:?}",
        finished.last_error
    );
    let reason = finished.last_error.unwrap_or_default();
    assert!(
        reason.contains("shadow mode") && reason.contains("nothing was written"),
        "{reason}"
    );
    assert!(h.servicenow.patches().await.is_empty(), "never a PATCH");
    for kind in ["incident_fetched", "triaged", "policy_decided"] {
        h.step(run, kind).await;
    }
    let posted = h.slack.posted();
    let notice = posted
        .iter()
        .find(|m| {
            m.text
                .starts_with("shadow: Steward would request approval for")
        })
        .unwrap_or_else(|| panic!("a shadow notice in Slack: {posted:?}"));
    assert_eq!(notice.channel, h.tenant.channel);
    assert!(
        !notice.blocks.to_string().contains(APPROVE_ACTION),
        "the notice has no buttons"
    );
    let audit = h.audit().await;
    let set = audit
        .iter()
        .find(|e| e.kind == "shadow.set")
        .expect("shadow mode is audited");
    assert!(set.actor.starts_with("token:tok_"));
    assert!(
        audit
            .iter()
            .any(|e| e.kind == "run.finished" && e.body.contains("shadowed"))
    );

    let (status, _) = put_json(&h, "/v1/tenant/shadow", &admin, &json!({"enabled": false})).await;
    assert_eq!(status, 200);
    let next = h.trigger().await;
    h.awaiting_approval(next).await;
    h.shutdown().await;
}
