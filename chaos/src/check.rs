//! The checks after each scenario, and the summary table.
//!
//! - No run is lost: every accepted webhook's run is terminal, or waits validly (for a person
//!   who has not decided yet, or parked for a rate-limit window).
//! - At most one ServiceNow write per approved run, and none for any other run: `PATCH`es per
//!   sys_id at the stand-in, and work-note journal entries carrying the run's marker.
//! - No approval is decided twice: at most one `approval_decided` step per run.
//! - `steward audit verify` passes.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::world::{Server, World, journal};

/// States a run never leaves.
pub const TERMINAL: &[&str] = &[
    "completed",
    "rejected",
    "denied",
    "stale",
    "failed",
    "expired",
    "cancelled",
    "shadowed",
];

/// What one scenario did and what its checks found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The scenario's name.
    pub scenario: String,
    /// SIGKILLs sent to Steward.
    pub kills: u32,
    /// Runs accepted.
    pub runs: usize,
    /// `PATCH`es the ServiceNow stand-in received.
    pub writes: usize,
    /// Faults the stand-ins injected (rule hits, holds included).
    pub faults: u64,
    /// Each broken invariant, described.
    pub violations: Vec<String>,
    /// Final states and how many runs ended in each, as `state×n`.
    pub states: String,
    /// How long the scenario took.
    pub elapsed: Duration,
}

/// Waits until every accepted run is terminal, or `patience` is over.
pub async fn settle(world: &World, patience: Duration) {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        let mut open = 0;
        for accepted in &world.accepted {
            let state = world.state(&accepted.run_id).await.unwrap_or_default();
            if !TERMINAL.contains(&state.as_str()) {
                open += 1;
            }
        }
        if open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs every check on the world as it stands and sums the scenario up.
pub async fn check(world: &World, scenario: &str, started: Instant) -> Outcome {
    let mut outcome = Outcome {
        scenario: scenario.to_owned(),
        kills: world.kills,
        runs: world.accepted.len(),
        faults: world.faults_fired().await,
        ..Outcome::default()
    };
    let servicenow = match world.standin_state(Server::ServiceNow).await {
        Ok(state) => state,
        Err(error) => {
            outcome
                .violations
                .push(format!("the ServiceNow stand-in cannot be read: {error:#}"));
            return outcome;
        }
    };
    let patches = servicenow["patches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    outcome.writes = patches.len();
    let notes = servicenow["journal"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for accepted in &world.accepted {
        let view = match world.run(&accepted.run_id).await {
            Ok(view) => view,
            Err(error) => {
                outcome.violations.push(format!(
                    "run {} is lost: the ops API cannot show it: {error:#}",
                    accepted.run_id
                ));
                continue;
            }
        };
        let run = RunFacts::read(&view, &accepted.sys_id, &patches, &notes);
        *states.entry(run.state.clone()).or_default() += 1;
        run.check(&accepted.run_id, &mut outcome.violations);
    }
    outcome.states = states
        .iter()
        .map(|(state, n)| format!("{state}×{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    match world.audit_verify() {
        Ok(Ok(_)) => {}
        Ok(Err(output)) => outcome
            .violations
            .push(format!("steward audit verify fails: {}", output.trim())),
        Err(error) => outcome
            .violations
            .push(format!("steward audit verify could not run: {error:#}")),
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// What the checks need to know of one run.
#[derive(Debug)]
struct RunFacts {
    state: String,
    decisions: usize,
    approved: bool,
    asked_approval: bool,
    write_intended: bool,
    patches: usize,
    marked_notes: usize,
}

impl RunFacts {
    fn read(view: &Value, sys_id: &str, patches: &[Value], notes: &[Value]) -> Self {
        let steps = journal(view);
        let of_kind = |kind: &str| steps.iter().filter(|s| s["kind"] == kind).count();
        let markers: Vec<String> = steps
            .iter()
            .filter(|s| s["kind"] == "write_intended")
            .filter_map(|s| s["body"]["marker"].as_str().map(str::to_owned))
            .filter(|marker| !marker.is_empty())
            .collect();
        let marked_notes = notes
            .iter()
            .filter(|note| note["element_id"] == sys_id)
            .filter(|note| {
                let text = note["value"].as_str().unwrap_or_default();
                markers.iter().any(|marker| text.contains(marker.as_str()))
            })
            .count();
        Self {
            state: view["run"]["state"].as_str().unwrap_or_default().to_owned(),
            decisions: of_kind("approval_decided"),
            approved: steps
                .iter()
                .any(|s| s["kind"] == "approval_decided" && s["body"]["verdict"] == "approve"),
            asked_approval: of_kind("approval_requested") > 0,
            write_intended: !markers.is_empty(),
            patches: patches.iter().filter(|p| p["sys_id"] == sys_id).count(),
            marked_notes,
        }
    }

    /// Whether the run may write: approved, or allowed by policy without asking anyone.
    fn may_write(&self) -> bool {
        self.approved || (!self.asked_approval && self.decisions == 0 && self.write_intended)
    }

    fn check(&self, run_id: &str, violations: &mut Vec<String>) {
        let state = self.state.as_str();
        let waiting = state == "parked" || (state == "awaiting_approval" && self.decisions == 0);
        if !TERMINAL.contains(&state) && !waiting {
            violations.push(format!(
                "run {run_id} is lost: it stays {state:?} (decisions: {})",
                self.decisions
            ));
        }
        if self.decisions > 1 {
            violations.push(format!(
                "run {run_id}: its approval was decided {} times",
                self.decisions
            ));
        }
        if self.may_write() {
            if self.patches > 1 || self.marked_notes > 1 {
                violations.push(format!(
                    "run {run_id} wrote more than once: {} PATCHes, {} work notes with its marker",
                    self.patches, self.marked_notes
                ));
            }
            if state == "completed" && self.patches == 0 {
                violations.push(format!("run {run_id} is completed but never wrote"));
            }
        } else if self.patches > 0 {
            violations.push(format!(
                "run {run_id} wrote without approval: {} PATCHes ({state})",
                self.patches
            ));
        }
    }
}

/// The summary table of a set of scenarios.
#[derive(Debug, Default)]
pub struct Summary {
    /// One outcome per scenario, in the order run.
    pub outcomes: Vec<Outcome>,
}

impl Summary {
    /// Every violation, each prefixed with its scenario.
    pub fn violations(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .flat_map(|o| {
                o.violations
                    .iter()
                    .map(move |v| format!("{}: {v}", o.scenario))
            })
            .collect()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<40} {:>5} {:>5} {:>6} {:>6} {:>10} {:>8}  final states",
            "scenario", "kills", "runs", "writes", "faults", "violations", "time"
        )?;
        let mut total = Outcome::default();
        for o in &self.outcomes {
            writeln!(
                f,
                "{:<40} {:>5} {:>5} {:>6} {:>6} {:>10} {:>7.1}s  {}",
                o.scenario,
                o.kills,
                o.runs,
                o.writes,
                o.faults,
                o.violations.len(),
                o.elapsed.as_secs_f64(),
                o.states
            )?;
            total.kills += o.kills;
            total.runs += o.runs;
            total.writes += o.writes;
            total.faults += o.faults;
            total.elapsed += o.elapsed;
        }
        write!(
            f,
            "{:<40} {:>5} {:>5} {:>6} {:>6} {:>10} {:>7.1}s",
            format!("total ({} scenarios)", self.outcomes.len()),
            total.kills,
            total.runs,
            total.writes,
            total.faults,
            self.violations().len(),
            total.elapsed.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SYS_ID: &str = "9d385017c611228701d22104cc95c371";

    fn view(state: &str, steps: &[Value]) -> Value {
        json!({"run": {"state": state}, "journal": steps})
    }

    fn step(kind: &str, body: Value) -> Value {
        json!({"kind": kind, "body": body})
    }

    fn approved_path() -> Vec<Value> {
        vec![
            step("received", json!({})),
            step("approval_requested", json!({"ts": "1.000001"})),
            step("approval_decided", json!({"verdict": "approve"})),
            step("write_intended", json!({"marker": "steward-run-42"})),
        ]
    }

    fn patch() -> Value {
        json!({"sys_id": SYS_ID, "body": {}})
    }

    fn note(text: &str) -> Value {
        json!({"element_id": SYS_ID, "element": "work_notes", "value": text})
    }

    fn violations(view: &Value, patches: &[Value], notes: &[Value]) -> Vec<String> {
        let mut found = Vec::new();
        RunFacts::read(view, SYS_ID, patches, notes).check("run-1", &mut found);
        found
    }

    #[test]
    fn an_approved_run_that_wrote_once_passes() {
        let done = view("completed", &approved_path());
        let found = violations(&done, &[patch()], &[note("… steward-run-42 …")]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_second_write_is_caught_by_patches_or_by_marked_work_notes() {
        let done = view("completed", &approved_path());
        let twice = violations(&done, &[patch(), patch()], &[]);
        assert!(twice[0].contains("more than once"), "{twice:?}");
        let notes = [note("steward-run-42"), note("again steward-run-42")];
        let noted = violations(&done, &[patch()], &notes);
        assert!(noted[0].contains("more than once"), "{noted:?}");
        let unrelated = [note("steward-run-42"), note("someone else's note")];
        assert!(violations(&done, &[patch()], &unrelated).is_empty());
    }

    #[test]
    fn a_write_without_approval_is_caught() {
        let rejected = view(
            "rejected",
            &[
                step("approval_requested", json!({})),
                step("approval_decided", json!({"verdict": "reject"})),
            ],
        );
        let found = violations(&rejected, &[patch()], &[]);
        assert!(found[0].contains("without approval"), "{found:?}");
        assert!(violations(&rejected, &[], &[]).is_empty());
    }

    #[test]
    fn a_completed_run_that_never_wrote_is_caught() {
        let found = violations(&view("completed", &approved_path()), &[], &[]);
        assert!(found[0].contains("never wrote"), "{found:?}");
    }

    #[test]
    fn a_run_stuck_outside_a_valid_wait_is_lost() {
        for state in ["writing", "triaging", "received", ""] {
            let found = violations(&view(state, &[]), &[], &[]);
            assert!(found[0].contains("is lost"), "{state}: {found:?}");
        }
        let decided = view("awaiting_approval", &approved_path()[..3]);
        assert!(violations(&decided, &[], &[])[0].contains("is lost"));
        for waiting in ["awaiting_approval", "parked"] {
            assert!(violations(&view(waiting, &[]), &[], &[]).is_empty());
        }
    }

    #[test]
    fn a_second_decision_is_caught() {
        let mut steps = approved_path();
        steps.push(step("approval_decided", json!({"verdict": "reject"})));
        let found = violations(&view("completed", &steps), &[patch()], &[]);
        assert!(
            found.iter().any(|v| v.contains("decided 2 times")),
            "{found:?}"
        );
    }

    #[test]
    fn the_summary_counts_every_scenario_and_violation() {
        let outcome = |name: &str, violations: Vec<String>| Outcome {
            scenario: name.into(),
            kills: 1,
            runs: 2,
            writes: 1,
            violations,
            ..Outcome::default()
        };
        let summary = Summary {
            outcomes: vec![outcome("a", vec![]), outcome("b", vec!["lost".into()])],
        };
        assert_eq!(summary.violations(), vec!["b: lost".to_owned()]);
        let table = summary.to_string();
        assert!(table.contains("total (2 scenarios)"), "{table}");
        let total = table.lines().last().unwrap();
        let numbers: Vec<&str> = total.split_whitespace().skip(3).take(5).collect();
        assert_eq!(numbers, ["2", "4", "2", "0", "1"], "{table}");
    }
}
