//! Slack approvals: durable across a restart, decided once however often the button is pressed,
//! refused visibly and audibly for anyone who may not decide, and always answered within Slack's
//! three seconds.

use std::time::Duration;

use serde_json::json;
use steward_actors::states;
use steward_adapters::slack::{APPROVE_ACTION, OPEN_INCIDENT_ACTION, REJECT_ACTION};
use steward_tests::{
    APPROVER, Delivery, Harness, OUTSIDER, Person, Reply, SOURCE, Scenario, eventually,
};
use wiremock::ResponseTemplate;

/// Slack shows the person an error when the callback is not answered within this.
const SLACK_ACK: Duration = Duration::from_secs(3);

fn assert_acknowledged(click: &Reply) {
    assert_eq!(click.status, 200, "{}", click.text);
    assert!(
        click.elapsed < SLACK_ACK,
        "the click was answered after {:?}",
        click.elapsed
    );
}

/// Waits for the ephemeral message told to `who`.
async fn told(h: &Harness, who: Person) -> serde_json::Value {
    eventually(&format!("an ephemeral message to {}", who.id), || async {
        h.slack
            .calls("chat.postEphemeral")
            .await
            .into_iter()
            .find(|m| m["user"] == who.id)
    })
    .await
}

async fn audit_kinds(h: &Harness, kind: &str) -> Vec<steward_persistence::AuditEntry> {
    h.audit()
        .await
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_click_after_a_restart_decides_once_and_writes_once() {
    let mut h = Scenario::new().start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;

    h.restart().await;
    let (first, second) = tokio::join!(
        h.click(&message, APPROVE_ACTION, APPROVER),
        h.click(&message, APPROVE_ACTION, APPROVER)
    );
    assert_acknowledged(&first);
    assert_acknowledged(&second);

    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    assert_eq!(h.servicenow.patches().await.len(), 1, "one PATCH");
    let decisions = h
        .steps(run)
        .await
        .into_iter()
        .filter(|s| s.kind == "approval_decided")
        .count();
    assert_eq!(decisions, 1, "one decision in the journal");
    assert_eq!(audit_kinds(&h, "run.approval_decided").await.len(), 1);
    let ignored = told(&h, APPROVER).await;
    assert!(
        ignored["text"]
            .as_str()
            .unwrap_or_default()
            .contains("already"),
        "the second click is told it changed nothing: {ignored}"
    );
    assert_eq!(
        h.llm.requests().await.len(),
        1,
        "the run did not start over"
    );
    assert_eq!(h.slack.posted().len(), 1, "one approval request");
    for kind in ["run.triaged", "run.approval_requested", "run.written"] {
        let entries = audit_kinds(&h, kind).await;
        assert_eq!(entries.len(), 1, "the audit log shows one {kind}");
        assert_eq!(entries[0].run_id, Some(run));
    }
    let audit = h.server().store.verify_audit(&h.tenant.scope()).await;
    assert!(audit.expect("readable").first_bad.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_by_someone_who_is_not_an_approver_is_refused_visibly_and_audited() {
    let h = Scenario::new().start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;

    let click = h.click(&message, APPROVE_ACTION, OUTSIDER).await;
    assert_acknowledged(&click);
    let refusal = told(&h, OUTSIDER).await;
    assert_eq!(refusal["channel"], message.channel.as_str());
    assert!(
        refusal["text"]
            .as_str()
            .unwrap_or_default()
            .contains("not an approver"),
        "{refusal}"
    );
    let refused = audit_kinds(&h, "approval.refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].actor, format!("slack:{}", OUTSIDER.id));

    let pending = h.run(run).await.expect("the run exists");
    assert_eq!(
        pending.state,
        states::AWAITING_APPROVAL,
        "the click decided nothing"
    );
    assert!(
        h.servicenow.patches().await.is_empty(),
        "nothing was written"
    );
    assert!(h.slack.calls("chat.update").await.is_empty());
    assert!(audit_kinds(&h, "run.approval_decided").await.is_empty());

    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_acknowledged(&click);
    assert_eq!(h.finished(run).await.state, states::COMPLETED);
    assert_eq!(h.servicenow.patches().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_who_asked_for_a_run_may_not_approve_it() {
    let h = Scenario::new().start().await;
    let body = json!({
        "incident": {"sys_id": steward_tests::fixtures::SYS_ID},
        "requester_slack": APPROVER.id,
    });
    let created = h
        .post_json("/v1/runs", Some(&h.tenant.api_token), &body)
        .await;
    assert_eq!(created.status, 202, "{}", created.text);
    let run = created.run_id();
    let message = h.awaiting_approval(run).await;

    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_acknowledged(&click);
    let refusal = told(&h, APPROVER).await;
    assert!(
        refusal["text"]
            .as_str()
            .unwrap_or_default()
            .contains("may not approve"),
        "{refusal}"
    );
    assert_eq!(audit_kinds(&h, "approval.refused").await.len(), 1);
    let pending = h.run(run).await.expect("the run exists");
    assert_eq!(pending.state, states::AWAITING_APPROVAL);
    assert!(h.servicenow.patches().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_the_message_of_a_finished_run_changes_nothing() {
    let h = Scenario::new().start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    assert_acknowledged(&h.click(&message, REJECT_ACTION, APPROVER).await);
    assert_eq!(h.finished(run).await.state, states::REJECTED);

    let late = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_acknowledged(&late);
    let told = told(&h, APPROVER).await;
    assert!(
        told["text"]
            .as_str()
            .unwrap_or_default()
            .contains("already"),
        "{told}"
    );
    assert_eq!(audit_kinds(&h, "approval.refused").await.len(), 1);
    assert_eq!(h.run(run).await.expect("the run").state, states::REJECTED);
    assert!(
        h.servicenow.patches().await.is_empty(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_decide_another_tenants_approval() {
    let h = Scenario::new().start().await;
    let theirs = Delivery::new(&h.other.whsec, h.now_secs(), h.incident_event());
    let created = h.send_to(h.other.id.as_str(), SOURCE, &theirs).await;
    assert_eq!(created.status, 202, "{}", created.text);
    let their_run = created.run_id();
    let message = h.approval_request().await;
    assert_eq!(message.channel, h.other.channel);
    let other_scope = h.other.scope();
    let store = &h.server().store;
    let waiting = eventually("the other tenant's run to wait for approval", || async {
        store
            .run(&other_scope, their_run)
            .await
            .expect("the store answers")
            .filter(|r| r.state == states::AWAITING_APPROVAL)
    })
    .await;

    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_acknowledged(&click);
    let refusal = told(&h, APPROVER).await;
    assert!(
        refusal["text"]
            .as_str()
            .unwrap_or_default()
            .contains("does not know"),
        "{refusal}"
    );
    let still = store
        .run(&other_scope, their_run)
        .await
        .expect("the store answers")
        .expect("the run exists");
    assert_eq!(
        still.state,
        states::AWAITING_APPROVAL,
        "the other tenant's run is untouched"
    );
    assert_eq!(still.steps, waiting.steps);
    assert!(h.servicenow.patches().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_before_slack_has_answered_the_post_still_shows_the_outcome_in_slack() {
    let h = Scenario::new().start().await;
    h.slack.slow_posts(Duration::from_millis(800));
    let run = h.trigger().await;
    let message = h.approval_request().await;
    assert_acknowledged(&h.click(&message, REJECT_ACTION, APPROVER).await);

    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::REJECTED,
        "{:?}",
        finished.last_error
    );
    assert!(h.servicenow.patches().await.is_empty());
    let requested = h
        .steps(run)
        .await
        .into_iter()
        .filter(|s| s.kind == "approval_requested")
        .count();
    assert_eq!(
        requested, 1,
        "the journal names the message that was posted"
    );
    let updates = eventually("the outcome in Slack", || async {
        Some(h.slack.calls("chat.update").await).filter(|u| !u.is_empty())
    })
    .await;
    assert_eq!(
        updates[0]["ts"],
        message.ts.as_str(),
        "the posted message is updated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_the_open_incident_link_decides_nothing() {
    let h = Scenario::new().start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    let click = h.click(&message, OPEN_INCIDENT_ACTION, APPROVER).await;
    assert_acknowledged(&click);
    assert_eq!(
        h.run(run).await.expect("the run").state,
        states::AWAITING_APPROVAL
    );
    assert!(audit_kinds(&h, "run.approval_decided").await.is_empty());
    assert!(h.slack.calls("chat.postEphemeral").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_refusal_to_post_ends_the_run_failed_without_retrying_or_writing() {
    let h = Scenario::new().start().await;
    h.slack
        .answer_posts_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": false, "error": "channel_not_found"})),
        )
        .await;
    let run = h.trigger().await;
    let finished = h.finished(run).await;
    assert_eq!(finished.state, states::FAILED);
    let reason = finished.last_error.unwrap_or_default();
    assert!(reason.contains("channel_not_found"), "{reason}");
    assert_eq!(
        h.slack.calls("chat.postMessage").await.len(),
        1,
        "not retried"
    );
    assert!(h.servicenow.patches().await.is_empty());
}
