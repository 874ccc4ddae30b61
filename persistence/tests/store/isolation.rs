//! Tenant isolation: another tenant's scope sees nothing of a tenant's data and can change
//! none of it, whatever ids it presents.

use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::json;
use steward_core::{ApprovalId, RunId};
use steward_persistence::{
    DecideOutcome, Decision, MasterKey, NewApproval, StoreError, TenantScope, WebhookSource,
};

use sqlx::{Connection, Executor};
use steward_persistence::Backend;

use crate::support::{TestDb, audit, scope, service_connection, source, step};

/// Everything `us-acme` owns: a run with steps, an approval, a snapshot, a source, a secret
/// and audit entries.
struct Owned {
    run: RunId,
    approval: ApprovalId,
}

async fn populate(db: &TestDb, key: &MasterKey) -> Owned {
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let approval = ApprovalId::new();
    let mut ask = step(run, 1, "awaiting_approval");
    ask.new_approval = Some(NewApproval {
        id: approval,
        diff_hash: "h".into(),
        record_version: "1".into(),
        policy: json!({}),
    });
    db.store.append_step(&acme, ask).await.unwrap();
    db.store
        .set_approval_message(&acme, approval, "C1", "1.1")
        .await
        .unwrap();
    db.store
        .save_snapshot(&acme, run, 2, &json!({"s": 1}))
        .await
        .unwrap();
    let src = WebhookSource {
        name: source(),
        scheme: "standard-webhooks".into(),
        secret_name: "webhook".into(),
        sys_id_pointers: vec!["/sys_id".into()],
        number_pointers: vec![],
    };
    db.store.upsert_source(&acme, &src).await.unwrap();
    db.store
        .put_secret(&acme, key, "webhook", &SecretString::from("whsec"))
        .await
        .unwrap();
    Owned { run, approval }
}

async fn assert_sees_nothing(db: &TestDb, key: &MasterKey, other: &TenantScope, owned: &Owned) {
    let s = &db.store;
    assert_eq!(s.run(other, owned.run).await.unwrap(), None);
    assert!(s.steps(other, owned.run).await.unwrap().is_empty());
    assert!(s.list_runs(other, 200, None).await.unwrap().is_empty());
    assert!(
        s.list_runs(other, 200, Some(RunId::new()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.snapshot(other, owned.run).await.unwrap(), None);
    assert_eq!(s.approval(other, owned.approval).await.unwrap(), None);
    assert_eq!(s.source(other, &source()).await.unwrap(), None);
    assert!(s.secret(other, key, "webhook").await.unwrap().is_none());
    assert!(s.audit_entries(other, 0, 1000).await.unwrap().is_empty());
    let report = s.verify_audit(other).await.unwrap();
    assert_eq!((report.entries, report.first_bad), (0, None));
}

async fn another_tenants_scope_sees_none_of_a_tenants_data() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    let owned = populate(&db, &key).await;
    assert_sees_nothing(&db, &key, &scope("eu-beta"), &owned).await;
    assert_sees_nothing(&db, &key, &scope("us-ghost"), &owned).await;
    assert_eq!(
        db.store
            .tenant(&scope("eu-beta"))
            .await
            .unwrap()
            .unwrap()
            .id
            .as_str(),
        "eu-beta"
    );

    // The owner still sees all of it.
    let acme = scope("us-acme");
    assert!(db.store.run(&acme, owned.run).await.unwrap().is_some());
    assert!(
        db.store
            .approval(&acme, owned.approval)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        db.store
            .secret(&acme, &key, "webhook")
            .await
            .unwrap()
            .is_some()
    );
}

async fn another_tenants_scope_can_change_none_of_a_tenants_data() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    let owned = populate(&db, &key).await;
    let beta = scope("eu-beta");
    let s = &db.store;

    let err = s
        .append_step(&beta, step(owned.run, 2, "hijacked"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = s
        .save_snapshot(&beta, owned.run, 0, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = s
        .set_approval_message(&beta, owned.approval, "C9", "9.9")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let decided = s
        .decide_approval(
            &beta,
            owned.approval,
            Decision::Approve,
            "U9",
            step(owned.run, 2, "x"),
        )
        .await
        .unwrap();
    assert_eq!(decided, DecideOutcome::NotFound);
    let expired = s
        .expire_approval(&beta, owned.approval, step(owned.run, 2, "x"))
        .await
        .unwrap();
    assert_eq!(expired, DecideOutcome::NotFound);
    s.revoke_api_tokens(&beta, "ci").await.unwrap();

    let acme = scope("us-acme");
    let run = s.run(&acme, owned.run).await.unwrap().unwrap();
    assert_eq!((run.state.as_str(), run.steps), ("awaiting_approval", 2));
    let approval = s.approval(&acme, owned.approval).await.unwrap().unwrap();
    assert_eq!(
        (approval.status.as_str(), approval.channel.as_deref()),
        ("pending", Some("C1"))
    );
    assert_eq!(s.snapshot(&acme, owned.run).await.unwrap().unwrap().0, 2);
    assert!(s.verify_audit(&acme).await.unwrap().first_bad.is_none());
}

const TENANTS: [&str; 3] = ["us-acme", "eu-beta", "us-gamma"];

/// Creates runs (with extra steps and audit entries) for the tenants named by `ops`, then
/// checks that each tenant's scope sees exactly its own runs, journals and entries.
async fn each_tenant_sees_its_own(ops: Vec<(usize, u32)>) {
    let db = TestDb::new().await;
    crate::support::register(&db.store, "us-gamma").await;
    let mut owned: Vec<(usize, RunId)> = Vec::new();
    for (tenant, extra_steps) in &ops {
        let tenant_scope = scope(TENANTS[*tenant]);
        let run = db.intake(TENANTS[*tenant]).await;
        for seq in 1..=*extra_steps {
            db.store
                .append_step(&tenant_scope, step(run, seq, "s"))
                .await
                .unwrap();
        }
        db.store
            .append_audit(&tenant_scope, audit("extra", None))
            .await
            .unwrap();
        owned.push((*tenant, run));
    }

    for (viewer, name) in TENANTS.iter().enumerate() {
        let view = scope(name);
        let mut mine: Vec<RunId> = owned
            .iter()
            .filter(|(t, _)| *t == viewer)
            .map(|(_, r)| *r)
            .collect();
        mine.reverse();
        let listed = db.store.list_runs(&view, 200, None).await.unwrap();
        assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), mine);
        for (owner, run) in &owned {
            let mine = *owner == viewer;
            assert_eq!(db.store.run(&view, *run).await.unwrap().is_some(), mine);
            assert_eq!(!db.store.steps(&view, *run).await.unwrap().is_empty(), mine);
        }
        let entries = db.store.audit_entries(&view, 0, 1000).await.unwrap();
        assert!(entries.iter().all(|e| e.tenant.as_str() == *name));
        assert!(
            entries
                .iter()
                .all(|e| e.run_id.is_none_or(|r| mine.contains(&r)))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10))]

    #[test]
    fn each_tenant_sees_exactly_its_own_runs_and_entries(
        ops in prop::collection::vec((0usize..3, 0u32..3), 1..20),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for backend in [Backend::Sqlite, Backend::Postgres] {
            rt.block_on(crate::support::on(backend, each_tenant_sees_its_own(ops.clone())));
        }
    }
}

crate::support::conformance!(
    another_tenants_scope_sees_none_of_a_tenants_data,
    another_tenants_scope_can_change_none_of_a_tenants_data,
);

/// The service role, in a transaction that names no tenant, and the superuser, which row-level
/// security does not apply to, count the rows of each table of tenant data.
async fn rows_without_the_tenant_set() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    populate(&db, &key).await;
    let mut service = service_connection(&db).await;
    let mut raw = db.raw().await;
    for table in [
        "tenants",
        "runs",
        "run_steps",
        "approvals",
        "run_snapshots",
        "webhook_sources",
        "sealed_secrets",
        "data_keys",
        "audit_log",
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let exists: i64 = sqlx::query_scalar(&sql).fetch_one(&mut raw).await.unwrap();
        assert!(exists > 0, "{table} holds rows");
        let seen: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&mut service)
            .await
            .unwrap();
        assert_eq!(seen, 0, "{table} shows rows to a query without its tenant");
    }

    // Naming another tenant shows that tenant's rows only; naming the owner shows its own.
    let count_as = |tenant: &'static str| {
        let db = &db;
        async move {
            let mut conn = service_connection(db).await;
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("SELECT set_config('steward.tenant', $1, true)")
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .unwrap();
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(count_as("eu-beta").await, 0);
    assert_eq!(count_as("us-acme").await, 1);
}

/// The service role can neither switch row-level security off, nor write a row for a tenant
/// other than the one set, nor change the audit log, and it owns nothing it could alter.
async fn the_service_role_cannot_bypass_row_security() {
    let db = TestDb::new().await;
    db.intake("us-acme").await;
    let mut service = service_connection(&db).await;

    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut service)
            .await
            .unwrap();
    assert!(!superuser && !bypass);
    let owned: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner \
         WHERE r.rolname = 'steward_service'",
    )
    .fetch_one(&mut service)
    .await
    .unwrap();
    assert_eq!(owned, 0, "the service role owns relations");

    // With row_security off, a query that policies would filter fails instead of showing all.
    service.execute("SET row_security = off").await.unwrap();
    let err = service.execute("SELECT * FROM runs").await.unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    service.execute("SET row_security = on").await.unwrap();

    for sql in [
        "ALTER TABLE runs DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE runs NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_rows ON runs",
        "UPDATE audit_log SET body = '{}'",
        "DELETE FROM audit_log",
    ] {
        let err = service.execute(sql).await.unwrap_err();
        assert!(
            err.to_string().contains("must be owner") || err.to_string().contains("denied"),
            "{sql}: {err}"
        );
    }

    let mut tx = service.begin().await.unwrap();
    sqlx::query("SELECT set_config('steward.tenant', 'us-acme', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query(
        "INSERT INTO webhook_sources (tenant_id, name, scheme, secret_name, sys_id_pointers, \
         number_pointers, created_at, updated_at) VALUES ('eu-beta', 'x', 's', 's', '[]', '[]', 0, 0)",
    )
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
}

/// Every table with a tenant column has row-level security enabled and forced.
async fn every_tenant_table_forces_row_security() {
    let db = TestDb::new().await;
    let mut raw = db.raw().await;
    let unguarded: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' \
         AND (EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
         AND a.attname = 'tenant_id') OR c.relname = 'tenants') \
         AND NOT (c.relrowsecurity AND c.relforcerowsecurity)",
    )
    .fetch_all(&mut raw)
    .await
    .unwrap();
    assert!(
        unguarded.is_empty(),
        "tables without forced RLS: {unguarded:?}"
    );
}

/// What `steward checklist` reads of the service role: least privilege; and the owner role,
/// which owns the schema, is reported as more than that.
async fn the_role_check_passes_the_service_role_and_flags_the_owner() {
    let db = TestDb::new().await;
    db.intake("us-acme").await;
    let crate::support::Place::Postgres(pg) = &db.place else {
        panic!("PostgreSQL only")
    };
    let url = |role: &str| secrecy::SecretString::from(crate::support::pg_url(role, &pg.name));
    let service = steward_persistence::role_check::service_role(&url("steward_service"))
        .await
        .unwrap();
    assert_eq!(service.role, "steward_service");
    assert!(service.problems().is_empty(), "{:?}", service.problems());
    assert!(service.tenant_tables >= 10, "{service:?}");
    let owner = steward_persistence::role_check::service_role(&url("steward_owner"))
        .await
        .unwrap();
    assert!(owner.owned_objects > 0, "{owner:?}");
    assert!(
        owner.problems().iter().any(|p| p.starts_with("owns ")),
        "{:?}",
        owner.problems()
    );
    let bad = steward_persistence::role_check::service_role(&secrecy::SecretString::from(
        "not a url".to_owned(),
    ))
    .await;
    assert!(bad.is_err());
}

mod postgres_only {
    use steward_persistence::Backend;

    #[tokio::test]
    async fn the_role_check_passes_the_service_role_and_flags_the_owner() {
        crate::support::on(
            Backend::Postgres,
            super::the_role_check_passes_the_service_role_and_flags_the_owner(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_query_without_the_tenant_set_returns_nothing() {
        crate::support::on(Backend::Postgres, super::rows_without_the_tenant_set()).await;
    }

    #[tokio::test]
    async fn the_service_role_cannot_bypass_row_security() {
        crate::support::on(
            Backend::Postgres,
            super::the_service_role_cannot_bypass_row_security(),
        )
        .await;
    }

    #[tokio::test]
    async fn every_tenant_table_forces_row_security() {
        crate::support::on(
            Backend::Postgres,
            super::every_tenant_table_forces_row_security(),
        )
        .await;
    }
}
