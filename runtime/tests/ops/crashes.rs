//! A run whose actor fails every time it starts: each crash leaves a redacted crash snapshot,
//! the actor is restarted within the restart budget, then the run ends `failed` with its
//! snapshots kept, while a sibling run of the same tenant goes on to completion.

use serde_json::json;
use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;

use crate::support::{HOSTILE_KIND, Ops, decision};

/// Secrets an incident may carry in its text, which a crash snapshot must not keep.
const LEAKED_BOT_TOKEN: &str = "xoxb-2222-3333-LeakedInTheIncident";
const LEAKED_PASSWORD: &str = "Hunter2-vendor-pass";

#[tokio::test]
async fn a_crashing_run_leaves_redacted_snapshots_and_ends_failed_while_its_sibling_goes_on() {
    let ops = Ops::start().await;
    let doomed = ops
        .waiting_run(json!({
            "number": "INC0031337",
            "description": format!("the bot token {LEAKED_BOT_TOKEN} was pasted here"),
            "u_vendor_password": LEAKED_PASSWORD,
        }))
        .await;
    let sibling = ops.waiting_run(json!({})).await;

    let failed = ops.crash_until_failed(doomed).await;
    let reason = failed.last_error.unwrap();
    assert!(
        reason.contains("crashed 4 times; restart budget spent"),
        "{reason}"
    );

    let crashes = ops
        .server
        .store
        .crashes(&ops.scope(), doomed)
        .await
        .unwrap();
    let attempts: Vec<u32> = crashes.iter().map(|c| c.attempt).collect();
    assert_eq!(
        attempts,
        [1, 2, 3, 4],
        "3 restarts, then the budget is spent"
    );
    for crash in &crashes {
        assert!(crash.error.contains("unknown variant"), "{}", crash.error);
        assert!(crash.error.contains(HOSTILE_KIND), "{}", crash.error);
        assert_eq!(crash.message, "reload");
        assert_eq!(
            crash.step, "await_approval",
            "where the readable journal leads"
        );
        assert_eq!(crash.journal_offset, 5);
        assert_eq!(crash.state["incident"]["number"], "INC0031337");
        let text = crash.state.to_string();
        assert!(
            !text.contains(LEAKED_BOT_TOKEN) && !text.contains(LEAKED_PASSWORD),
            "{text}"
        );
        assert!(text.contains("xoxb-[redacted]"), "{text}");
    }
    let audit = ops
        .server
        .store
        .run_audit(&ops.scope(), doomed)
        .await
        .unwrap();
    assert_eq!(audit.iter().filter(|a| a.kind == "run.crashed").count(), 4);

    // The ops API shows them, and the journal as unreadable; a retry cannot help it.
    let (_, detail) = ops.ops_get(&format!("/v1/ops/runs/{doomed}")).await;
    assert_eq!(detail["crashes"].as_array().unwrap().len(), 4);
    assert!(
        detail["state_error"]
            .as_str()
            .unwrap()
            .contains("unknown variant")
    );
    let (status, body) = ops
        .ops_post(&format!("/v1/ops/runs/{doomed}/retry"), &decision("try it"))
        .await;
    assert_eq!(status, 409);
    assert!(
        body["message"].as_str().unwrap().contains("cannot be read"),
        "{body}"
    );

    // The tenant and the sibling are untouched: the sibling is approved and completes.
    assert_eq!(ops.run(sibling).await.state, states::AWAITING_APPROVAL);
    let (status, _) = ops.click(sibling, APPROVE_ACTION).await;
    assert_eq!(status, 200);
    ops.wait_state(sibling, states::COMPLETED).await;
    assert!(
        ops.server
            .store
            .crashes(&ops.scope(), sibling)
            .await
            .unwrap()
            .is_empty()
    );
    let chain = ops.server.store.verify_audit(&ops.scope()).await.unwrap();
    assert!(chain.first_bad.is_none());
}
