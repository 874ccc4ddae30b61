//! Random sequences of calls by several tenants (start runs, read runs, ask for and decide
//! approvals, read the audit log, rotate secrets) against a model of what each tenant owns: no
//! call ever returns, changes or reveals the existence of another tenant's data. Runs on both
//! backends.

use std::collections::BTreeMap;

use proptest::prelude::*;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use steward_core::{ApprovalId, RunId};
use steward_persistence::{Backend, DecideOutcome, Decision, MasterKey, NewApproval};

use crate::support::{TestDb, register, scope, step};

const TENANTS: [&str; 3] = ["us-acme", "eu-beta", "us-gamma"];
const SECRET: &str = "llm.api_key";

/// One call, by tenant `by`; indexes pick among everything created so far, any tenant's.
#[derive(Debug, Clone)]
enum Call {
    StartRun {
        by: usize,
    },
    ReadRun {
        by: usize,
        pick: usize,
    },
    AskApproval {
        by: usize,
        pick: usize,
    },
    Decide {
        by: usize,
        pick: usize,
        approve: bool,
    },
    ReadAudit {
        by: usize,
    },
    RotateSecret {
        by: usize,
    },
    ReadSecret {
        by: usize,
    },
}

fn call() -> impl Strategy<Value = Call> {
    let by = 0..TENANTS.len();
    let pick = 0usize..16;
    prop_oneof![
        by.clone().prop_map(|by| Call::StartRun { by }),
        (by.clone(), pick.clone()).prop_map(|(by, pick)| Call::ReadRun { by, pick }),
        (by.clone(), pick.clone()).prop_map(|(by, pick)| Call::AskApproval { by, pick }),
        (by.clone(), pick, any::<bool>()).prop_map(|(by, pick, approve)| Call::Decide {
            by,
            pick,
            approve
        }),
        by.clone().prop_map(|by| Call::ReadAudit { by }),
        by.clone().prop_map(|by| Call::RotateSecret { by }),
        by.prop_map(|by| Call::ReadSecret { by }),
    ]
}

/// What the model knows a run to be.
struct Run {
    owner: usize,
    id: RunId,
    steps: u32,
}

/// What the model knows an approval to be.
struct Approval {
    owner: usize,
    id: ApprovalId,
    run: RunId,
    status: &'static str,
}

#[derive(Default)]
struct Model {
    runs: Vec<Run>,
    approvals: Vec<Approval>,
    /// Each tenant's current secret value, once set.
    secrets: BTreeMap<usize, String>,
    /// How many audit entries each tenant has.
    entries: BTreeMap<usize, usize>,
}

async fn play(calls: Vec<Call>) {
    let db = TestDb::new().await;
    register(&db.store, "us-gamma").await;
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    let s = &db.store;
    let mut model = Model::default();
    for (n, call) in calls.into_iter().enumerate() {
        match call {
            Call::StartRun { by } => {
                let id = db.intake(TENANTS[by]).await;
                model.runs.push(Run {
                    owner: by,
                    id,
                    steps: 1,
                });
                *model.entries.entry(by).or_default() += 1;
            }
            Call::ReadRun { by, pick } => {
                let Some(run) = model.runs.get(pick % model.runs.len().max(1)) else {
                    continue;
                };
                let seen = s.run(&scope(TENANTS[by]), run.id).await.unwrap();
                assert_eq!(seen.is_some(), run.owner == by, "call {n}: read run");
                if let Some(seen) = seen {
                    assert_eq!(seen.steps, run.steps);
                }
                let steps = s.steps(&scope(TENANTS[by]), run.id).await.unwrap();
                assert_eq!(steps.is_empty(), run.owner != by);
            }
            Call::AskApproval { by, pick } => {
                let len = model.runs.len().max(1);
                let Some(run) = model.runs.get_mut(pick % len) else {
                    continue;
                };
                let id = ApprovalId::new();
                let mut ask = step(run.id, run.steps, "awaiting_approval");
                ask.new_approval = Some(NewApproval {
                    id,
                    diff_hash: format!("h{n}"),
                    record_version: "1".into(),
                    policy: json!({}),
                });
                let result = s.append_step(&scope(TENANTS[by]), ask).await;
                if run.owner == by {
                    result.unwrap();
                    run.steps += 1;
                    *model.entries.entry(by).or_default() += 1;
                    model.approvals.push(Approval {
                        owner: by,
                        id,
                        run: run.id,
                        status: "pending",
                    });
                } else {
                    assert!(result.is_err(), "call {n}: a step on another tenant's run");
                }
            }
            Call::Decide { by, pick, approve } => {
                let len = model.approvals.len().max(1);
                let Some(approval) = model.approvals.get_mut(pick % len) else {
                    continue;
                };
                let run = model
                    .runs
                    .iter_mut()
                    .find(|r| r.id == approval.run)
                    .expect("the approval's run");
                let decision = if approve {
                    Decision::Approve
                } else {
                    Decision::Reject
                };
                let write = step(run.id, run.steps, "writing");
                let outcome = s
                    .decide_approval(&scope(TENANTS[by]), approval.id, decision, "U1", write)
                    .await;
                if approval.owner != by {
                    assert!(
                        matches!(outcome, Ok(DecideOutcome::NotFound)),
                        "call {n}: another tenant's approval is not found: {outcome:?}"
                    );
                    continue;
                }
                match outcome.unwrap() {
                    DecideOutcome::Decided(_) => {
                        assert_eq!(approval.status, "pending", "call {n}");
                        approval.status = if approve { "approved" } else { "rejected" };
                        run.steps += 1;
                        *model.entries.entry(by).or_default() += 1;
                    }
                    DecideOutcome::AlreadyDecided(a) => {
                        assert_eq!(a.status, approval.status, "call {n}");
                    }
                    DecideOutcome::NotFound => panic!("call {n}: own approval not found"),
                }
            }
            Call::ReadAudit { by } => {
                let entries = s
                    .audit_entries(&scope(TENANTS[by]), 0, 10_000)
                    .await
                    .unwrap();
                assert!(entries.iter().all(|e| e.tenant.as_str() == TENANTS[by]));
                let mine = model.entries.get(&by).copied().unwrap_or(0);
                assert!(
                    entries.len() >= mine,
                    "call {n}: {} entries, at least {mine} expected",
                    entries.len()
                );
                let foreign: Vec<RunId> = model
                    .runs
                    .iter()
                    .filter(|r| r.owner != by)
                    .map(|r| r.id)
                    .collect();
                assert!(
                    entries
                        .iter()
                        .all(|e| e.run_id.is_none_or(|r| !foreign.contains(&r)))
                );
                let report = s.verify_audit(&scope(TENANTS[by])).await.unwrap();
                assert_eq!(report.first_bad, None, "call {n}: the chain verifies");
            }
            Call::RotateSecret { by } => {
                let value = format!("sk-{}-{n}", TENANTS[by]);
                let secret = SecretString::from(value.clone());
                let tenant = scope(TENANTS[by]);
                if model.secrets.contains_key(&by) {
                    s.rotate_secret(&tenant, &key, SECRET, &secret, db.clock_ms(), "test")
                        .await
                        .unwrap();
                } else {
                    s.put_secret(&tenant, &key, SECRET, &secret).await.unwrap();
                }
                model.secrets.insert(by, value);
            }
            Call::ReadSecret { by } => {
                let got = s.secret(&scope(TENANTS[by]), &key, SECRET).await.unwrap();
                assert_eq!(
                    got.map(|g| g.expose_secret().to_owned()),
                    model.secrets.get(&by).cloned(),
                    "call {n}: each tenant reads its own secret, or none"
                );
            }
        }
    }
    // At the end every tenant lists exactly its own runs.
    for (viewer, name) in TENANTS.iter().enumerate() {
        let listed = s.list_runs(&scope(name), 200, None).await.unwrap();
        let mut mine: Vec<RunId> = model
            .runs
            .iter()
            .filter(|r| r.owner == viewer)
            .map(|r| r.id)
            .collect();
        mine.reverse();
        assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), mine);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn random_calls_by_several_tenants_never_cross_tenants(
        calls in prop::collection::vec(call(), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for backend in [Backend::Sqlite, Backend::Postgres] {
            rt.block_on(crate::support::on(backend, play(calls.clone())));
        }
    }
}
