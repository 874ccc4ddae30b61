//! Budgets end to end, on a clock the test moves: a tenant's LLM call budget holds the run
//! that would spend past it before any request reaches the provider, and lets it go on when
//! the window opens; a webhook source's per-minute cap accepts every delivery and holds the
//! runs over the cap; budgets above the platform's limits are refused.

use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use steward_actors::states;
use steward_core::{FixedClock, RunId};
use steward_persistence::{NewToken, generate_api_token};
use steward_tests::{Harness, Scenario, eventually};

/// 10 minutes into an hour (2023-11-14T22:10:00Z), so the test's steps stay in one window.
const T0_SECS: i64 = 1_699_999_800;

async fn admin_token(h: &Harness) -> String {
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
        .issue_token(&h.tenant.scope(), token, "operator")
        .await
        .expect("a token is issued");
    value.expose_secret().to_owned()
}

async fn put_budgets(h: &Harness, token: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client")
        .put(format!("{}/v1/tenant/budgets", h.url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("Steward answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn start_at(clock: &FixedClock) -> Harness {
    Scenario::new().clock(Arc::new(clock.clone())).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_call_budget_of_two_holds_the_third_run_until_the_hour_turns() {
    let clock = FixedClock::at_secs(T0_SECS);
    let h = start_at(&clock).await;
    let admin = admin_token(&h).await;
    let (status, body) = put_budgets(&h, &admin, &json!({"llm_calls_per_hour": 2})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effective"]["llm_calls_per_hour"], 2);

    let mut reported = 0;
    for _ in 0..2 {
        let run = h.trigger().await;
        h.awaiting_approval(run).await;
        let usage = &h.step(run, "triaged").await["provenance"]["usage"];
        let tokens = usage["input_tokens"]
            .as_i64()
            .zip(usage["output_tokens"].as_i64());
        let (input, output) = tokens.expect("the triage records the provider's usage");
        reported += input + output;
    }
    assert_eq!(h.llm.requests().await.len(), 2);
    // Each triage reserved its completion cap of tokens, and settled to what the provider
    // reported with the step that recorded it.
    let usage = h.get("/v1/tenant/budgets", Some(&admin)).await;
    for meter in ["llm.tokens.hour", "llm.tokens.day"] {
        let window = usage.body["usage"]
            .as_array()
            .expect("usage")
            .iter()
            .find(|u| u["meter"] == meter)
            .cloned()
            .expect("the tokens are metered");
        assert!(reported > 0);
        assert_eq!(window["used"].as_i64(), Some(reported), "{meter}");
    }

    let third = h.trigger().await;
    let held = h.wait_for_state(third, states::PARKED).await;
    let reason = held.last_error.unwrap_or_default();
    assert!(
        reason.contains("LLM budget reached: 2 of 2 LLM calls this hour used")
            && reason.contains("23:00:00 UTC"),
        "the run says why it waits and until when: {reason}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        h.llm.requests().await.len(),
        2,
        "no request reaches the provider past the budget"
    );
    let step = h.step(third, "held").await;
    assert_eq!(step["gate"], "llm_budget");
    assert!(
        h.audit()
            .await
            .iter()
            .any(|e| e.kind == "run.held" && e.body.contains("llm_budget")),
        "the hold is audited"
    );
    let usage = h.get("/v1/tenant/budgets", Some(&admin)).await;
    let calls = usage.body["usage"]
        .as_array()
        .expect("usage")
        .iter()
        .find(|u| u["meter"] == "llm.calls.hour")
        .cloned()
        .expect("the hour's calls are metered");
    assert_eq!(
        (calls["used"].as_i64(), calls["refused"].as_i64()),
        (Some(2), Some(1))
    );

    clock.advance_millis(50 * 60 * 1000);
    h.awaiting_approval(third).await;
    assert_eq!(
        h.llm.requests().await.len(),
        3,
        "one more call, in the new hour"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_above_the_platform_limits_are_refused_with_the_limit() {
    let clock = FixedClock::at_secs(T0_SECS);
    let h = start_at(&clock).await;
    let admin = admin_token(&h).await;
    let (status, body) = put_budgets(
        &h,
        &admin,
        &json!({"llm_calls_per_hour": 10_000_000, "llm_tokens_per_day": 5}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`llm_calls_per_hour` is 10000000, above the platform limit of 10000"),
        "{message}"
    );
    let (status, _) = put_budgets(&h, &admin, &json!({"llm_calls": 5})).await;
    assert_eq!(status, 400, "unknown budgets are refused");
    let (status, _) = put_budgets(&h, &h.tenant.api_token, &json!({})).await;
    assert_eq!(status, 403, "budgets need the admin scope");
    let current = h.get("/v1/tenant/budgets", Some(&admin)).await;
    assert_eq!(current.body["budgets"], json!({}), "nothing was stored");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_over_the_source_cap_are_accepted_and_their_runs_wait_for_the_minute() {
    let clock = FixedClock::at_secs(T0_SECS);
    let h = start_at(&clock).await;
    let admin = admin_token(&h).await;
    let (status, body) = put_budgets(&h, &admin, &json!({"runs_per_source_per_minute": 2})).await;
    assert_eq!(status, 200, "{body}");

    let mut runs: Vec<RunId> = Vec::new();
    for _ in 0..4 {
        let reply = h.send(&h.delivery(h.incident_event())).await;
        assert_eq!(
            reply.status, 202,
            "every delivery is accepted: {}",
            reply.text
        );
        runs.push(reply.run_id());
    }
    let parked = eventually("two runs over the cap to be held", || async {
        let mut parked = Vec::new();
        let mut settled = 0;
        for run in &runs {
            let record = h.run(*run).await?;
            match record.state.as_str() {
                states::PARKED => parked.push(record),
                states::AWAITING_APPROVAL => settled += 1,
                _ => {}
            }
        }
        (parked.len() == 2 && settled == 2).then_some(parked)
    })
    .await;
    for record in &parked {
        let reason = record.last_error.clone().unwrap_or_default();
        assert!(
            reason.contains(
                "source cap reached: 2 of 2 runs started from source `servicenow` this minute"
            ),
            "{reason}"
        );
    }
    assert_eq!(h.runs().await.len(), 4, "no delivery was dropped");
    assert_eq!(h.llm.requests().await.len(), 2, "held runs did no work");

    clock.advance_millis(60 * 1000);
    eventually("every run to reach its approval", || async {
        let mut waiting = 0;
        for run in &runs {
            if h.run(*run).await?.state == states::AWAITING_APPROVAL {
                waiting += 1;
            }
        }
        (waiting == 4).then_some(())
    })
    .await;
    h.shutdown().await;
}
