//! Who may approve is the tenant's policy: approver groups mapped from Slack user ids, the
//! two-person rule for sensitive changes, the requester who never approves (matched across
//! Slack and ServiceNow), and changes the policy lets apply without anyone. Every click the
//! policy refuses is audited with the policies behind it, and nothing is written for it.

use serde_json::Value;
use steward_actors::settings::PersonLink;
use steward_actors::{TenantSettings, states};
use steward_adapters::slack::{APPROVE_ACTION, REJECT_ACTION};
use steward_tests::{
    APPROVER, Harness, NETWORK_LEAD, Person, PostedMessage, SECOND_APPROVER, Scenario, eventually,
};

/// The ServiceNow user who opened the incident in the requester scenarios.
const OPENER: &str = "6816f79cc0a8016401c5a33be04be441";

async fn told(h: &Harness, who: Person, containing: &str) -> Value {
    eventually(
        &format!("an ephemeral message to {} saying {containing:?}", who.id),
        || async {
            h.slack
                .calls("chat.postEphemeral")
                .await
                .into_iter()
                .find(|m| m["user"] == who.id && m["text"].to_string().contains(containing))
        },
    )
    .await
}

async fn refusals(h: &Harness) -> Vec<Value> {
    h.audit()
        .await
        .into_iter()
        .filter(|e| e.kind == "approval.refused")
        .map(|e| serde_json::from_str(&e.body).expect("audit bodies are JSON"))
        .collect()
}

async fn click_ok(h: &Harness, message: &PostedMessage, action: &str, who: Person) {
    let reply = h.click(message, action, who).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

fn two_person_urgency(s: &mut TenantSettings) {
    s.slack.approvers = vec![APPROVER.id.into(), SECOND_APPROVER.id.into()];
    s.policy = Some(
        r#"
        @id("p1-urgency-needs-two")
        permit (principal, action == Steward::Action::"require_second_approver", resource)
        when { resource.name == "urgency" && context.value == "1" };
        "#
        .into(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_person_rule_needs_two_different_approvers() {
    let h = Scenario::new()
        .tenant_settings(two_person_urgency)
        .start()
        .await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    let decided = h.step(run, "policy_decided").await;
    assert_eq!(decided["approvers_required"], 2, "{decided}");

    click_ok(&h, &message, APPROVE_ACTION, APPROVER).await;
    told(&h, APPROVER, "needs 1 more approval").await;
    click_ok(&h, &message, APPROVE_ACTION, APPROVER).await;
    told(&h, APPROVER, "approved this already").await;
    assert_eq!(
        h.run(run).await.expect("the run").state,
        states::AWAITING_APPROVAL,
        "one person's two clicks are one approval"
    );
    assert!(
        h.servicenow.patches().await.is_empty(),
        "nothing written yet"
    );
    let votes: Vec<_> = h
        .audit()
        .await
        .into_iter()
        .filter(|e| e.kind == "run.approval_voted")
        .collect();
    assert_eq!(votes.len(), 1);
    assert!(
        refusals(&h)
            .await
            .iter()
            .any(|r| r["reason"] == "already_voted")
    );

    click_ok(&h, &message, APPROVE_ACTION, SECOND_APPROVER).await;
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    let patches = h.servicenow.patches().await;
    assert_eq!(patches.len(), 1, "one write");
    let note = patches[0]["work_notes"].as_str().unwrap_or_default();
    assert!(
        note.contains(APPROVER.name) && note.contains(SECOND_APPROVER.name),
        "the work note names both approvers: {note}"
    );
    let decided = h
        .audit()
        .await
        .into_iter()
        .find(|e| e.kind == "run.approval_decided")
        .expect("the decision is audited");
    assert!(decided.body.contains(APPROVER.id) && decided.body.contains(SECOND_APPROVER.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_does_not_apply_to_changes_outside_it() {
    fn policy(s: &mut TenantSettings) {
        two_person_urgency(s);
        s.policy = s.policy.take().map(|p| p.replace(r#"== "1""#, r#"== "2""#));
    }
    let h = Scenario::new().tenant_settings(policy).start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    click_ok(&h, &message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(h.finished(run).await.state, states::COMPLETED);
}

fn network_leads(s: &mut TenantSettings) {
    s.slack
        .approver_groups
        .insert("network-leads".into(), vec![NETWORK_LEAD.id.into()]);
    s.policy = Some(
        r#"
        @id("leads-approve")
        permit (principal in Steward::Group::"network-leads",
                action == Steward::Action::"approve", resource);
        @id("reassignment-needs-a-network-lead")
        forbid (principal, action == Steward::Action::"approve", resource)
        when { resource.name == "assignment_group" }
        unless { principal in Steward::Group::"network-leads" };
        "#
        .into(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_group_the_policy_requires_decides_and_others_are_refused() {
    let h = Scenario::new().tenant_settings(network_leads).start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;

    click_ok(&h, &message, APPROVE_ACTION, APPROVER).await;
    told(&h, APPROVER, "not an approver for this change").await;
    let refused = eventually("the refusal in the audit log", || async {
        refusals(&h)
            .await
            .into_iter()
            .find(|r| r["reason"] == "not_allowed")
    })
    .await;
    assert_eq!(
        refused["policies"][0], "reassignment-needs-a-network-lead",
        "{refused}"
    );
    assert!(h.servicenow.patches().await.is_empty());

    click_ok(&h, &message, APPROVE_ACTION, NETWORK_LEAD).await;
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    assert_eq!(h.servicenow.patches().await.len(), 1);
}

fn opener_is_the_approver(s: &mut TenantSettings) {
    s.slack.people = vec![PersonLink {
        slack_user: APPROVER.id.into(),
        servicenow_user: Some(OPENER.into()),
        token_labels: vec![],
    }];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_who_opened_the_incident_may_not_approve_it_but_may_withdraw_it() {
    let h = Scenario::new()
        .incident_field("opened_by", OPENER)
        .tenant_settings(opener_is_the_approver)
        .start()
        .await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;

    click_ok(&h, &message, APPROVE_ACTION, APPROVER).await;
    told(&h, APPROVER, "may not approve").await;
    eventually("the refusal in the audit log", || async {
        refusals(&h)
            .await
            .into_iter()
            .find(|r| r["reason"] == "requester_may_not_approve")
    })
    .await;
    assert_eq!(
        h.run(run).await.expect("the run").state,
        states::AWAITING_APPROVAL
    );

    click_ok(&h, &message, REJECT_ACTION, APPROVER).await;
    assert_eq!(h.finished(run).await.state, states::REJECTED);
    assert!(h.servicenow.patches().await.is_empty(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_policy_lets_apply_is_written_without_asking_anyone() {
    fn auto(s: &mut TenantSettings) {
        s.policy = Some(
            r#"
            @id("auto-apply-triage")
            permit (principal, action == Steward::Action::"write_without_approval", resource)
            when { ["work_notes", "category", "urgency", "assignment_group"]
                   .contains(resource.name) };
            "#
            .into(),
        );
    }
    let h = Scenario::new().tenant_settings(auto).start().await;
    let run = h.trigger().await;
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    assert!(
        h.slack.calls("chat.postMessage").await.is_empty(),
        "no approval request"
    );
    let patches = h.servicenow.patches().await;
    assert_eq!(patches.len(), 1);
    assert!(
        patches[0].get("priority").is_none(),
        "denied fields stay out"
    );
    let decided = h.step(run, "policy_decided").await;
    assert_eq!(decided["needs_approval"], false);
    let audited = h
        .audit()
        .await
        .into_iter()
        .find(|e| e.kind == "run.policy_decided")
        .expect("the decision is audited");
    assert!(
        audited.body.contains("auto-apply-triage"),
        "the audit names the policy: {}",
        audited.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_a_message_that_does_not_carry_the_request_is_refused() {
    let h = Scenario::new().start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    let mut elsewhere = message.clone();
    elsewhere.ts = "1700000123.000999".into();

    click_ok(&h, &elsewhere, APPROVE_ACTION, APPROVER).await;
    told(&h, APPROVER, "not the current request").await;
    assert_eq!(
        h.run(run).await.expect("the run").state,
        states::AWAITING_APPROVAL
    );
    click_ok(&h, &message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(h.finished(run).await.state, states::COMPLETED);
    assert!(
        refusals(&h)
            .await
            .iter()
            .any(|r| r["reason"] == "not_the_current_request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_of_the_api_token_that_started_a_run_may_not_approve_it() {
    fn token_holder(s: &mut TenantSettings) {
        // The configured token's label is `config`; the tenant says it is Ana's.
        s.slack.people = vec![PersonLink {
            slack_user: APPROVER.id.into(),
            servicenow_user: None,
            token_labels: vec!["config".into()],
        }];
    }
    let h = Scenario::new().tenant_settings(token_holder).start().await;
    let body = serde_json::json!({"incident": {"sys_id": steward_tests::fixtures::SYS_ID}});
    let created = h
        .post_json("/v1/runs", Some(&h.tenant.api_token), &body)
        .await;
    assert_eq!(created.status, 202, "{}", created.text);
    let run = created.run_id();
    let message = h.awaiting_approval(run).await;

    click_ok(&h, &message, APPROVE_ACTION, APPROVER).await;
    told(&h, APPROVER, "may not approve").await;
    assert_eq!(
        h.run(run).await.expect("the run").state,
        states::AWAITING_APPROVAL
    );
    assert!(h.servicenow.patches().await.is_empty());
}
