//! The write to ServiceNow happens once, and only onto the record the approver saw: not over a
//! record someone changed since, not twice after an answer that hides whether it happened, and
//! not again when Steward restarts while the write is in flight.

use std::time::Duration;

use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;
use steward_tests::servicenow::WriteFault;
use steward_tests::{APPROVER, Harness, PostedMessage, Scenario, eventually};

/// Triggers a run and waits for its approval request.
async fn pending(h: &Harness) -> (steward_core::RunId, steward_tests::PostedMessage) {
    let run = h.trigger().await;
    (run, h.awaiting_approval(run).await)
}

async fn approve(h: &Harness, message: &steward_tests::PostedMessage) {
    let click = h.click(message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
}

/// Waits for the `n`th approval request (1-based) that names `run`.
async fn nth_request(h: &Harness, run: steward_core::RunId, n: usize) -> PostedMessage {
    let named = format!("Run {run}");
    eventually(&format!("approval request {n} for run {run}"), || async {
        let requests: Vec<PostedMessage> = h
            .slack
            .posted()
            .into_iter()
            .filter(|m| m.blocks.to_string().contains(&named))
            .collect();
        let found = requests.get(n - 1).cloned();
        if found.is_some() {
            h.wait_for_state(run, states::AWAITING_APPROVAL).await;
        }
        found
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_edited_after_the_approval_request_is_not_overwritten() {
    let h = Scenario::new().start().await;
    let (run, message) = pending(&h).await;
    h.servicenow.edit("urgency", "2");

    approve(&h, &message).await;
    let fresh = nth_request(&h, run, 2).await;
    assert!(h.servicenow.patches().await.is_empty(), "no PATCH");
    assert_eq!(
        h.servicenow.record()["urgency"],
        "2",
        "the person's edit stands"
    );
    let reproposed = h.step(run, "reproposed").await;
    let reason = reproposed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("urgency"),
        "the reason names the field: {reason}"
    );
    let updates = eventually("the outcome in Slack", || async {
        Some(h.slack.calls("chat.update").await).filter(|u| !u.is_empty())
    })
    .await;
    assert_eq!(updates[0]["ts"], message.ts.as_str());
    assert!(
        updates[0]["blocks"].to_string().contains("Not written"),
        "{}",
        updates[0]["blocks"]
    );
    assert!(
        fresh.blocks.to_string().contains("2"),
        "the fresh request shows the record as it is now: {}",
        fresh.blocks
    );

    // The old message's button no longer decides anything.
    let stale_click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(stale_click.status, 200);
    approve(&h, &fresh).await;
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    let patches = h.servicenow.patches().await;
    assert_eq!(patches.len(), 1, "exactly one write, of the fresh approval");
    assert_eq!(patches[0]["urgency"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_keeps_changing_ends_the_run_stale_without_a_write() {
    let h = Scenario::new().start().await;
    let (run, mut message) = pending(&h).await;
    for round in 1..=3 {
        h.servicenow
            .edit("urgency", if round % 2 == 1 { "2" } else { "3" });
        approve(&h, &message).await;
        if round < 3 {
            message = nth_request(&h, run, round + 1).await;
        }
    }
    let finished = h.finished(run).await;
    assert_eq!(finished.state, states::STALE, "{:?}", finished.last_error);
    assert!(h.servicenow.patches().await.is_empty(), "no PATCH");
    let reason = finished.last_error.unwrap_or_default();
    assert!(reason.contains("fresh proposals"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_with_502_after_it_was_applied_is_not_applied_twice() {
    let h = Scenario::new().start().await;
    let (run, message) = pending(&h).await;
    h.servicenow.inject(WriteFault::AppliedThenBadGateway);

    approve(&h, &message).await;
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    let journal = h.servicenow.journal();
    assert_eq!(
        journal.len(),
        1,
        "the work note is appended once, not once per attempt: {journal:#?}"
    );
    assert_eq!(
        h.servicenow.patches().await.len(),
        1,
        "after an answer that hides whether the write happened, the record is read back \
         before writing again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_write_is_in_flight_does_not_write_again() {
    let mut h = Scenario::new().start().await;
    let (run, message) = pending(&h).await;
    h.servicenow
        .inject(WriteFault::SlowAnswer(Duration::from_secs(5)));

    approve(&h, &message).await;
    eventually("the PATCH to reach ServiceNow", || async {
        (!h.servicenow.patches().await.is_empty()).then_some(())
    })
    .await;
    h.restart().await;

    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    assert_eq!(h.servicenow.patches().await.len(), 1, "one PATCH in all");
    assert_eq!(h.servicenow.journal().len(), 1, "one work note");
    let written = h.step(run, "written").await;
    assert_eq!(
        written["recovered"], true,
        "the write was learned by reading the record back"
    );
    let audit = h.server().store.verify_audit(&h.tenant.scope()).await;
    assert!(audit.expect("readable").first_bad.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expired_while_the_run_waited_is_renewed_and_the_write_happens_once() {
    let h = Scenario::new().start().await;
    let (run, message) = pending(&h).await;
    let signed_in = h.servicenow.token_requests().await;
    h.servicenow.expire_token();

    approve(&h, &message).await;
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );
    assert_eq!(
        h.servicenow.token_requests().await,
        signed_in + 1,
        "one new token"
    );
    assert_eq!(h.servicenow.patches().await.len(), 1);
    assert_eq!(h.servicenow.journal().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_servicenow_does_not_have_ends_the_run_failed_without_asking_anyone() {
    let h = Scenario::new().start().await;
    let body = steward_tests::webhook::incident_event(
        "0123456789abcdef0123456789abcdef",
        "INC0099999",
        "Printer on fire",
    );
    let reply = h.send(&h.delivery(body)).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let finished = h.finished(reply.run_id()).await;
    assert_eq!(finished.state, states::FAILED);
    let reason = finished.last_error.unwrap_or_default();
    assert!(reason.contains("reading the incident"), "{reason}");
    assert!(h.llm.requests().await.is_empty(), "the model saw nothing");
    assert!(h.slack.requests().await.is_empty());
    assert!(h.servicenow.patches().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_approvals_for_one_incident_only_the_first_is_written() {
    let h = Scenario::new().start().await;
    let first = h.trigger().await;
    let second = h.trigger().await;
    let first_message = h.awaiting_approval(first).await;
    let second_message = h.awaiting_approval(second).await;

    approve(&h, &first_message).await;
    assert_eq!(h.finished(first).await.state, states::COMPLETED);
    approve(&h, &second_message).await;
    // The second approval was for values the record no longer holds: nothing is written for
    // it, and the run asks again against the record as it is now.
    let fresh = nth_request(&h, second, 2).await;
    assert_eq!(h.servicenow.patches().await.len(), 1, "one PATCH");
    assert_eq!(h.servicenow.journal().len(), 1);
    assert!(
        h.steps(second).await.iter().any(|s| s.kind == "reproposed"),
        "the second run started over"
    );
    assert_ne!(fresh.ts, second_message.ts);
}
