//! The incident-triage path end to end: a signed webhook, the model's proposal, the policy, a
//! Slack approval clicked by a person, and the ServiceNow writeback, or no writeback on Reject.

use std::collections::BTreeSet;

use serde_json::Value;
use steward_actors::states;
use steward_adapters::slack::{APPROVE_ACTION, REJECT_ACTION};
use steward_tests::fixtures::{self, MODEL_NOTE, NEW_GROUP};
use steward_tests::{APPROVER, Harness, Scenario, eventually};

fn keys(map: &serde_json::Map<String, Value>) -> BTreeSet<String> {
    map.keys().cloned().collect()
}

/// The fields of the diff the policy decided, as recorded in the run's journal.
async fn diff_fields(h: &Harness, run: steward_core::RunId) -> BTreeSet<String> {
    let decided = h.step(run, "policy_decided").await;
    decided["diff"]["entries"]
        .as_array()
        .expect("the diff has entries")
        .iter()
        .map(|e| e["field"].as_str().expect("a field name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_writes_exactly_the_approved_fields_once_and_reports_it_in_slack() {
    let h = Scenario::new().start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    assert_eq!(message.channel, h.tenant.channel);
    assert!(
        h.servicenow.patches().await.is_empty(),
        "nothing is written before approval"
    );
    // The approval notes the message that shows it, with the step that records the post.
    let approval_id = h.step(run, "policy_decided").await["approval_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("the decision opens an approval");
    let approval = h
        .server()
        .store
        .approval(&h.tenant.scope(), approval_id)
        .await
        .expect("the store answers")
        .expect("the approval exists");
    assert_eq!(
        (approval.channel.as_deref(), approval.message_ts.as_deref()),
        (Some(message.channel.as_str()), Some(message.ts.as_str()))
    );

    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );

    let patches = h.servicenow.patches().await;
    assert_eq!(patches.len(), 1, "exactly one PATCH: {patches:?}");
    let patch = &patches[0];
    let expected: BTreeSet<String> = ["assignment_group", "category", "urgency", "work_notes"]
        .map(String::from)
        .into();
    assert_eq!(
        keys(patch),
        expected,
        "only the approved fields are written"
    );
    assert_eq!(
        diff_fields(&h, run).await,
        expected,
        "the PATCH is the diff"
    );
    assert!(
        !patch.contains_key("priority"),
        "a denied field is never written"
    );
    assert_eq!(patch["category"], "software");
    assert_eq!(patch["urgency"], "1");
    assert_eq!(patch["assignment_group"], NEW_GROUP);
    let note = patch["work_notes"].as_str().expect("the work note is text");
    assert!(note.contains(&format!("[steward run {run}]")), "{note}");
    assert!(
        note.contains(APPROVER.name) && note.contains(APPROVER.id),
        "{note}"
    );
    assert!(note.contains(MODEL_NOTE), "{note}");

    let record = h.servicenow.record();
    assert_eq!(record["urgency"], "1");
    assert_eq!(record["priority"], "4", "priority keeps its value");
    assert_eq!(h.servicenow.journal().len(), 1, "one work-note entry");

    let updates = eventually("the outcome in Slack", || async {
        Some(h.slack.calls("chat.update").await).filter(|u| !u.is_empty())
    })
    .await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0]["channel"], message.channel.as_str());
    assert_eq!(updates[0]["ts"], message.ts.as_str());
    let blocks = updates[0]["blocks"].to_string();
    assert!(
        blocks.contains("and written to the incident"),
        "the update tells the outcome: {blocks}"
    );
    assert!(
        !blocks.contains(APPROVE_ACTION),
        "the buttons are gone once decided"
    );

    let audit = h
        .server()
        .store
        .verify_audit(&h.tenant.scope())
        .await
        .expect("the audit chain is readable");
    assert!(audit.first_bad.is_none(), "{:?}", audit.first_bad);
    assert!(
        audit.entries >= 9,
        "every step is audited: {}",
        audit.entries
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejecting_writes_nothing_and_reports_it_in_slack() {
    let h = Scenario::new().start().await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;

    let click = h.click(&message, REJECT_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::REJECTED,
        "{:?}",
        finished.last_error
    );
    // The step that ended the run removed the reminder, escalation and expiry with it.
    let timers = h
        .server()
        .store
        .timers(&h.tenant.scope(), run)
        .await
        .expect("the store answers");
    assert!(
        timers.is_empty(),
        "an ended run keeps no timers: {timers:?}"
    );

    assert!(h.servicenow.patches().await.is_empty(), "no PATCH at all");
    assert!(h.servicenow.journal().is_empty());
    assert_eq!(
        h.servicenow.record(),
        fixtures::incident(),
        "the record is untouched"
    );
    let updates = eventually("the outcome in Slack", || async {
        Some(h.slack.calls("chat.update").await).filter(|u| !u.is_empty())
    })
    .await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0]["ts"], message.ts.as_str());
    let blocks = updates[0]["blocks"].to_string();
    assert!(
        blocks.contains(&format!("Rejected by {}", APPROVER.name)),
        "{blocks}"
    );
    let verify = h.server().store.verify_audit(&h.tenant.scope()).await;
    assert!(verify.expect("readable").first_bad.is_none());
    h.shutdown().await;
}
