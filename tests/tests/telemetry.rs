//! OpenTelemetry export end to end: the flagship run, started by a webhook carrying a W3C
//! `traceparent`, is exported over OTLP/HTTP to a collector stand-in as spans of the caller's
//! trace: the request's span, a span per run step with the run's attributes, and the adapter
//! calls under them; nothing exported names a secret or the incident's text. A malformed
//! `traceparent` is ignored.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;
use steward_tests::otlp::{Collector, ReceivedSpan};
use steward_tests::{APPROVER, Scenario, fixtures, llm, servicenow, slack};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Upper-case hex: not a valid `traceparent`.
const MALFORMED: &str = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";

fn steps_of<'a>(spans: &'a [ReceivedSpan], run: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.name == "run.step" && s.attr("steward.run_id") == Some(run))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagship_run_is_exported_under_the_callers_trace() {
    let collector = Collector::start().await;
    let h = Scenario::new()
        .otlp_endpoint(&collector.url())
        .start()
        .await;

    let delivery = h.delivery(h.incident_event());
    let reply = h
        .send_with(&delivery, &[("traceparent", TRACEPARENT)])
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let run = reply.run_id();
    let record = h.run(run).await.expect("the run exists");
    assert_eq!(record.trigger["traceparent"], TRACEPARENT);
    let message = h.awaiting_approval(run).await;
    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );

    // A run started through the API with a malformed traceparent: it is not recorded, and
    // the run's spans start a trace of their own.
    let other = reqwest::Client::new()
        .post(format!("{}/v1/runs", h.url()))
        .bearer_auth(&h.tenant.api_token)
        .header("traceparent", MALFORMED)
        .json(&json!({ "incident": { "number": fixtures::NUMBER } }))
        .send()
        .await
        .expect("Steward answers");
    assert_eq!(other.status(), 202);
    let body: serde_json::Value = other.json().await.expect("a JSON answer");
    let other =
        steward_core::RunId::parse(body["run_id"].as_str().expect("a run id")).expect("a run id");
    let record = h.run(other).await.expect("the run exists");
    assert!(
        record.trigger.get("traceparent").is_none(),
        "{}",
        record.trigger
    );

    // Force the export, bounded: flush until both runs' first steps and the close are in.
    let (run, other) = (run.to_string(), other.to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        h.flush_spans().await;
        let spans = collector.spans();
        let closed = steps_of(&spans, &run)
            .iter()
            .any(|s| s.attr("steward.step") == Some("close"));
        if closed && !steps_of(&spans, &other).is_empty() {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "the spans were not exported in time: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(spans.iter().all(|s| s.service == "steward-e2e"));

    // The webhook's request span is a child of the caller's span.
    let intake = spans
        .iter()
        .find(|s| {
            s.name == "POST /v1/webhooks/{tenant}/{source}"
                && s.attr("http.response.status_code") == Some("202")
        })
        .unwrap_or_else(|| panic!("no webhook request span: {spans:#?}"));
    assert_eq!(intake.trace_id, TRACE_ID);
    assert_eq!(intake.parent_span_id, CALLER_SPAN);
    assert_eq!(intake.attr("http.request.method"), Some("POST"));
    assert_eq!(
        intake.attr("http.route"),
        Some("/v1/webhooks/{tenant}/{source}")
    );

    // Each step is a span of the same trace, with the run's attributes and its outcome.
    let steps = steps_of(&spans, &run);
    let names: BTreeSet<&str> = steps
        .iter()
        .filter_map(|s| s.attr("steward.step"))
        .collect();
    for expected in [
        "fetch",
        "triage",
        "decide",
        "request_approval",
        "write",
        "close",
    ] {
        assert!(
            names.contains(expected),
            "no {expected} step span: {names:?}"
        );
    }
    for step in &steps {
        assert_eq!(step.trace_id, TRACE_ID, "{step:?}");
        assert_eq!(step.parent_span_id, CALLER_SPAN, "{step:?}");
        assert_eq!(step.attr("steward.tenant"), Some(h.tenant.id.as_str()));
        let outcome = step.attr("steward.outcome").unwrap_or_default();
        assert!(["ok", states::COMPLETED].contains(&outcome), "{step:?}");
    }
    let close = steps
        .iter()
        .find(|s| s.attr("steward.step") == Some("close"));
    assert_eq!(
        close.and_then(|s| s.attr("steward.outcome")),
        Some(states::COMPLETED)
    );

    // Adapter calls are children of the step that made them.
    let step_ids: BTreeSet<&str> = steps.iter().map(|s| s.span_id.as_str()).collect();
    let adapters: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.name == "adapter.call" && step_ids.contains(s.parent_span_id.as_str()))
        .filter_map(|s| s.attr("steward.adapter"))
        .collect();
    assert!(
        adapters.contains("servicenow") && adapters.contains("llm"),
        "{adapters:?}"
    );

    // The malformed traceparent was ignored: a trace of Steward's own.
    let api = spans
        .iter()
        .find(|s| s.name == "POST /v1/runs")
        .unwrap_or_else(|| panic!("no POST /v1/runs span: {spans:#?}"));
    assert_ne!(api.trace_id, TRACE_ID);
    assert!(api.parent_span_id.is_empty(), "{api:?}");
    for step in steps_of(&spans, &other) {
        assert_ne!(step.trace_id, TRACE_ID, "{step:?}");
    }

    // Nothing exported names a secret, a token or the incident's text.
    let exported = String::from_utf8_lossy(&collector.raw_bodies()).into_owned();
    for forbidden in [
        "Checkout fails with HTTP 502",
        fixtures::MODEL_NOTE,
        fixtures::NUMBER,
        servicenow::CLIENT_SECRET,
        servicenow::PASSWORD,
        servicenow::ACCESS_TOKEN,
        slack::BOT_TOKEN,
        llm::API_KEY,
        h.tenant.api_token.as_str(),
        h.tenant.signing_secret.as_str(),
    ] {
        assert!(!exported.contains(forbidden), "exported: {forbidden}");
    }
    h.shutdown().await;
}
