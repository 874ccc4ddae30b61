//! The cap on live run actors: runs woken while every slot is taken wait their turn, lose
//! nothing, and a waiting run gives its slot up at once while slots are scarce.

use std::time::Duration;

use steward_actors::states;
use steward_adapters::slack::{APPROVE_ACTION, REJECT_ACTION};
use steward_tests::{APPROVER, Harness, Scenario, eventually};

/// How many run actors the inspected tree shows.
async fn live_runs(h: &Harness) -> usize {
    h.live_run_actors().await.len()
}

/// The value of an unlabelled gauge in the `/metrics` scrape.
async fn gauge(h: &Harness, name: &str) -> i64 {
    h.metric(name)
        .await
        .unwrap_or_else(|| panic!("{name} is not in the scrape"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_live_actor_allowed_a_burst_of_runs_all_reach_approval_and_end() {
    let h = Scenario::new().max_live_runs(1).start().await;
    let (a, b, c, d, e, f) = tokio::join!(
        h.trigger(),
        h.trigger(),
        h.trigger(),
        h.trigger(),
        h.trigger(),
        h.trigger()
    );
    let runs = [a, b, c, d, e, f];
    let mut requests = Vec::new();
    for run in &runs {
        requests.push(h.awaiting_approval(*run).await);
    }
    // The idle time is the default 30 s, but with every slot taken a run that waits stops its
    // actor at once.
    eventually("every waiting run to leave memory", || async {
        (live_runs(&h).await == 0).then_some(())
    })
    .await;
    assert_eq!(gauge(&h, "steward_run_actors_queued").await, 0);

    // The runs share one incident: the first is approved and written; the others, woken
    // together by their rejections, queue for the one slot and end one after another.
    let reply = h.click(&requests[0], APPROVE_ACTION, APPROVER).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    h.wait_for_state(runs[0], states::COMPLETED).await;
    let reject = |i: usize| h.click(&requests[i], REJECT_ACTION, APPROVER);
    let (b, c, d, e, f) = tokio::join!(reject(1), reject(2), reject(3), reject(4), reject(5));
    for reply in [b, c, d, e, f] {
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    for run in &runs[1..] {
        h.wait_for_state(*run, states::REJECTED).await;
    }
    assert_eq!(
        h.servicenow.patches().await.len(),
        1,
        "the approved run wrote once"
    );
    let (most_live, most_queued) = h.server().steward.live_runs().peaks();
    assert_eq!(most_live, 1, "never more than one run actor at once");
    assert!(most_queued >= 1, "runs were queued for the slot");
    eventually("the slots to be free again", || async {
        let live = gauge(&h, "steward_run_actors_live").await;
        let queued = gauge(&h, "steward_run_actors_queued").await;
        (live == 0 && queued == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_cap_a_waiting_run_keeps_its_actor_for_the_idle_time() {
    let h = Scenario::new().start().await;
    let run = h.trigger().await;
    h.awaiting_approval(run).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(live_runs(&h).await, 1, "the waiting run is still in memory");
    assert_eq!(gauge(&h, "steward_run_actors_live").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_queued_for_a_slot_when_its_tenant_reloads_goes_on_under_the_new_supervisor() {
    // Every triage takes a while, so a run at its triage holds the one slot long enough.
    let slow = steward_tests::llm::answering(&steward_tests::fixtures::triage().to_string())
        .set_delay(Duration::from_millis(1500));
    let h = Scenario::new()
        .max_live_runs(1)
        .provider_answers(slow)
        .start()
        .await;
    let waiting = h.trigger().await;
    let request = h.awaiting_approval(waiting).await;
    eventually("the waiting run to leave memory", || async {
        (live_runs(&h).await == 0).then_some(())
    })
    .await;

    // Another run takes the slot and stays at its triage; the approval wakes the waiting run,
    // which queues for the slot.
    let busy = h.trigger().await;
    eventually("the second run to ask the model", || async {
        (h.llm.requests().await.len() == 2).then_some(())
    })
    .await;
    let reply = h.click(&request, APPROVE_ACTION, APPROVER).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    eventually("the approved run to queue for the slot", || async {
        (gauge(&h, "steward_run_actors_queued").await == 1).then_some(())
    })
    .await;

    // The tenant's settings change: its supervisor stops with the run at its triage, and the
    // queued run, which the store shows as waiting for approval, must not be left behind.
    let tenant = h.tenant.id.clone();
    let reloaded = h.server().steward.reload_tenant(&tenant).await;
    assert_eq!(reloaded, Ok(true), "a supervisor was running");
    h.wait_for_state(waiting, states::COMPLETED).await;
    assert_eq!(h.servicenow.patches().await.len(), 1, "written once");
    h.awaiting_approval(busy).await;
    eventually("the slots to be free again", || async {
        let queued = gauge(&h, "steward_run_actors_queued").await;
        (queued == 0).then_some(())
    })
    .await;
}
