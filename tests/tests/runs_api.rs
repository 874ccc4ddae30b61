//! The runs API: a run started with a token takes the same path as a webhook's, can be read back
//! with its journal, and the tenant's runs list newest first in pages.

use serde_json::{Value, json};
use steward_actors::states;
use steward_core::RunId;
use steward_tests::fixtures::{NUMBER, SYS_ID};
use steward_tests::{Harness, Reply, Scenario, eventually};

async fn start_run(h: &Harness, incident: Value) -> Reply {
    let reply = h
        .post_json(
            "/v1/runs",
            Some(&h.tenant.api_token),
            &json!({ "incident": incident }),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply
}

fn ids(page: &Reply) -> Vec<String> {
    page.body["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("a page of runs: {}", page.text))
        .iter()
        .map(|r| r["id"].as_str().expect("a run id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_through_the_api_asks_for_approval_and_reads_back_with_its_steps() {
    let h = Scenario::new().start().await;
    let run = start_run(&h, json!({"sys_id": SYS_ID})).await.run_id();
    let message = h.awaiting_approval(run).await;
    assert_eq!(message.channel, h.tenant.channel);

    let shown = h
        .get(&format!("/v1/runs/{run}"), Some(&h.tenant.api_token))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.text);
    assert_eq!(shown.body["run"]["id"], run.to_string());
    assert_eq!(shown.body["run"]["state"], states::AWAITING_APPROVAL);
    assert_eq!(shown.body["run"]["trigger"]["kind"], "api");
    let kinds: Vec<&str> = shown.body["steps"]
        .as_array()
        .expect("the run's steps")
        .iter()
        .map(|s| s["kind"].as_str().expect("a step kind"))
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
    assert_eq!(
        shown.body["steps"][4]["body"]["ts"],
        message.ts.as_str(),
        "the journal names the posted message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_can_name_its_incident_by_number() {
    let h = Scenario::new().start().await;
    let run = start_run(&h, json!({"number": NUMBER})).await.run_id();
    h.approval_request().await;
    let fetched = h.step(run, "incident_fetched").await;
    assert_eq!(fetched["incident"]["sys_id"], SYS_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_newest_first_and_page_with_before() {
    let h = Scenario::new().start().await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(
            start_run(&h, json!({"sys_id": SYS_ID}))
                .await
                .run_id()
                .to_string(),
        );
    }
    let token = Some(h.tenant.api_token.as_str());

    let all = h.get("/v1/runs", token).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all.body["next"], Value::Null, "one page holds them all");

    let first = h.get("/v1/runs?limit=2", token).await;
    assert_eq!(ids(&first), newest_first[..2]);
    let next = first.body["next"].as_str().expect("a next cursor");
    assert_eq!(next, newest_first[1]);
    let second = h
        .get(&format!("/v1/runs?limit=2&before={next}"), token)
        .await;
    assert_eq!(ids(&second), newest_first[2..]);
    assert_eq!(second.body["next"], Value::Null);

    let bad = h.get("/v1/runs?before=yesterday", token).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    eventually("every run to ask for approval", || async {
        (h.slack.posted().len() == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_names_the_same_run() {
    let h = Scenario::new().start().await;
    let token = h.tenant.api_token.clone();
    let body = json!({"incident": {"sys_id": SYS_ID}});
    let send = || async {
        let request = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a client")
            .post(format!("{}/v1/runs", h.url()))
            .bearer_auth(&token)
            .header("idempotency-key", "change-4711")
            .json(&body);
        let response = request.send().await.expect("Steward answers");
        let status = response.status().as_u16();
        let value: Value = response.json().await.expect("JSON");
        (
            status,
            RunId::parse(value["run_id"].as_str().expect("a run id")).expect("an id"),
        )
    };
    let (first_status, first) = send().await;
    let (second_status, second) = send().await;
    assert_eq!((first_status, second_status), (202, 200));
    assert_eq!(first, second);
    assert_eq!(h.runs().await.len(), 1);
}
