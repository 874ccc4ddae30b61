//! Scenario `audit`: appends per second through `Store::append_audit` (each its own durable
//! transaction) to one tenant's chain and to many, and the verification rate of a chain of a
//! million entries, in memory with `verify_entries` and read back from SQLite with
//! `Store::verify_audit` (pages of 1,000). Steward has no audit export yet, so "streamed from
//! the export" is measured as streamed from the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite};
use steward_core::{Clock, RunId, SystemClock, TenantId};
use steward_persistence::{
    AuditDraft, AuditEntry, Authenticator, GENESIS_HASH, Store, StoreOptions, TenantRecord,
    TenantScope, entry_hash, verify_entries,
};

use crate::latency::{Latency, millis};
use crate::machine::Machine;
use crate::tenants;

/// Settings of the audit scenario.
#[derive(Debug, Clone)]
pub(crate) struct AuditArgs {
    pub(crate) tenants: usize,
    pub(crate) window: Duration,
    pub(crate) concurrency: usize,
    pub(crate) chain: u64,
}

/// Entries built, verified and inserted at a time.
const CHUNK: u64 = 10_000;

/// Rows per INSERT statement (9 parameters each, under SQLite's limit).
const ROWS_PER_INSERT: usize = 500;

/// Runs the scenario and prints its figures.
pub(crate) async fn run(args: &AuditArgs, machine: &Machine) -> anyhow::Result<()> {
    println!("== audit: appends and verification of the hash-chained audit log");
    println!("{machine}");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("steward.db");
    let store = Store::open(StoreOptions::new(&path)).await?;
    println!("store: SQLite (WAL), synchronous=FULL, one writer connection");
    for i in 0..=args.tenants {
        register(&store, &tenants::tenant_id(i)).await?;
    }
    let one = vec![tenants::tenant_id(0)];
    appends(&store, "one tenant, 1 appender", &one, 1, args.window).await?;
    let label = format!("one tenant, {} concurrent appenders", args.concurrency);
    appends(&store, &label, &one, args.concurrency, args.window).await?;
    let many: Vec<TenantId> = (1..=args.tenants).map(tenants::tenant_id).collect();
    let label = format!("{} tenants, one appender each", args.tenants);
    appends(&store, &label, &many, args.tenants, args.window).await?;
    chain(&store, &path, args.chain).await?;
    store.close().await;
    Ok(())
}

async fn register(store: &Store, id: &TenantId) -> anyhow::Result<()> {
    let record = TenantRecord {
        id: id.clone(),
        name: format!("Audit bench {id}"),
        settings: json!({}),
        created_at: SystemClock.now_millis(),
    };
    store.upsert_tenant(&record).await?;
    Ok(())
}

/// A draft like intake's `run.received` entry.
fn draft(i: u64) -> AuditDraft {
    AuditDraft {
        kind: "run.received".into(),
        run_id: Some(RunId::new()),
        actor: "webhook:alerts".into(),
        body: json!({
            "delivery_id": format!("msg_bench_{i}"),
            "incident": {"sys_id": "9d385017c611228701d22104cc95c371"},
            "body_sha256": "5f3a9c1e7b2d4f6a8c0e1b3d5f7a9c2e5f3a9c1e7b2d4f6a8c0e1b3d5f7a9c2e",
        }),
    }
}

/// `workers` tasks append round-robin over `chains` for `window`.
async fn appends(
    store: &Store,
    label: &str,
    chains: &[TenantId],
    workers: usize,
    window: Duration,
) -> anyhow::Result<()> {
    let counter = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + window;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers.max(1) {
        let store = store.clone();
        let scope = TenantScope::assume(chains[w % chains.len()].clone(), Authenticator::Operator);
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            let mut latency = Latency::new();
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                store.append_audit(&scope, draft(i)).await?;
                latency.record(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latency)
        }));
    }
    let mut latency = Latency::new();
    for task in tasks {
        latency.merge(&task.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "\n-- appends, {label}: {} in {secs:.1} s = {:.0}/s; each: {latency}",
        latency.count(),
        latency.count() as f64 / secs
    );
    Ok(())
}

/// Builds a chain of `n` entries, verifies it in memory, writes it, and verifies it again as
/// read back through the store.
async fn chain(store: &Store, path: &std::path::Path, n: u64) -> anyhow::Result<()> {
    let tenant = tenants::tenant_id(9999);
    register(store, &tenant).await?;
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path))
        .await?;
    println!(
        "\n-- a chain of {n} entries for {tenant}: built with entry_hash, checked chunk by chunk \
         with verify_entries, written straight into audit_log in {CHUNK}-entry transactions \
         (the store has no bulk import), then verified back through Store::verify_audit"
    );
    let (mut build, mut verify, mut insert) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut head = GENESIS_HASH.to_owned();
    let mut seq = 1;
    while seq <= n {
        let count = CHUNK.min(n - seq + 1);
        let started = Instant::now();
        let entries = build_chunk(&tenant, seq, count, &head);
        build += started.elapsed();
        let started = Instant::now();
        head = verify_entries(&entries, &head)?;
        verify += started.elapsed();
        let started = Instant::now();
        insert_chunk(&writer, &entries).await?;
        insert += started.elapsed();
        seq += count;
    }
    writer.close().await;
    let rate = |d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    println!("   building (hashing) the entries: {:.0}/s", rate(build));
    println!(
        "   verify_entries in memory, one core: {} = {:.0} entries/s",
        millis(verify),
        rate(verify)
    );
    println!(
        "   writing them: {} = {:.0}/s",
        millis(insert),
        rate(insert)
    );
    let scope = TenantScope::assume(tenant, Authenticator::Operator);
    let started = Instant::now();
    let report = store.verify_audit(&scope).await?;
    let took = started.elapsed();
    anyhow::ensure!(
        report.entries == n && report.first_bad.is_none() && report.head_hash == head,
        "the chain read back does not verify: {report:?}"
    );
    println!(
        "   Store::verify_audit, read back from SQLite and verified: {} = {:.0} entries/s",
        millis(took),
        rate(took)
    );
    Ok(())
}

fn build_chunk(tenant: &TenantId, first: u64, count: u64, prev: &str) -> Vec<AuditEntry> {
    let mut prev = prev.to_owned();
    let now = SystemClock.now_millis();
    (first..first + count)
        .map(|seq| {
            let body = serde_json::to_string(&draft(seq).body).unwrap_or_default();
            let mut entry = AuditEntry {
                tenant: tenant.clone(),
                seq,
                at: now,
                kind: "run.received".into(),
                run_id: Some(RunId::new()),
                actor: "webhook:alerts".into(),
                body,
                sealed: None,
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            entry.hash = entry_hash(&entry);
            prev.clone_from(&entry.hash);
            entry
        })
        .collect()
}

async fn insert_chunk(writer: &sqlx::SqlitePool, entries: &[AuditEntry]) -> anyhow::Result<()> {
    let mut tx = writer.begin().await?;
    for rows in entries.chunks(ROWS_PER_INSERT) {
        let mut insert: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
            "INSERT INTO audit_log (tenant_id, seq, at, kind, run_id, actor, body, prev_hash, \
             hash) ",
        );
        insert.push_values(rows, |mut row, e| {
            row.push_bind(e.tenant.as_str())
                .push_bind(i64::try_from(e.seq).unwrap_or(i64::MAX))
                .push_bind(e.at)
                .push_bind(e.kind.as_str())
                .push_bind(e.run_id.map(|r| r.to_string()))
                .push_bind(e.actor.as_str())
                .push_bind(e.body.as_str())
                .push_bind(e.prev_hash.as_str())
                .push_bind(e.hash.as_str());
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
