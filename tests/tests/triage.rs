//! What the model answers decides nothing by itself: a proposal of only denied fields ends the
//! run before Slack is asked, and a reply that is not a valid proposal ends it `failed` after a
//! bounded number of attempts, with no approval request and no write.

use steward_actors::states;
use steward_tests::llm::error;
use steward_tests::{Harness, Scenario, eventually, fixtures};

/// The retry policy's attempts for one step, the first included.
const MAX_ATTEMPTS: usize = 3;

async fn assert_nothing_reached_slack_or_servicenow(h: &Harness) {
    assert!(h.slack.requests().await.is_empty(), "no Slack call at all");
    assert!(h.servicenow.patches().await.is_empty(), "no PATCH");
    assert_eq!(h.servicenow.record(), fixtures::incident());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_of_only_denied_fields_ends_the_run_denied_without_asking_anyone() {
    let h = Scenario::new()
        .proposing(fixtures::proposal(
            "Resolve the incident and raise its priority.",
            &[("state", "7"), ("priority", "1")],
        ))
        .start()
        .await;
    let run = h.trigger().await;
    let finished = h.finished(run).await;
    assert_eq!(finished.state, states::DENIED, "{:?}", finished.last_error);
    assert_eq!(h.llm.requests().await.len(), 1);
    assert_nothing_reached_slack_or_servicenow(&h).await;
    let decided = h.steps(run).await;
    assert!(
        decided.iter().all(|s| s.kind != "approval_requested"),
        "no approval was requested"
    );
}

async fn assert_invalid_reply_fails_the_run(content: &str) {
    let h = Scenario::new().model_answers(content).start().await;
    let run = h.trigger().await;
    let finished = h.finished(run).await;
    assert_eq!(finished.state, states::FAILED);
    let reason = finished.last_error.unwrap_or_default();
    assert!(
        reason.contains("reply"),
        "the reason names the reply: {reason}"
    );
    assert!(reason.contains("no proposal"), "{reason}");
    let calls = h.llm.requests().await.len();
    assert!(
        (1..=MAX_ATTEMPTS).contains(&calls),
        "{calls} model requests for one run"
    );
    assert!(
        h.steps(run).await.iter().all(|s| s.kind != "triaged"),
        "no proposal was recorded"
    );
    assert_nothing_reached_slack_or_servicenow(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_is_not_json_fails_the_run_after_bounded_attempts() {
    let prose = format!(
        "Sure! Here is my triage:\n```json\n{}\n```",
        fixtures::triage()
    );
    assert_invalid_reply_fails_the_run(&prose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_a_property_the_schema_lacks_fails_the_run() {
    let mut reply = fixtures::triage();
    reply["confidence"] = serde_json::json!("high");
    assert_invalid_reply_fails_the_run(&reply.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_with_a_property_the_schema_lacks_fails_the_run() {
    let mut reply = fixtures::triage();
    reply["changes"][0]["approved_by"] = serde_json::json!("CAB");
    assert_invalid_reply_fails_the_run(&reply.to_string()).await;
}

/// Runs one incident against a provider that always answers `answer`; returns how many requests
/// it received and why the run failed.
async fn against_failing_provider(answer: wiremock::ResponseTemplate) -> (usize, String) {
    let h = Scenario::new().provider_answers(answer).start().await;
    let run = h.trigger().await;
    let finished = h.finished(run).await;
    assert_eq!(finished.state, states::FAILED);
    assert_nothing_reached_slack_or_servicenow(&h).await;
    (
        h.llm.requests().await.len(),
        finished.last_error.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_always_rate_limits_gets_a_bounded_number_of_requests() {
    let limited = error(
        429,
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3.",
    )
    .insert_header("retry-after", "0");
    let (calls, reason) = against_failing_provider(limited).await;
    assert!(
        (2..=MAX_ATTEMPTS).contains(&calls),
        "a rate limit is retried, within the bound: {calls} requests"
    );
    assert!(reason.contains("rate limit"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_from_the_provider_are_not_retried() {
    let refused_key = error(
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-e2e-***.",
    );
    let (calls, reason) = against_failing_provider(refused_key).await;
    assert_eq!(calls, 1, "a refused key is asked once");
    assert!(reason.contains("401"), "{reason}");

    let no_quota = error(
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    );
    let (calls, reason) = against_failing_provider(no_quota).await;
    assert_eq!(calls, 1, "an exhausted quota is asked once");
    assert!(reason.contains("quota"), "{reason}");
}

/// The fields named in the model's request as the ones it may propose: those the tenant's
/// policy lets a run write at all.
fn allowed_fields_told(request: &wiremock::Request) -> Vec<String> {
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("a JSON request");
    let messages = body["messages"].as_array().expect("messages");
    let user = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .expect("a user message");
    let line = user
        .lines()
        .find_map(|l| l.strip_prefix("Allowed fields: "))
        .expect("the allowed fields line");
    serde_json::from_str(line).expect("a JSON list of names")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_is_told_the_fields_the_policy_lets_the_run_write() {
    let h = Scenario::new()
        .tenant_settings(|s| {
            s.policy = Some(
                r#"
                permit (principal, action == Steward::Action::"write_without_approval", resource)
                when { resource.name == "priority" };
                forbid (principal, action, resource)
                when { resource.name == "category" && context.old_value == "inquiry" };
                "#
                .to_owned(),
            );
        })
        .start()
        .await;
    h.trigger().await;
    let first = eventually("the model to be asked", || async {
        h.llm.requests().await.into_iter().next()
    })
    .await;
    // The defaults allow assignment_group, category, urgency and work_notes with approval;
    // an empty urgency is no known level, and this incident's category is forbidden.
    assert_eq!(
        allowed_fields_told(&first),
        ["assignment_group", "priority", "work_notes"]
    );
}
