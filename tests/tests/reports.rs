//! Per-tenant reports end to end: flagship runs approved, rejected and left waiting, the
//! policy's denial, forged and stale webhooks, and a provider that keeps failing; then the
//! report as JSON and as CSV, by tenant token, operator token and `steward report`, checked
//! against what the stand-ins saw. Hostile requests get a clear `400`, and one tenant's token
//! learns nothing about another tenant.

use std::collections::BTreeMap;

use serde_json::Value;
use steward_actors::states;
use steward_adapters::slack::{APPROVE_ACTION, REJECT_ACTION};
use steward_runtime::report_cli::{ReportArgs, ReportFormat};
use steward_tests::llm::error;
use steward_tests::{APPROVER, Delivery, Harness, OPS_TOKEN, SOURCE, Scenario};

const HOUR_MS: i64 = 3_600_000;

/// A range from the start of the previous hour to an hour from now, in Unix ms.
fn range(h: &Harness) -> (i64, i64) {
    let now = h.now_secs() * 1000;
    ((now / HOUR_MS - 1) * HOUR_MS, now + HOUR_MS)
}

fn report_path(base: &str, from: i64, to: i64, format: &str) -> String {
    format!("{base}?from={from}&to={to}&format={format}")
}

/// An RFC 4180 reader of `section,key,value` rows, independent of the server's writer.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "the CSV ends with a line break"
    );
    rows
}

/// The CSV's rows as `(section, key) -> value`, every row three fields.
fn csv_map(text: &str) -> BTreeMap<(String, String), String> {
    let rows = parse_csv(text);
    assert_eq!(rows[0], ["section", "key", "value"], "the header row");
    rows[1..]
        .iter()
        .map(|r| {
            assert_eq!(r.len(), 3, "{r:?}");
            ((r[0].clone(), r[1].clone()), r[2].clone())
        })
        .collect()
}

/// `GET path` with `token`, returning status, content type and body.
async fn fetch(h: &Harness, path: &str, token: &str) -> (u16, String, String) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", h.url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("Steward answers");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, kind, response.text().await.expect("a body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_what_happened_in_json_csv_and_through_the_cli() {
    let h = Scenario::new().start().await;

    let approved = h.trigger().await;
    let message = h.awaiting_approval(approved).await;
    assert_eq!(
        h.click(&message, APPROVE_ACTION, APPROVER).await.status,
        200
    );
    assert_eq!(h.finished(approved).await.state, states::COMPLETED);

    let rejected = h.trigger().await;
    let message = h.awaiting_approval(rejected).await;
    assert_eq!(h.click(&message, REJECT_ACTION, APPROVER).await.status, 200);
    assert_eq!(h.finished(rejected).await.state, states::REJECTED);

    let waiting = h.trigger().await;
    h.awaiting_approval(waiting).await;

    // Forged and stale deliveries to the tenant's source are the tenant's; to an unknown
    // source or tenant they are nobody's; to the other tenant they are the other's.
    let body = h.incident_event();
    for _ in 0..3 {
        let forged = Delivery::new(&h.other.whsec, h.now_secs(), body.clone());
        assert_eq!(h.send(&forged).await.status, 401);
    }
    let stale = Delivery::new(&h.tenant.whsec, h.now_secs() - 3600, body.clone());
    assert_eq!(h.send(&stale).await.status, 401);
    let nowhere = Delivery::new(&h.tenant.whsec, h.now_secs(), body.clone());
    let tenant = h.tenant.id.as_str();
    assert_eq!(h.send_to(tenant, "nosuch", &nowhere).await.status, 404);
    assert_eq!(h.send_to("us-nobody", SOURCE, &nowhere).await.status, 404);
    let theirs = Delivery::new(&h.tenant.whsec, h.now_secs(), body.clone());
    assert_eq!(
        h.send_to(h.other.id.as_str(), SOURCE, &theirs).await.status,
        401
    );

    let (from, to) = range(&h);
    let path = report_path("/v1/tenant/report", from, to, "json");
    let (status, kind, text) = fetch(&h, &path, &h.tenant.api_token).await;
    assert_eq!(status, 200, "{text}");
    assert!(kind.starts_with("application/json"), "{kind}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["tenant"], tenant);
    assert_eq!(report["runs"]["total"], 3, "{report:#}");
    assert_eq!(report["runs"]["outcomes"]["completed"], 1);
    assert_eq!(report["runs"]["outcomes"]["rejected"], 1);
    assert_eq!(report["runs"]["open"]["awaiting_approval"], 1);

    let approvals = &report["approvals"];
    assert_eq!(approvals["requested"], 3);
    assert_eq!(approvals["decided"], 2);
    assert_eq!(approvals["approved"], 1);
    assert_eq!(approvals["rejected"], 1);
    assert_eq!(approvals["pending"], 1);
    let p50 = approvals["p50_ms"].as_i64().expect("a p50");
    let p99 = approvals["p99_ms"].as_i64().expect("a p99");
    assert!(p50 > 0 && p50 <= p99 && p99 < 60_000, "{approvals}");

    let writebacks = &report["writebacks"];
    assert_eq!(writebacks["attempted"], 1, "{writebacks}");
    assert_eq!(writebacks["succeeded"], 1);
    assert_eq!(writebacks["failed"], 0);
    assert_eq!(writebacks["success_rate"], 1.0);
    assert_eq!(h.servicenow.patches().await.len(), 1, "one write happened");

    let denials = &report["policy_denials"];
    assert_eq!(
        denials["total"], 3,
        "priority is denied in each run: {denials}"
    );
    assert_eq!(denials["by_field"]["priority"], 3);
    let by_policy: i64 = denials["by_policy"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert!(by_policy >= 3, "{denials}");

    let openai = &report["llm"]["openai"];
    assert_eq!(openai["calls"], 3, "{report:#}");
    assert_eq!(openai["errors"], 0);
    assert_eq!(
        openai["input_tokens"],
        3 * 812,
        "the stand-in's usage, per reply"
    );
    assert_eq!(openai["output_tokens"], 3 * 164);
    assert_eq!(h.llm.requests().await.len(), 3);

    let rejections = &report["rejected_webhooks"];
    assert_eq!(rejections["total"], 4, "{rejections}");
    assert_eq!(rejections["by_reason"]["signature_mismatch"], 3);
    assert_eq!(rejections["by_reason"]["timestamp_out_of_tolerance"], 1);
    assert!(rejections["by_reason"].get("not_found").is_none());

    // The same numbers as CSV.
    let path = report_path("/v1/tenant/report", from, to, "csv");
    let (status, kind, csv) = fetch(&h, &path, &h.tenant.api_token).await;
    assert_eq!(status, 200, "{csv}");
    assert!(kind.starts_with("text/csv"), "{kind}");
    let rows = csv_map(&csv);
    let cell = |section: &str, key: &str| {
        rows.get(&(section.to_owned(), key.to_owned()))
            .unwrap_or_else(|| panic!("no {section},{key} in {csv}"))
            .as_str()
    };
    assert_eq!(cell("report", "tenant"), tenant);
    assert_eq!(cell("runs.outcome", "completed"), "1");
    assert_eq!(cell("runs.open", "awaiting_approval"), "1");
    assert_eq!(cell("approvals", "p50_ms"), p50.to_string());
    assert_eq!(cell("writebacks", "success_rate"), "1.0000");
    assert_eq!(cell("policy_denials.field", "priority"), "3");
    assert_eq!(cell("llm.openai", "input_tokens"), (3 * 812).to_string());
    assert_eq!(cell("rejected_webhooks.reason", "signature_mismatch"), "3");

    // The operator sees the same report, and the other tenant's own.
    let path = report_path(&format!("/v1/tenants/{tenant}/report"), from, to, "json");
    let (status, _, text) = fetch(&h, &path, OPS_TOKEN).await;
    assert_eq!(status, 200, "{text}");
    let by_operator: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(by_operator["runs"], report["runs"]);
    assert_eq!(
        by_operator["rejected_webhooks"],
        report["rejected_webhooks"]
    );
    let other = h.other.id.as_str();
    let path = report_path(&format!("/v1/tenants/{other}/report"), from, to, "json");
    let (status, _, text) = fetch(&h, &path, OPS_TOKEN).await;
    assert_eq!(status, 200, "{text}");
    let others: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(others["runs"]["total"], 0);
    assert_eq!(
        others["rejected_webhooks"]["by_reason"]["signature_mismatch"],
        1
    );

    // `steward report`, as the operator and as the tenant.
    let dir = tempfile::tempdir().unwrap();
    let ops_file = dir.path().join("ops-token");
    std::fs::write(&ops_file, OPS_TOKEN).unwrap();
    let tenant_file = dir.path().join("tenant-token");
    std::fs::write(&tenant_file, &h.tenant.api_token).unwrap();
    let args = |format, token_file: &std::path::Path, tenant_token| ReportArgs {
        url: url::Url::parse(&h.url()).unwrap(),
        tenant: tenant.to_owned(),
        from: from.to_string(),
        to: to.to_string(),
        format,
        token_file: Some(token_file.to_owned()),
        tenant_token,
    };
    let text = steward_runtime::report_cli::fetch(&args(ReportFormat::Json, &ops_file, false))
        .await
        .unwrap();
    let by_cli: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(by_cli["llm"], report["llm"]);
    let text = steward_runtime::report_cli::fetch(&args(ReportFormat::Csv, &tenant_file, true))
        .await
        .unwrap();
    assert_eq!(
        csv_map(&text)
            .get(&("runs".into(), "total".into()))
            .unwrap(),
        "3"
    );
    let mut wrong = args(ReportFormat::Json, &tenant_file, true);
    wrong.tenant = other.to_owned();
    let refused = steward_runtime::report_cli::fetch(&wrong)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("another tenant"),
        "{refused:#}"
    );
    let mut huge = args(ReportFormat::Json, &ops_file, false);
    huge.from = "2020-01-01T00:00:00Z".into();
    let refused = steward_runtime::report_cli::fetch(&huge).await.unwrap_err();
    assert!(refused.to_string().contains("400"), "{refused:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_shows_as_llm_errors_and_a_failed_run() {
    let failing = error(
        500,
        "server_error",
        "server_error",
        "The server had an error.",
    );
    let h = Scenario::new().provider_answers(failing).start().await;
    let run = h.trigger().await;
    assert_eq!(h.finished(run).await.state, states::FAILED);
    let calls = h.llm.requests().await.len();
    assert!(calls >= 1);

    let (from, to) = range(&h);
    let path = report_path("/v1/tenant/report", from, to, "json");
    let (status, _, text) = fetch(&h, &path, &h.tenant.api_token).await;
    assert_eq!(status, 200, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["runs"]["outcomes"]["failed"], 1, "{report:#}");
    let openai = &report["llm"]["openai"];
    assert_eq!(
        openai["calls"], calls as i64,
        "every attempt the stand-in saw: {report:#}"
    );
    assert_eq!(openai["errors"], calls as i64);
    assert_eq!(openai["input_tokens"], 0);
    assert_eq!(report["writebacks"]["attempted"], 0);
    assert_eq!(report["writebacks"]["success_rate"], Value::Null);
    assert_eq!(report["approvals"]["p50_ms"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_report_requests_are_refused_and_leak_nothing() {
    let h = Scenario::new().start().await;
    h.trigger().await;
    let (from, to) = range(&h);
    let token = h.tenant.api_token.as_str();
    let year = 366 * 24 * HOUR_MS;
    let bad = [
        format!("/v1/tenant/report?from=0&to={}", year + 1),
        format!("/v1/tenant/report?from={to}&to={from}"),
        format!("/v1/tenant/report?from={from}&to={from}"),
        format!("/v1/tenant/report?from=2026-01-01T00:00:00Z&to={to}"),
        format!("/v1/tenant/report?from=-5&to={to}"),
        format!("/v1/tenant/report?from=1.5&to={to}"),
        format!("/v1/tenant/report?from={}&to={to}", "9".repeat(40)),
        format!("/v1/tenant/report?to={to}"),
        format!("/v1/tenant/report?from={from}"),
        format!("/v1/tenant/report?from={from}&to={to}&format=xml"),
        format!("/v1/tenant/report?from={from}&to={to}&format=CSV"),
        format!("/v1/tenant/report?from={from}&to={to}&tenant=us-other"),
        format!("/v1/tenant/report?from={from}&from={from}&to={to}"),
    ];
    for path in &bad {
        let reply = h.get(path, Some(token)).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert_eq!(reply.error_code(), "bad_request", "{path}: {}", reply.text);
        assert!(!reply.message().is_empty(), "{path}");
    }
    let huge = h.get(&bad[0], Some(token)).await;
    assert!(huge.message().contains("366 days"), "{}", huge.text);

    // Without a token, or with a bad one: 401.
    let ok = report_path("/v1/tenant/report", from, to, "json");
    assert_eq!(h.get(&ok, None).await.status, 401);
    assert_eq!(h.get(&ok, Some("stw_not-a-token")).await.status, 401);

    // A tenant token on the operator's route, for its own or another tenant: refused with
    // the same answer, naming neither report.
    let other = h.other.id.as_str();
    let mine = h.tenant.id.as_str();
    let mut answers = Vec::new();
    for id in [other, mine, "us-nobody"] {
        let path = report_path(&format!("/v1/tenants/{id}/report"), from, to, "json");
        let reply = h.get(&path, Some(token)).await;
        assert!(matches!(reply.status, 401 | 403), "{id}: {}", reply.text);
        assert!(reply.body.get("runs").is_none(), "{}", reply.text);
        answers.push((reply.status, reply.error_code().to_owned()));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");

    // The operator gets 404 for a tenant that does not exist or is malformed.
    for id in ["us-nobody", "not%20a%20tenant"] {
        let path = report_path(&format!("/v1/tenants/{id}/report"), from, to, "json");
        assert_eq!(h.get(&path, Some(OPS_TOKEN)).await.status, 404, "{id}");
    }
    // And 400, not a report, for a bad range.
    let path = format!("/v1/tenants/{mine}/report?from={to}&to={from}");
    assert_eq!(h.get(&path, Some(OPS_TOKEN)).await.status, 400);

    // The other tenant's token sees only its own tenant: none of this tenant's runs.
    let reply = h.get(&ok, Some(&h.other.api_token)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["tenant"], other);
    assert_eq!(reply.body["runs"]["total"], 0);
}
