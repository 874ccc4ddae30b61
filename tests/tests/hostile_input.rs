//! Hostile input at the HTTP edge: every request that is unknown, oversized, unsigned, unparseable
//! or from the wrong tenant gets its one status, a JSON error body, and starts nothing.

use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::slack::{APPROVE_ACTION, sign_slack};
use steward_adapters::webhook::WebhookSecret;
use steward_tests::fixtures::SYS_ID;
use steward_tests::slack::{block_actions, form_body};
use steward_tests::{APPROVER, Harness, Reply, SOURCE, Scenario};

/// The largest webhook body Steward accepts.
const WEBHOOK_LIMIT: usize = 256 * 1024;

/// A JSON incident event padded with spaces to exactly `len` bytes.
fn padded_event(h: &Harness, len: usize) -> Vec<u8> {
    let mut body = h.incident_event();
    assert!(body.pop() == Some(b'}'));
    body.resize(len - 1, b' ');
    body.push(b'}');
    body
}

fn assert_error_body(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.error_code(), code, "{}", reply.text);
    assert!(
        !reply.message().is_empty(),
        "the error says what went wrong"
    );
}

async fn assert_no_run(h: &Harness) {
    assert!(h.runs().await.is_empty(), "no run was created");
    assert!(h.llm.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenants_and_sources_get_the_same_404() {
    let h = Scenario::new().start().await;
    let delivery = h.delivery(h.incident_event());
    let unknown_tenant = h.send_to("us-nobody", SOURCE, &delivery).await;
    let unknown_source = h
        .send_to(h.tenant.id.as_str(), "pagerduty", &delivery)
        .await;
    let malformed_tenant = h.send_to("Not_A_Tenant", SOURCE, &delivery).await;
    for reply in [&unknown_tenant, &unknown_source, &malformed_tenant] {
        assert_error_body(reply, 404, "not_found");
        assert_eq!(reply.body, unknown_tenant.body, "nothing tells them apart");
    }
    let slack = h
        .slack_callback("us-nobody", b"payload=%7B%7D".to_vec(), "1", "v0=00")
        .await;
    assert_eq!(slack.status, 404);
    assert_eq!(slack.body, unknown_tenant.body);
    assert_no_run(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_webhook_body_is_refused_with_413_and_starts_nothing() {
    let h = Scenario::new().start().await;
    let reply = h
        .send(&h.delivery(padded_event(&h, WEBHOOK_LIMIT + 1)))
        .await;
    assert_error_body(&reply, 413, "body_too_large");
    let reply = h
        .send(&h.delivery(padded_event(&h, 4 * WEBHOOK_LIMIT)))
        .await;
    assert_error_body(&reply, 413, "body_too_large");
    assert_no_run(&h).await;

    let unsaid = h.delivery(padded_event(&h, WEBHOOK_LIMIT + 1));
    let status = h
        .post_chunked(
            &format!("/v1/webhooks/{}/{SOURCE}", h.tenant.id),
            &[
                ("content-type", "application/json"),
                ("webhook-id", &unsaid.id),
                ("webhook-timestamp", &unsaid.timestamp),
                ("webhook-signature", &unsaid.signature),
            ],
            &unsaid.body,
        )
        .await;
    assert_eq!(
        status, 413,
        "a body without a declared length is bounded too"
    );
    assert_no_run(&h).await;

    let at_limit = h.send(&h.delivery(padded_event(&h, WEBHOOK_LIMIT))).await;
    assert_eq!(at_limit.status, 202, "a body at the limit is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_body_that_names_no_incident_is_422_and_starts_nothing() {
    let h = Scenario::new().start().await;
    let bodies = [
        json!({"event": "incident.created"}),
        json!({"incident": {"sys_id": "A9E30C7DC61122760116894DE7BCC7BD"}}),
        json!({"incident": {"sys_id": format!("{SYS_ID}^ORnumber=INC0000999")}}),
        json!({"incident": {"sys_id": 42, "number": ["INC0010001"]}}),
        json!({"incident": {"number": "INC0010001^ORactive=true"}}),
        json!([SYS_ID]),
    ];
    for body in bodies {
        let reply = h.send(&h.delivery(body.to_string().into_bytes())).await;
        assert_error_body(&reply, 422, "unprocessable");
        assert!(reply.message().contains("no run"), "{}", reply.message());
    }
    assert_no_run(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_body_that_is_not_json_is_400_and_starts_nothing() {
    let h = Scenario::new().start().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: [&[u8]; 5] = [
        b"incident=a9e30c7dc61122760116894de7bcc7bd",
        b"{\"incident\": {\"sys_id\": \"a9e30c7dc61122760116894de7bcc7bd\"",
        b"\xff\xfe{\"incident\":{}}",
        b"{\"a\":1}{\"b\":2}",
        deep.as_bytes(),
    ];
    for body in bodies {
        let reply = h.send(&h.delivery(body.to_vec())).await;
        assert_error_body(&reply, 400, "bad_request");
    }
    assert_no_run(&h).await;
}

/// A pending approval and a genuine click payload for it.
async fn pending_click(h: &Harness) -> (steward_core::RunId, Vec<u8>) {
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    let payload = block_actions(&message, APPROVE_ACTION, APPROVER, &h.slack.response_url());
    (run, form_body(&payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_callback_that_does_not_verify_is_401_and_decides_nothing() {
    let h = Scenario::new().start().await;
    let (run, body) = pending_click(&h).await;
    let tenant = h.tenant.id.as_str();
    let now = h.now_secs();
    let ts = now.to_string();

    let wrong_secret = sign_slack("not-the-signing-secret", now, &body);
    let reply = h
        .slack_callback(tenant, body.clone(), &ts, &wrong_secret)
        .await;
    assert_error_body(&reply, 401, "signature_mismatch");

    let other_tenants = sign_slack(&h.other.signing_secret, now, &body);
    let reply = h
        .slack_callback(tenant, body.clone(), &ts, &other_tenants)
        .await;
    assert_error_body(&reply, 401, "signature_mismatch");

    let text = String::from_utf8(body.clone()).expect("a form is ASCII");
    assert!(text.contains('+'), "the form encodes spaces as +");
    let respelled = text.replace('+', "%20").into_bytes();
    let original = sign_slack(&h.tenant.signing_secret, now, &body);
    let reply = h.slack_callback(tenant, respelled, &ts, &original).await;
    assert_error_body(&reply, 401, "signature_mismatch");

    let stale = now - 301;
    let signed_stale = sign_slack(&h.tenant.signing_secret, stale, &body);
    let reply = h
        .slack_callback(tenant, body.clone(), &stale.to_string(), &signed_stale)
        .await;
    assert_error_body(&reply, 401, "timestamp_out_of_tolerance");

    let reply = h
        .slack_callback(tenant, body.clone(), "NaN", &original)
        .await;
    assert_error_body(&reply, 401, "timestamp_malformed");
    let reply = h.slack_callback(tenant, body.clone(), &ts, "").await;
    assert_eq!(reply.status, 401, "{}", reply.text);

    let pending = h.run(run).await.expect("the run exists");
    assert_eq!(
        pending.state,
        states::AWAITING_APPROVAL,
        "nothing was decided"
    );
    assert!(h.slack.calls("chat.postEphemeral").await.is_empty());
    assert!(h.servicenow.patches().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_slack_callback_that_is_not_a_block_actions_form_is_400() {
    let h = Scenario::new().start().await;
    let (run, genuine) = pending_click(&h).await;
    let genuine: Value = {
        let text = String::from_utf8(genuine).expect("ASCII");
        let (_, payload) = form_urlencoded::parse(text.as_bytes())
            .find(|(k, _)| k == "payload")
            .expect("a payload field");
        serde_json::from_str(&payload).expect("JSON")
    };
    let mut other_type = genuine.clone();
    other_type["type"] = json!("view_submission");
    let mut no_approval = genuine.clone();
    no_approval["actions"][0]["value"] = json!("'; DROP TABLE approvals; --");
    let bodies: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&genuine).expect("JSON"),
        b"token=xyz&team_id=T1&command=%2Fsteward".to_vec(),
        format!(
            "{}&{}",
            text_of(&form_body(&genuine)),
            text_of(&form_body(&genuine))
        )
        .into_bytes(),
        form_body(&other_type),
        form_body(&no_approval),
        b"payload=%7B%22type%22%3A".to_vec(),
    ];
    for body in bodies {
        let now = h.now_secs();
        let signature = sign_slack(&h.tenant.signing_secret, now, &body);
        let reply = h
            .slack_callback(h.tenant.id.as_str(), body, &now.to_string(), &signature)
            .await;
        assert_error_body(&reply, 400, "bad_request");
    }
    let pending = h.run(run).await.expect("the run exists");
    assert_eq!(
        pending.state,
        states::AWAITING_APPROVAL,
        "nothing was decided"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_slack_callback_is_refused_with_413() {
    let h = Scenario::new().start().await;
    let (run, genuine) = pending_click(&h).await;
    let mut body = genuine;
    body.extend_from_slice(b"&padding=");
    body.resize(64 * 1024 + 1, b'x');
    let now = h.now_secs();
    let signature = sign_slack(&h.tenant.signing_secret, now, &body);
    let reply = h
        .slack_callback(h.tenant.id.as_str(), body, &now.to_string(), &signature)
        .await;
    assert_error_body(&reply, 413, "body_too_large");
    let pending = h.run(run).await.expect("the run exists");
    assert_eq!(
        pending.state,
        states::AWAITING_APPROVAL,
        "nothing was decided"
    );
}

fn text_of(body: &[u8]) -> String {
    String::from_utf8(body.to_vec()).expect("ASCII")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_api_refuses_a_missing_or_wrong_token() {
    let h = Scenario::new().start().await;
    let body = json!({"incident": {"sys_id": SYS_ID}});
    let unknown = format!("stw_{}", "0f".repeat(32));
    let webhook_secret = WebhookSecret::generate();
    for token in [
        None,
        Some(unknown.as_str()),
        Some(""),
        Some(&webhook_secret),
    ] {
        let reply = h.post_json("/v1/runs", token, &body).await;
        assert_error_body(&reply, 401, "unauthenticated");
        let reply = h.get("/v1/runs", token).await;
        assert_error_body(&reply, 401, "unauthenticated");
    }
    assert_no_run(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_run_is_not_found_with_a_valid_token() {
    let h = Scenario::new().start().await;
    let body = json!({"incident": {"sys_id": SYS_ID}});
    let created = h
        .post_json("/v1/runs", Some(&h.other.api_token), &body)
        .await;
    assert_eq!(created.status, 202, "{}", created.text);
    let theirs = created.run_id();

    let path = format!("/v1/runs/{theirs}");
    let reply = h.get(&path, Some(&h.tenant.api_token)).await;
    assert_error_body(&reply, 404, "not_found");
    let unknown = h
        .get(
            &format!("/v1/runs/{}", steward_core::RunId::new()),
            Some(&h.tenant.api_token),
        )
        .await;
    assert_eq!(
        reply.body, unknown.body,
        "another tenant's run looks like no run"
    );
    let listed = h.get("/v1/runs", Some(&h.tenant.api_token)).await;
    assert_eq!(listed.body["runs"], json!([]), "{}", listed.text);

    let own = h.get(&path, Some(&h.other.api_token)).await;
    assert_eq!(own.status, 200, "its own tenant sees it: {}", own.text);
    assert!(
        h.run(theirs).await.is_none(),
        "the store scopes it away too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_api_refuses_bodies_and_ids_it_cannot_use() {
    let h = Scenario::new().start().await;
    let token = Some(h.tenant.api_token.as_str());
    let cases = [
        (
            json!({"incident": {"sys_id": SYS_ID}, "approved": true}),
            400,
            "bad_request",
        ),
        (
            json!({"incident": {"sys_id": SYS_ID, "table": "sys_user"}}),
            400,
            "bad_request",
        ),
        (json!({"incident": "INC0010001"}), 400, "bad_request"),
        (
            json!({"incident": {"sys_id": SYS_ID, "number": "INC0010001"}}),
            422,
            "unprocessable",
        ),
        (
            json!({"incident": {"sys_id": "../../sys_user"}}),
            422,
            "unprocessable",
        ),
        (json!({"incident": {}}), 422, "unprocessable"),
        (
            json!({"incident": {"sys_id": SYS_ID}, "requester_slack": "x".repeat(20_000)}),
            413,
            "body_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let reply = h.post_json("/v1/runs", token, &body).await;
        assert_error_body(&reply, status, code);
    }
    for path in ["/v1/runs/not-a-run", "/v1/runs/..%2F..%2Fsecrets"] {
        let reply = h.get(path, token).await;
        assert_error_body(&reply, 404, "not_found");
    }
    assert_no_run(&h).await;
}
