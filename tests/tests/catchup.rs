//! The ServiceNow catch-up pass, end to end: incident changes Steward missed while it was down
//! get exactly one run each after it starts again; a change that also arrived by webhook, and
//! Steward's own writeback, start none; the list is read page by page; a 429's `Retry-After`
//! is waited out; and a malformed, oversized or hostile answer fails the pass without moving
//! the watermark or starting a run.

use std::time::{Duration, Instant};

use steward_actors::catchup::CatchupOptions;
use steward_adapters::servicenow::format_time;
use steward_adapters::slack::APPROVE_ACTION;
use steward_core::{Clock, RunId, SystemClock};
use steward_persistence::{CatchupWatermark, RunRecord};
use steward_tests::servicenow::ListFault;
use steward_tests::{APPROVER, Harness, Scenario, eventually, fixtures};

/// One pass at startup and, unless `every` says otherwise, none until the next boot.
fn options(every: Duration) -> CatchupOptions {
    CatchupOptions {
        every,
        ..CatchupOptions::default()
    }
}

async fn start(every: Duration) -> Harness {
    Scenario::new().catchup(options(every)).start().await
}

/// A sys_id of 32 lowercase hex digits for incident `i`.
fn sys_id(i: usize) -> String {
    format!("{i:032x}")
}

fn number(i: usize) -> String {
    format!("INC{:07}", 20_000 + i)
}

/// `secs_ago` seconds ago in ServiceNow's format.
fn ago(secs_ago: i64) -> String {
    format_time(SystemClock.now_millis() - secs_ago * 1000).expect("a time after 1970")
}

async fn watermark(h: &Harness) -> Option<CatchupWatermark> {
    h.server()
        .store
        .catchup_watermark(&h.tenant.scope())
        .await
        .expect("the store answers")
}

/// Waits until a catch-up pass for the main tenant has finished since Steward booted (its
/// counter shows, once the pass's runs and audit entry are written) and returns the watermark.
/// Passes over many incidents take a while on a busy machine, so this waits longer than
/// [`eventually`].
async fn pass_done(h: &Harness) -> CatchupWatermark {
    let deadline = Instant::now() + Duration::from_secs(60);
    while series(h, "steward_catchup_runs_started").await.is_none() {
        assert!(Instant::now() < deadline, "no catch-up pass finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watermark(h).await.expect("a pass leaves a watermark")
}

/// Every run of the main tenant.
async fn all_runs(h: &Harness) -> Vec<RunRecord> {
    let mut runs = Vec::new();
    let mut before: Option<RunId> = None;
    loop {
        let page = h
            .server()
            .store
            .list_runs(&h.tenant.scope(), 200, before)
            .await
            .expect("the store answers");
        before = page.last().map(|r| r.id);
        let done = page.len() < 200;
        runs.extend(page);
        if done {
            return runs;
        }
    }
}

async fn runs_for(h: &Harness, sys_id: &str, number: &str) -> usize {
    all_runs(h)
        .await
        .iter()
        .filter(|r| {
            let value = r.incident.as_str();
            value == sys_id || value == number
        })
        .count()
}

/// A counter's value for the main tenant in `GET /metrics` since boot; None when absent.
async fn series(h: &Harness, name: &str) -> Option<u64> {
    h.metric(&format!("{name}_total{{tenant=\"{}\"}}", h.tenant.id))
        .await
}

/// A gauge's value for the main tenant in `GET /metrics`; None when absent.
async fn gauge(h: &Harness, name: &str) -> Option<i64> {
    h.metric(&format!("{name}{{tenant=\"{}\"}}", h.tenant.id))
        .await
}

/// A counter's value for the main tenant; 0 when absent.
async fn counter(h: &Harness, name: &str) -> u64 {
    series(h, name).await.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_steward_was_down_get_exactly_one_run_each() {
    let mut h = start(Duration::from_secs(3600)).await;
    let first = pass_done(&h).await;
    let lookback = SystemClock.now_millis() - first.updated_ms;
    assert!(
        (23 * 3600 * 1000..=24 * 3600 * 1000 + 60_000).contains(&lookback),
        "a new tenant looks back 24 h, not at the whole history: {lookback} ms"
    );
    assert!(all_runs(&h).await.is_empty(), "nothing changed yet");

    let times: Vec<String> = (0..3).map(|i| ago(60 - i)).collect();
    for (i, at) in times.iter().enumerate() {
        h.servicenow.add_incident(&sys_id(i), &number(i), at);
    }
    h.restart().await;
    pass_done(&h).await;
    let runs = all_runs(&h).await;
    assert_eq!(runs.len(), 3);
    for i in 0..3 {
        assert_eq!(
            runs_for(&h, &sys_id(i), &number(i)).await,
            1,
            "incident {i}"
        );
    }
    let run = runs
        .iter()
        .find(|r| r.incident.as_str() == sys_id(0))
        .unwrap();
    assert_eq!(
        run.delivery_id.as_deref(),
        Some(format!("catchup:{}:{}", sys_id(0), times[0]).as_str())
    );
    let audit = h.audit().await;
    let pass = audit
        .iter()
        .find(|e| e.kind == "catchup.pass")
        .expect("the pass is audited");
    assert!(pass.body.contains("\"started\":3"), "{}", pass.body);
    assert_eq!(counter(&h, "steward_catchup_runs_started").await, 3);

    // The same changes, met again by the next passes, start nothing more.
    for _ in 0..2 {
        h.restart().await;
        pass_done(&h).await;
    }
    assert_eq!(all_runs(&h).await.len(), 3);
    assert_eq!(counter(&h, "steward_catchup_runs_started").await, 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_also_came_by_webhook_gets_one_run() {
    let mut h = start(Duration::from_secs(3600)).await;
    pass_done(&h).await;
    h.servicenow.edit("urgency", "1");
    let run = h.trigger().await;
    h.restart().await;
    pass_done(&h).await;
    assert_eq!(
        runs_for(&h, fixtures::SYS_ID, fixtures::NUMBER).await,
        1,
        "the webhook's run covers the change"
    );
    assert_eq!(all_runs(&h).await[0].id, run);
    assert!(h.audit().await.iter().all(|e| e.kind != "catchup.pass"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stewards_own_writeback_starts_no_run() {
    let mut h = start(Duration::from_secs(3600)).await;
    pass_done(&h).await;
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    // The write lands in a later second than the run's creation, so only the written step,
    // not the run's creation time, can tell the pass that this update is Steward's own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
    h.finished(run).await;
    assert_eq!(h.servicenow.patches().await.len(), 1, "Steward wrote");
    let updated = h.servicenow.record()["sys_updated_on"].clone();
    assert_ne!(updated, fixtures::incident()["sys_updated_on"]);

    h.restart().await;
    let w = pass_done(&h).await;
    assert!(
        w.sys_ids.iter().any(|s| s == fixtures::SYS_ID),
        "the pass met the written incident: {w:?}"
    );
    assert_eq!(runs_for(&h, fixtures::SYS_ID, fixtures::NUMBER).await, 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_changes_are_read_page_by_page() {
    let mut h = start(Duration::from_secs(3600)).await;
    pass_done(&h).await;
    // Five changes a second, so pages end in the middle of a second.
    for i in 0..250 {
        h.servicenow
            .add_incident(&sys_id(i + 1), &number(i), &ago(300 - (i / 5) as i64));
    }
    let before = h.servicenow.list_requests().await.len();
    h.restart().await;
    pass_done(&h).await;
    let runs = all_runs(&h).await;
    assert_eq!(runs.len(), 250);
    let mut ids: Vec<&str> = runs.iter().map(|r| r.incident.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 250, "one run per incident");
    let requests = h.servicenow.list_requests().await;
    let ours = &requests[before..];
    assert!(ours.len() >= 3, "at least three pages for the tenant");
    let param = |r: &Vec<(String, String)>, name: &str| {
        r.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    for r in ours {
        assert_eq!(param(r, "sysparm_limit").as_deref(), Some("100"));
        assert!(param(r, "sysparm_offset").is_some());
        assert_eq!(param(r, "sysparm_display_value").as_deref(), Some("false"));
        let query = param(r, "sysparm_query").unwrap();
        assert!(
            query.ends_with("^ORDERBYsys_updated_on^ORDERBYsys_id"),
            "{query}"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_waited_out_as_retry_after_says() {
    let mut h = start(Duration::from_secs(3600)).await;
    pass_done(&h).await;
    h.servicenow.add_incident(&sys_id(7), &number(7), &ago(30));
    h.servicenow.fail_list(Some(ListFault::RateLimitedOnce {
        retry_after_secs: 2,
    }));
    let started = Instant::now();
    h.restart().await;
    pass_done(&h).await;
    assert_eq!(runs_for(&h, &sys_id(7), &number(7)).await, 1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the pass waited {:?}",
        started.elapsed()
    );
    assert_eq!(counter(&h, "steward_catchup_pass_failures").await, 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_answer_fails_the_pass_and_moves_nothing() {
    let h = start(Duration::from_millis(300)).await;
    let before = pass_done(&h).await;
    // The instance answers badly before the change exists, so no pass can meet it early.
    h.servicenow
        .fail_list(Some(ListFault::Body(b"{\"result\": [".to_vec())));
    h.servicenow.add_incident(&sys_id(9), &number(9), &ago(20));
    let good_id = sys_id(9);
    let row = |updated: &str| {
        format!(
            r#"{{"result":[{{"sys_id":"{good_id}","number":"INC9","sys_updated_on":{updated}}}]}}"#
        )
    };
    let mut huge = br#"{"result":[{"sys_id":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    huge.extend(br#"","number":"INC9","sys_updated_on":"2026-01-01 00:00:00"}]}"#);
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"result\": [".to_vec(),
        b"<html>Instance is hibernating</html>".to_vec(),
        br#"{"result":{"sys_id":"x"}}"#.to_vec(),
        row("1767225600").into_bytes(),
        row("\"2026/01/01 00:00:00\"").into_bytes(),
        row("\"2026-01-01T00:00:00Z\"").into_bytes(),
        format!(
            r#"{{"result":[{{"sys_id":7,"number":"INC9","sys_updated_on":"{}"}}]}}"#,
            ago(5)
        )
        .into_bytes(),
        huge,
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        h.servicenow.fail_list(Some(ListFault::Body(body)));
        let failures = counter(&h, "steward_catchup_pass_failures").await;
        eventually(&format!("hostile answer {i} to fail a pass"), || async {
            (counter(&h, "steward_catchup_pass_failures").await > failures).then_some(())
        })
        .await;
        let now = watermark(&h).await.unwrap();
        assert_eq!(
            (now.updated_ms, now.sys_ids.clone()),
            (before.updated_ms, before.sys_ids.clone()),
            "answer {i} moved the watermark"
        );
        assert!(all_runs(&h).await.is_empty(), "answer {i} started a run");
    }
    assert_eq!(counter(&h, "steward_catchup_runs_started").await, 0);
    let in_a_row = gauge(&h, "steward_catchup_consecutive_failures").await;
    assert!(
        in_a_row.is_some_and(|n| n >= 8),
        "every failed pass in a row counts: {in_a_row:?}"
    );

    // Once the instance answers properly again, the change is not lost.
    h.servicenow.fail_list(None);
    eventually("the change's run", || async {
        (runs_for(&h, &sys_id(9), &number(9)).await == 1).then_some(())
    })
    .await;
    eventually("the watermark to move", || async {
        watermark(&h)
            .await
            .filter(|w| w.updated_ms > before.updated_ms)
    })
    .await;
    eventually("a finished pass to end the run of failures", || async {
        (gauge(&h, "steward_catchup_consecutive_failures").await == Some(0)).then_some(())
    })
    .await;
    h.shutdown().await;
}

/// A webhook body for incident `i` that carries the record's `sys_updated_on`.
fn event_with_update(i: usize, updated_on: &str) -> Vec<u8> {
    serde_json::json!({
        "event": "incident.updated",
        "incident": {"sys_id": sys_id(i), "number": number(i), "sys_updated_on": updated_on},
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivered_after_the_pass_handled_its_change_is_a_copy() {
    let mut h = start(Duration::from_secs(3600)).await;
    pass_done(&h).await;
    let changed = ago(30);
    h.servicenow.add_incident(&sys_id(7), &number(7), &changed);
    // Steward was down when the change was made; the sender's webhook comes late, after the
    // catch-up pass at startup started a run for the change.
    h.restart().await;
    pass_done(&h).await;
    assert_eq!(runs_for(&h, &sys_id(7), &number(7)).await, 1);
    let caught = all_runs(&h).await[0].id;

    let late = h.delivery(event_with_update(7, &changed));
    let reply = h.send(&late).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.run_id(), caught, "the copy names the pass's run");
    let again = h.send(&h.redelivery(&late)).await;
    assert_eq!((again.status, again.run_id()), (200, caught));
    assert_eq!(runs_for(&h, &sys_id(7), &number(7)).await, 1);

    // A later change of the same incident is a change of its own.
    let later =
        format_time(steward_adapters::servicenow::parse_time(&changed).unwrap() + 5_000).unwrap();
    let reply = h.send(&h.delivery(event_with_update(7, &later))).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_ne!(reply.run_id(), caught);
    // A body whose update time is not one cannot be matched to a change: it starts a run,
    // as any delivery does, and loses nothing.
    for odd in ["yesterday", "2026-02-30 10:00:00", ""] {
        let reply = h.send(&h.delivery(event_with_update(7, odd))).await;
        assert_eq!(reply.status, 202, "{odd:?}: {reply:?}");
    }
    assert_eq!(runs_for(&h, &sys_id(7), &number(7)).await, 5);
    h.shutdown().await;
}
