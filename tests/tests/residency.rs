//! A deployment serves one region. A request naming a tenant homed in the other region is
//! refused with `421` and that region's base URL (when known) before anything of it is read or
//! stored: a tenant id names its home region, so no lookup in the other region is needed.

use steward_tests::{Harness, SOURCE, Scenario};

async fn assert_misdirected(reply: &steward_tests::Reply) {
    assert_eq!(reply.status, 421, "{}", reply.text);
    assert_eq!(reply.error_code(), "misdirected", "{}", reply.text);
    assert!(reply.message().contains("region eu"), "{}", reply.text);
}

async fn stored(h: &Harness) -> (usize, usize) {
    (h.runs().await.len(), h.audit().await.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_for_a_tenant_of_the_other_region_is_421_and_stores_nothing() {
    let h = Scenario::new().start().await;
    let before = stored(&h).await;

    let delivery = h.delivery(h.incident_event());
    let reply = h.send_to("eu-acme", SOURCE, &delivery).await;
    assert_misdirected(&reply).await;

    let now = h.now_secs().to_string();
    let click = h
        .slack_callback("eu-acme", b"payload=%7B%7D".to_vec(), &now, "v0=00")
        .await;
    assert_misdirected(&click).await;

    assert_eq!(
        stored(&h).await,
        before,
        "nothing of either request was stored"
    );

    // The home region's own tenants are served as before.
    let run = h.trigger().await;
    assert!(h.run(run).await.is_some());
}
