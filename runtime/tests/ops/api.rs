//! The ops API over HTTP: who may call it, the live tree, runs listed and inspected, retry and
//! cancel, hostile input.

use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;
use steward_core::RunId;
use steward_runtime::standins::{LlmScript, StandinSettings};

use crate::support::{OPS_TOKEN, Ops, TENANT, TENANT_TOKEN, decision, eventually};

const GETS: &[&str] = &["/v1/ops/actors", "/v1/ops/runs"];

#[tokio::test]
async fn the_ops_api_refuses_no_token_a_wrong_token_and_a_tenant_token() {
    let ops = Ops::start().await;
    let run = ops.start_run(&ops.seed(json!({}))).await;
    let detail = format!("/v1/ops/runs/{run}");
    for path in GETS.iter().copied().chain([detail.as_str()]) {
        assert_eq!(ops.get_as(path, None).await.0, 401, "{path}");
        let (status, body) = ops
            .get_as(path, Some("ops-test-token-wrong-0123456789"))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthenticated"))
        );
        let (status, body) = ops.get_as(path, Some(TENANT_TOKEN)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
        assert_eq!(ops.get_as(path, Some(&"x".repeat(10_000))).await.0, 401);
        // Past the server's head limit (16 KiB), the request never reaches a handler.
        assert_eq!(ops.get_as(path, Some(&"x".repeat(100_000))).await.0, 431);
        assert_eq!(ops.ops_get(path).await.0, 200, "{path}");
    }
    for action in ["retry", "cancel"] {
        let path = format!("/v1/ops/runs/{run}/{action}");
        let body = decision("because");
        assert_eq!(ops.post_as(&path, None, &body).await.0, 401);
        assert_eq!(ops.post_as(&path, Some(TENANT_TOKEN), &body).await.0, 403);
    }
    // The operator token is no tenant token either.
    assert_eq!(ops.get_as("/v1/runs", Some(OPS_TOKEN)).await.0, 401);
}

fn find<'a>(view: &'a Value, kind: &str, id: &str) -> Option<&'a Value> {
    if view["kind"] == kind && view["id"] == id {
        return Some(view);
    }
    view["children"]
        .as_array()?
        .iter()
        .find_map(|c| find(c, kind, id))
}

#[tokio::test]
async fn the_tree_shows_the_tenant_its_adapters_and_its_waiting_run() {
    let ops = Ops::start().await;
    let run = ops.waiting_run(json!({})).await;
    let (status, body) = ops.ops_get("/v1/ops/actors").await;
    assert_eq!(status, 200);
    let root = &body["tree"];
    assert_eq!(
        (root["kind"].as_str(), root["state"].as_str()),
        (Some("root"), Some("running"))
    );
    assert!(root["uptime_ms"].as_u64().is_some());
    let tenant = find(root, "tenant", TENANT).expect("the tenant is live");
    assert_eq!(tenant["state"], "running");
    for adapter in ["llm", "servicenow", "slack"] {
        let a = find(tenant, "adapter", adapter).unwrap_or_else(|| panic!("{adapter}"));
        assert_eq!(a["state"], "running");
        assert_eq!(a["backlog"], 0, "{adapter} has nothing queued");
        assert_eq!(a["restarts"], 0);
    }
    let waiting = tenant["waiting"].as_array().unwrap();
    let entry = waiting
        .iter()
        .find(|w| w["run_id"] == run.to_string())
        .expect("the passivated run is listed as waiting");
    assert_eq!(entry["state"], states::AWAITING_APPROVAL);
    let waits_on = entry["waits_on"].as_str().unwrap();
    assert!(
        waits_on.starts_with("approval ") && waits_on.contains("C0OPSAPPR01"),
        "{waits_on}"
    );
}

#[tokio::test]
async fn a_run_is_inspected_with_its_journal_state_and_audit() {
    let ops = Ops::start().await;
    let run = ops.waiting_run(json!({})).await;
    let (status, body) = ops.ops_get(&format!("/v1/ops/runs/{run}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["run"]["tenant"], TENANT);
    let kinds: Vec<&str> = body["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "received",
            "incident_fetched",
            "triaged",
            "policy_decided",
            "approval_requested"
        ]
    );
    assert!(body["state"]["approval_id"].is_string());
    assert!(body["state_error"].is_null());
    assert_eq!(body["crashes"], json!([]));
    let audit = body["audit"].as_array().unwrap();
    assert!(audit.len() >= 5);
    assert!(audit.iter().all(|a| a["body"].is_object()));
    assert_eq!(audit[0]["kind"], "run.received");
}

#[tokio::test]
async fn bad_run_ids_are_not_found() {
    let ops = Ops::start().await;
    let unknown = RunId::new();
    for path in [
        format!("/v1/ops/runs/{unknown}"),
        "/v1/ops/runs/not-a-run".into(),
        "/v1/ops/runs/%00".into(),
        format!("/v1/ops/runs/{}", "9".repeat(5000)),
        "/v1/ops/runs/..%2F..%2Fetc%2Fpasswd".into(),
    ] {
        assert_eq!(ops.ops_get(&path).await.0, 404, "{path}");
    }
    let (status, _) = ops
        .ops_post(&format!("/v1/ops/runs/{unknown}/retry"), &decision("r"))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn runs_are_listed_across_tenants_with_filters_and_hostile_filters_are_refused() {
    let ops = Ops::start().await;
    let run = ops.waiting_run(json!({ "number": "INC0424242" })).await;
    let listed = |body: &Value| -> Vec<String> {
        body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let id = run.to_string();
    for query in [
        "",
        "?state=awaiting_approval",
        "?state=failed,awaiting_approval",
        "?source=api",
        "?tenant=us-opsdemo",
        "?number=INC0424242",
        "?since=0",
        "?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z",
    ] {
        let (status, body) = ops.ops_get(&format!("/v1/ops/runs{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(listed(&body), std::slice::from_ref(&id), "{query}");
        assert!(
            body["runs"][0].get("trigger").is_none(),
            "a listing leaves the trigger out"
        );
    }
    for query in [
        "?state=completed",
        "?source=servicenow",
        "?tenant=eu-other",
        "?number=INC0000001",
        "?until=0",
    ] {
        let (_, body) = ops.ops_get(&format!("/v1/ops/runs{query}")).await;
        assert!(listed(&body).is_empty(), "{query}");
    }
    let long = format!("?number=INC{}", "1".repeat(300));
    for query in [
        "?state=%00",
        "?number=INC%25",
        "?number=%27%20OR%201%3D1",
        "?source=Bad%20Source",
        "?since=yesterday",
        "?since=10&until=5",
        "?tenant=xx-nope",
        "?before=nope",
        "?limit=lots",
        "?colour=red",
        long.as_str(),
    ] {
        let (status, body) = ops.ops_get(&format!("/v1/ops/runs{query}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{query}"
        );
    }
}

#[tokio::test]
async fn a_failed_run_is_retried_from_the_step_it_failed_at() {
    let ops = Ops::start().await;
    ops.standins
        .set_llm_reply(LlmScript::Refusal("I cannot help with that.".into()));
    let run = ops.start_run(&ops.seed(json!({}))).await;
    let failed = ops.wait_state(run, states::FAILED).await;
    assert!(failed.last_error.unwrap().contains("triage"));
    let path = format!("/v1/ops/runs/{run}/retry");

    // Hostile or malformed decisions are refused and change nothing.
    let too_long = json!({ "reason": "r".repeat(1001), "operator": "ana" });
    assert_eq!(ops.ops_post(&path, &too_long).await.0, 422);
    let huge = json!({ "reason": "r".repeat(100_000), "operator": "ana" });
    assert_eq!(ops.ops_post(&path, &huge).await.0, 413);
    let bad_name = json!({ "reason": "r", "operator": "<script>" });
    assert_eq!(ops.ops_post(&path, &bad_name).await.0, 422);
    let extra = json!({ "reason": "r", "operator": "ana", "force": true });
    assert_eq!(ops.ops_post(&path, &extra).await.0, 400);
    assert_eq!(ops.ops_post(&path, &json!("not an object")).await.0, 400);
    assert_eq!(ops.run(run).await.state, states::FAILED);

    ops.standins
        .set_llm_reply(StandinSettings::default().llm_reply);
    let (status, body) = ops.ops_post(&path, &decision("the provider is back")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["action"], "retried");
    assert_eq!(body["previous_state"], states::FAILED);
    assert_eq!(body["step"], "triage");
    ops.wait_state(run, states::AWAITING_APPROVAL).await;

    let (_, detail) = ops.ops_get(&format!("/v1/ops/runs/{run}")).await;
    let kinds: Vec<&str> = detail["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "incident_fetched").count(),
        1,
        "no refetch"
    );
    assert!(kinds.contains(&"retried"), "{kinds:?}");
    let retried = detail["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "run.retried")
        .expect("the retry is audited");
    assert_eq!(retried["actor"], "operator:ana.lima");
    assert_eq!(retried["body"]["reason"], "the provider is back");

    // Only a failed run may be retried.
    let (status, body) = ops.ops_post(&path, &decision("again")).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
}

#[tokio::test]
async fn a_cancel_ends_a_waiting_run_closes_its_approval_and_updates_its_message() {
    let ops = Ops::start().await;
    let run = ops.waiting_run(json!({})).await;
    let before = ops.message_of(run).await;
    let path = format!("/v1/ops/runs/{run}/cancel");
    let (status, body) = ops
        .ops_post(&path, &decision("duplicate of INC0010002"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["previous_state"].as_str(), body["state"].as_str()),
        (Some(states::AWAITING_APPROVAL), Some(states::CANCELLED))
    );
    let record = ops.run(run).await;
    assert_eq!(record.state, states::CANCELLED);
    assert!(record.last_error.unwrap().contains("operator:ana.lima"));

    let message = ops.message_of(run).await;
    assert!(message.text.contains("cancelled"), "{}", message.text);
    assert!(
        !message.blocks.to_string().contains(APPROVE_ACTION),
        "the buttons are gone"
    );
    // A click on the message as it was before is refused, and the clicker is told.
    let (status, _) = ops.click_on(&before, APPROVE_ACTION).await;
    assert_eq!(status, 200);
    eventually(|| {
        ops.standins
            .ephemerals()
            .iter()
            .any(|e| e.to_string().contains("already expired"))
    })
    .await;
    assert_eq!(ops.run(run).await.state, states::CANCELLED);

    let (_, detail) = ops.ops_get(&format!("/v1/ops/runs/{run}")).await;
    let cancelled = detail["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "run.cancelled")
        .expect("the cancel is audited");
    assert_eq!(cancelled["actor"], "operator:ana.lima");

    for again in ["cancel", "retry"] {
        let (status, _) = ops
            .ops_post(&format!("/v1/ops/runs/{run}/{again}"), &decision("again"))
            .await;
        assert_eq!(status, 409, "{again}");
    }
    let audit = ops.server.store.verify_audit(&ops.scope()).await.unwrap();
    assert!(audit.first_bad.is_none());
}
