//! Signed webhook intake: forged and altered deliveries are refused before anything happens,
//! the same delivery never starts a second run (at once, after a restart, or past five minutes),
//! signatures cover the exact bytes, and timestamp problems are told apart from bad signatures.

use std::sync::Arc;

use steward_actors::states;
use steward_adapters::webhook::WebhookSecret;
use steward_core::{Clock, FixedClock, SystemClock};
use steward_tests::{Delivery, Harness, Reply, SOURCE, Scenario};

/// Waits until the run asks for approval, so every outside call it makes before that is done.
async fn settle(h: &Harness, reply: &Reply) {
    h.wait_for_state(reply.run_id(), states::AWAITING_APPROVAL)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_altered_delivery_is_refused_and_starts_nothing() {
    let h = Scenario::new().start().await;
    let body = h.incident_event();

    let forged = Delivery::new(&WebhookSecret::generate(), h.now_secs(), body.clone());
    let reply = h.send(&forged).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.error_code(), "signature_mismatch");

    let mut altered = h.delivery(body);
    let at = altered.body.len() - 3;
    altered.body[at] ^= 0x01;
    let reply = h.send(&altered).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.error_code(), "signature_mismatch");

    let mut other_id = h.delivery(h.incident_event());
    other_id.id.push('x');
    assert_eq!(h.send(&other_id).await.status, 401, "the id is signed too");

    assert!(h.runs().await.is_empty(), "no run was created");
    assert!(
        h.llm.requests().await.is_empty(),
        "the model was not called"
    );
    assert!(h.servicenow.requests().await.is_empty());
    assert!(h.audit().await.is_empty(), "nothing was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_delivery_names_the_first_run_and_starts_no_other() {
    let h = Scenario::new().start().await;
    let delivery = h.delivery(h.incident_event());

    let first = h.send(&delivery).await;
    assert_eq!(first.status, 202, "{}", first.text);
    let second = h.send(&delivery).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.run_id(), first.run_id());
    assert_eq!(second.body["status"], "duplicate");

    settle(&h, &first).await;
    assert_eq!(h.runs().await.len(), 1);
    assert_eq!(h.llm.requests().await.len(), 1, "one model call");
    assert_eq!(h.slack.posted().len(), 1, "one approval request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_id_at_two_tenants_makes_a_run_for_each() {
    let h = Scenario::new().start().await;
    let ours = h.delivery(h.incident_event());
    let theirs = Delivery::signed(&h.other.whsec, &ours.id, h.now_secs(), ours.body.clone());
    let a = h.send(&ours).await;
    let b = h.send_to(h.other.id.as_str(), SOURCE, &theirs).await;
    assert_eq!((a.status, b.status), (202, 202), "{} / {}", a.text, b.text);
    assert_ne!(a.run_id(), b.run_id());
    assert_eq!(h.runs().await.len(), 1, "one run is the main tenant's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_identical_deliveries_at_once_on_two_connections_make_one_run() {
    let h = Scenario::new().start().await;
    let delivery = h.delivery(h.incident_event());
    let (a, b) = tokio::join!(h.send_fresh(&delivery), h.send_fresh(&delivery));

    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 202], "{} / {}", a.text, b.text);
    assert_eq!(a.run_id(), b.run_id(), "both answers name the same run");
    settle(&h, &a).await;
    assert_eq!(h.runs().await.len(), 1);
    assert_eq!(h.llm.requests().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_restart_names_the_run_from_before() {
    let mut h = Scenario::new().start().await;
    let delivery = h.delivery(h.incident_event());
    let first = h.send(&delivery).await;
    assert_eq!(first.status, 202, "{}", first.text);
    settle(&h, &first).await;

    h.restart().await;
    let again = h.send(&h.redelivery(&delivery)).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.run_id(), first.run_id());
    assert_eq!(h.runs().await.len(), 1);
    assert_eq!(h.llm.requests().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_five_minutes_and_one_second_later_names_the_same_run() {
    let clock = FixedClock::at_secs(SystemClock.now_secs());
    let h = Scenario::new().clock(Arc::new(clock.clone())).start().await;
    let delivery = h.delivery(h.incident_event());
    let first = h.send(&delivery).await;
    assert_eq!(first.status, 202, "{}", first.text);
    settle(&h, &first).await;

    clock.advance_millis(60_000);
    let retry = h.send(&h.redelivery(&delivery)).await;
    assert_eq!((retry.status, retry.run_id()), (200, first.run_id()));
    clock.advance_millis(241_000);
    let last = h.redelivery(&delivery);
    assert_ne!(last.timestamp, delivery.timestamp, "signed at the new time");
    let retry = h.send(&last).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.run_id(), first.run_id());
    assert_eq!(h.runs().await.len(), 1);
    assert_eq!(h.llm.requests().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_covers_the_exact_bytes_received() {
    let h = Scenario::new().start().await;
    let raw = format!(
        "{{ \"event\" :\"incident.created\" ,\n\t\"incident\" : {{\"sys_id\":  \"{}\",\
         \"number\":\"{}\", \"short_description\" : \"Caf\\u00e9 checkout \\u00e9choue\" }}  }}\n",
        steward_tests::fixtures::SYS_ID,
        steward_tests::fixtures::NUMBER
    )
    .into_bytes();
    let delivery = h.delivery(raw.clone());
    let reply = h.send(&delivery).await;
    assert_eq!(
        reply.status, 202,
        "unusual spacing and escapes verify: {}",
        reply.text
    );

    let parsed: serde_json::Value = serde_json::from_slice(&raw).expect("the body is JSON");
    let reserialized = serde_json::to_vec(&parsed).expect("serializes");
    assert_ne!(reserialized, raw);
    let mut same_json = h.delivery(reserialized);
    same_json.signature.clone_from(&delivery.signature);
    same_json.timestamp.clone_from(&delivery.timestamp);
    same_json.id.clone_from(&delivery.id);
    let reply = h.send(&same_json).await;
    assert_eq!(reply.status, 401, "equal JSON is not the signed bytes");
    assert_eq!(reply.error_code(), "signature_mismatch");

    let empty = h.delivery(Vec::new());
    let reply = h.send(&empty).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.error_code(), "empty_body");
    assert_eq!(
        h.runs().await.len(),
        1,
        "only the first delivery made a run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_timestamp_is_reported_apart_from_a_bad_signature_with_the_skew() {
    let clock = FixedClock::at_secs(1_760_000_000);
    let h = Scenario::new().clock(Arc::new(clock.clone())).start().await;
    let now = h.now_secs();
    let whsec = h.tenant.whsec.clone();
    let body = h.incident_event();

    let forged = Delivery::new(&WebhookSecret::generate(), now, body.clone());
    let bad_signature = h.send(&forged).await;
    assert_eq!(bad_signature.status, 401);
    assert_eq!(bad_signature.error_code(), "signature_mismatch");

    let cases: [(Delivery, &str, &str); 5] = [
        (
            Delivery::new(&whsec, now - 301, body.clone()),
            "timestamp_out_of_tolerance",
            "301 s old",
        ),
        (
            Delivery::new(&whsec, now + 301, body.clone()),
            "timestamp_out_of_tolerance",
            "301 s in the future",
        ),
        (
            Delivery::new(&whsec, now * 1000, body.clone()),
            "timestamp_out_of_tolerance",
            "milliseconds",
        ),
        (
            Delivery::new(&whsec, -now, body.clone()),
            "timestamp_malformed",
            "timestamp",
        ),
        (
            Delivery::with_raw_timestamp(&whsec, "NaN", body.clone()),
            "timestamp_malformed",
            "timestamp",
        ),
    ];
    for (delivery, code, says) in cases {
        let reply = h.send(&delivery).await;
        let ts = &delivery.timestamp;
        assert_eq!(reply.status, 401, "timestamp {ts}: {}", reply.text);
        assert_eq!(reply.error_code(), code, "timestamp {ts}: {}", reply.text);
        assert_ne!(reply.error_code(), bad_signature.error_code());
        assert!(
            reply.message().contains(says),
            "timestamp {ts}: {}",
            reply.message()
        );
    }
    for edge in [now - 300, now + 300] {
        let reply = h.send(&Delivery::new(&whsec, edge, body.clone())).await;
        assert_eq!(reply.status, 202, "±300 s still passes: {}", reply.text);
    }
    assert_eq!(
        h.runs().await.len(),
        2,
        "only the two in-tolerance deliveries made runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_header_with_several_signatures_verifies_if_one_matches() {
    let h = Scenario::new().start().await;
    let mut delivery = h.delivery(h.incident_event());
    let retired = Delivery::signed(
        &WebhookSecret::generate(),
        &delivery.id,
        h.now_secs(),
        delivery.body.clone(),
    );
    delivery.signature = format!(
        "v1a,c29tZXRoaW5nIGVsc2U= {} {}",
        retired.signature, delivery.signature
    );
    let reply = h.send(&delivery).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_id_that_cannot_be_a_key_is_refused() {
    let h = Scenario::new().start().await;
    let whsec = h.tenant.whsec.clone();
    let body = h.incident_event();
    for id in [
        "x".repeat(257),
        "msg one".to_owned(),
        "msg_\u{e9}t\u{e9}".to_owned(),
    ] {
        let delivery = Delivery::signed(&whsec, &id, h.now_secs(), body.clone());
        let reply = h.send(&delivery).await;
        assert_eq!(reply.status, 401, "{id:?}: {}", reply.text);
    }
    let mut no_id = h.delivery(body);
    no_id.id.clear();
    let reply = h.send(&no_id).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.error_code(), "missing_header");
    assert!(h.runs().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_naming_the_incident_only_by_number_starts_a_run_for_it() {
    let h = Scenario::new().start().await;
    let body = serde_json::json!({"incident": {"number": steward_tests::fixtures::NUMBER}});
    let reply = h.send(&h.delivery(body.to_string().into_bytes())).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let run = reply.run_id();
    h.wait_for_state(run, states::AWAITING_APPROVAL).await;
    let fetched = h.step(run, "incident_fetched").await;
    assert_eq!(
        fetched["incident"]["sys_id"],
        steward_tests::fixtures::SYS_ID
    );
}
