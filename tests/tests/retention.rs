//! Retention, legal hold and erasure end to end, on a clock the test moves: a tenant sets its
//! retention, the flagship run completes, a legal hold stops the sweep and refuses erasure,
//! and once released the sweep removes the run and the oldest audit entries; the evidence
//! exported afterwards still verifies offline. Every new endpoint refuses hostile input.

use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;
use steward_core::{Clock, FixedClock, SystemClock};
use steward_persistence::evidence::bundle::{BundleWriter, VerifyOptions, verify_bundle};
use steward_persistence::{NewToken, generate_api_token};
use steward_tests::{APPROVER, Harness, OPS_TOKEN, Scenario};

const DAY_MS: i64 = 86_400_000;

async fn admin_token(h: &Harness, scope: steward_persistence::TenantScope) -> String {
    let value = generate_api_token();
    let scopes = vec!["admin".to_owned()];
    let token = NewToken {
        value: &value,
        label: "e2e-admin",
        scopes: &scopes,
        expires_at: None,
    };
    h.server()
        .store
        .issue_token(&scope, token, "operator")
        .await
        .expect("a token is issued");
    value.expose_secret().to_owned()
}

async fn sweep(h: &Harness) -> Value {
    let reply = h
        .request("POST", "/v1/ops/retention/sweep", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body
}

/// Exports the tenant's whole evidence over HTTP into a bundle and verifies it offline.
async fn export_and_verify(h: &Harness, token: &str) -> steward_persistence::ExportRange {
    let reply = h.get("/v1/tenant/evidence", Some(token)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let dir = tempfile::tempdir().unwrap();
    let mut writer = BundleWriter::create(dir.path()).unwrap();
    for line in reply.text.lines().filter(|l| !l.is_empty()) {
        writer.push_line(line.as_bytes()).unwrap();
    }
    let manifest = writer.finish().unwrap();
    verify_bundle(dir.path(), &VerifyOptions::default(), |_| {}).expect("the bundle verifies");
    manifest.range
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_after_a_hold_is_released_and_evidence_still_verifies() {
    let clock = FixedClock::at_secs(SystemClock.now_secs());
    let h = Scenario::new().clock(Arc::new(clock.clone())).start().await;
    let admin = admin_token(&h, h.tenant.scope()).await;
    let tenant = h.tenant.id.to_string();

    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
    assert_eq!(h.finished(run).await.state, states::COMPLETED);
    let other_run = h
        .server()
        .store
        .list_runs(&h.other.scope(), 10, None)
        .await
        .unwrap();

    let set = h
        .request(
            "PUT",
            "/v1/tenant/retention",
            Some(&admin),
            Some(&json!({"content_days": 30, "runs_days": 60, "audit_days": 365})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.body["runs_days"], 60);
    let read = h.get("/v1/tenant/retention", Some(&admin)).await;
    assert_eq!(read.body["audit_days"], 365);
    assert_eq!(read.body["legal_hold"], Value::Null);

    let hold_path = format!("/v1/tenants/{tenant}/legal-hold");
    let held = h
        .request(
            "PUT",
            &hold_path,
            Some(OPS_TOKEN),
            Some(&json!({"reason": "litigation hold, case 2026-114"})),
        )
        .await;
    assert_eq!(held.status, 200, "{}", held.text);
    let again = h
        .request(
            "PUT",
            &hold_path,
            Some(OPS_TOKEN),
            Some(&json!({"reason": "again"})),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);

    // A year and more later, the hold keeps everything.
    clock.advance_millis(400 * DAY_MS);
    let report = sweep(&h).await;
    assert_eq!(report["runs"], 0, "{report}");
    assert!(h.run(run).await.is_some());
    let erase_path = format!("/v1/tenants/{tenant}/erasure");
    let refused = h
        .post_json(
            &erase_path,
            Some(OPS_TOKEN),
            &json!({"subject": format!("slack:{}", APPROVER.id), "reason": "DSR-88"}),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert!(refused.message().contains("legal hold"), "{}", refused.text);

    let released = h.request("DELETE", &hold_path, Some(OPS_TOKEN), None).await;
    assert_eq!(released.status, 200, "{}", released.text);
    let report = sweep(&h).await;
    assert_eq!(report["runs"], 1, "{report}");
    assert!(report["audit_entries"].as_u64().unwrap() > 0, "{report}");
    assert!(h.run(run).await.is_none());
    // The other tenant set nothing: it keeps everything.
    let still = h
        .server()
        .store
        .list_runs(&h.other.scope(), 10, None)
        .await
        .unwrap();
    assert_eq!(still.len(), other_run.len());

    let entries = h.audit().await;
    assert!(entries.iter().any(|e| e.kind == "audit.pruned"));
    assert!(entries.iter().any(|e| e.kind == "legal_hold.released"));
    assert!(entries.iter().all(|e| e.kind != "run.created"));
    let report = h
        .server()
        .store
        .verify_audit(&h.tenant.scope())
        .await
        .unwrap();
    assert_eq!(report.first_bad, None);
    let anchor = h.get("/v1/tenant/retention", Some(&admin)).await;
    let through = anchor.body["prune_anchor"]["through_seq"].as_u64().unwrap();
    let range = export_and_verify(&h, &admin).await;
    assert_eq!(range.first_seq, through + 1);

    // Erasure now runs; its record names no subject.
    let erased = h
        .post_json(
            &erase_path,
            Some(OPS_TOKEN),
            &json!({"subject": format!("slack:{}", APPROVER.id), "reason": "DSR-88"}),
        )
        .await;
    assert_eq!(erased.status, 200, "{}", erased.text);
    assert!(!erased.text.contains(APPROVER.id));
    let last = h.audit().await.pop().unwrap();
    assert_eq!(last.kind, "erasure.completed");
    assert!(!last.body.contains(APPROVER.id), "{}", last.body);
    let ops_audit = h.get("/v1/ops/audit?limit=1000", Some(OPS_TOKEN)).await;
    assert!(ops_audit.text.contains("legal_hold.placed"));
    assert!(ops_audit.text.contains("erasure.completed"));
    assert!(!ops_audit.text.contains(APPROVER.id));
    export_and_verify(&h, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_endpoints_refuse_hostile_input() {
    let h = Scenario::new().start().await;
    let admin = admin_token(&h, h.tenant.scope()).await;
    let other_admin = admin_token(&h, h.other.scope()).await;
    let put = |body: Value, token: String| {
        let h = &h;
        async move {
            h.request("PUT", "/v1/tenant/retention", Some(&token), Some(&body))
                .await
        }
    };
    for (body, status) in [
        (json!({"runs_days": -1, "content_days": 1}), 400),
        (json!({"content_days": 1.5}), 400),
        (json!({"content_days": "30"}), 400),
        (json!({"content_days": 1e30}), 400),
        (json!({"content_days": 18_446_744_073_709_551_615u64}), 422),
        (json!({"content_days": 4_294_967_296u64}), 422),
        (json!({"content_days": 0}), 422),
        (json!({"content_days": 3651}), 422),
        (json!({"content_days": 10, "runs_days": 5}), 422),
        (
            json!({"content_days": 1, "runs_days": 5, "audit_days": 364}),
            422,
        ),
        (json!({"runs_days": 5}), 422),
        (json!({"content_days": 1, "sneaky": true}), 400),
        (json!([{"content_days": 1}]), 400),
        (json!("content_days"), 400),
        (json!({"content_days": "x".repeat(5000)}), 413),
    ] {
        let reply = put(body.clone(), admin.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
    }
    // A runs-only token, no token and an operator token are refused.
    let none = h
        .request("PUT", "/v1/tenant/retention", None, Some(&json!({})))
        .await;
    assert_eq!(none.status, 401);
    let runs_token = h.tenant.api_token.clone();
    let narrow = put(json!({}), runs_token).await;
    assert_eq!(narrow.status, 403, "{}", narrow.text);
    // One tenant's settings are not another's.
    let ok = put(json!({"content_days": 7, "runs_days": 7}), admin.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let theirs = h.get("/v1/tenant/retention", Some(&other_admin)).await;
    assert_eq!(theirs.body["runs_days"], Value::Null, "{}", theirs.text);
    assert_eq!(theirs.body["tenant"], h.other.id.to_string());

    let tenant = h.tenant.id.to_string();
    let hold = format!("/v1/tenants/{tenant}/legal-hold");
    let erase = format!("/v1/tenants/{tenant}/erasure");
    for (path, method, body, status) in [
        (hold.as_str(), "PUT", json!({"reason": ""}), 422),
        (
            hold.as_str(),
            "PUT",
            json!({"reason": "x".repeat(1001)}),
            422,
        ),
        (hold.as_str(), "PUT", json!({"reason": "a\u{0}b"}), 422),
        (hold.as_str(), "PUT", json!({"reason": 5}), 400),
        (hold.as_str(), "PUT", json!(["reason"]), 400),
        (
            hold.as_str(),
            "PUT",
            json!({"reason": "ok", "by": "me"}),
            400,
        ),
        (
            hold.as_str(),
            "PUT",
            json!({"reason": "x".repeat(5000)}),
            413,
        ),
        (
            "/v1/tenants/us-nobody/legal-hold",
            "PUT",
            json!({"reason": "ok"}),
            404,
        ),
        (
            "/v1/tenants/..%2f/legal-hold",
            "PUT",
            json!({"reason": "ok"}),
            404,
        ),
        (hold.as_str(), "DELETE", Value::Null, 404),
        (
            erase.as_str(),
            "POST",
            json!({"subject": "nobody", "reason": "r"}),
            422,
        ),
        (
            erase.as_str(),
            "POST",
            json!({"subject": "slack:u1", "reason": "r"}),
            422,
        ),
        (
            erase.as_str(),
            "POST",
            json!({"subject": "ana@example.com", "reason": ""}),
            422,
        ),
        (
            erase.as_str(),
            "POST",
            json!({"subject": "ana@example.com"}),
            400,
        ),
        (erase.as_str(), "POST", json!([1, 2]), 400),
        (
            erase.as_str(),
            "POST",
            json!({"subject": "ana@example.com", "reason": "r", "all": true}),
            400,
        ),
        (
            erase.as_str(),
            "POST",
            json!({"subject": "a@b.co", "reason": "x".repeat(5000)}),
            413,
        ),
        (
            "/v1/tenants/us-nobody/erasure",
            "POST",
            json!({"subject": "ana@example.com", "reason": "r"}),
            404,
        ),
    ] {
        let body = (!body.is_null()).then_some(&body);
        let reply = h.request(method, path, Some(OPS_TOKEN), body).await;
        assert_eq!(
            reply.status, status,
            "{method} {path} {body:?}: {}",
            reply.text
        );
        assert!(!reply.text.contains("ana@example.com"), "{}", reply.text);
    }
    // Tenant tokens are not operators.
    for (method, path) in [("PUT", hold.as_str()), ("DELETE", hold.as_str())] {
        let reply = h
            .request(method, path, Some(&admin), Some(&json!({"reason": "mine"})))
            .await;
        assert_eq!(reply.status, 403, "{}", reply.text);
    }
    let reply = h
        .post_json(
            &erase,
            Some(&admin),
            &json!({"subject": "ana@example.com", "reason": "r"}),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let reply = h
        .request("POST", "/v1/ops/retention/sweep", Some(&admin), None)
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
}
