//! What a run actor is doing, kept where its supervisor can read it: the message being handled,
//! the step, the run's folded state. The actor notes each before it acts, so when it fails (an
//! error or a panic) the supervisor knows what it was doing and stores a crash snapshot. The
//! same record answers live inspection (current step, what the run waits on, uptime).
//!
//! One [`RunWatch`] serves a run across restarts of its actor, so a crash right after a restart
//! still shows the last state that was known.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use steward_core::RunId;
use steward_persistence::NewCrash;

use crate::journal::{Next, RunState};

/// What the run's current (or last) actor was doing.
#[derive(Debug)]
struct CrashContext {
    message: Option<String>,
    step: Option<Next>,
    state: RunState,
    started: Instant,
    last_error: Option<String>,
}

/// A shared handle on one run's [`CrashContext`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RunWatch(Arc<Mutex<CrashContext>>);

/// A run actor's live status, as read from its watch.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    /// The run state its folded journal is in (`triaging`, `writing`, …).
    pub state: Option<String>,
    pub message: Option<String>,
    pub step: Option<String>,
    /// The adapter or person the current step waits on.
    pub waits_on: Option<&'static str>,
    pub last_error: Option<String>,
    pub uptime_ms: u64,
}

impl Default for RunWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RunWatch {
    /// A watch for a run whose actor starts now.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(CrashContext {
            message: None,
            step: None,
            state: RunState::default(),
            started: Instant::now(),
            last_error: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, CrashContext> {
        // Nothing panics while holding the lock, so a poisoned one still holds a whole value.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new actor starts for the run (after a wake or a restart).
    pub fn started(&self) {
        let mut ctx = self.lock();
        ctx.started = Instant::now();
        ctx.message = None;
    }

    /// The actor starts handling `message` (its `Debug` form names it).
    pub fn handling(&self, message: &impl std::fmt::Debug) {
        self.lock().message = Some(snake_case(&format!("{message:?}")));
    }

    /// The run's state as folded from its journal (after a load, even a partial one), and the
    /// step that state leads to.
    pub fn folded(&self, state: &RunState, next: &Next) {
        let mut ctx = self.lock();
        ctx.state.clone_from(state);
        ctx.step = Some(next.clone());
    }

    /// The actor starts `next` from `state`.
    pub fn stepping(&self, next: &Next, state: &RunState) {
        let mut ctx = self.lock();
        ctx.step = Some(next.clone());
        ctx.state.clone_from(state);
    }

    /// The actor failed with `error`; returns the crash snapshot to store.
    pub fn crashed(&self, run_id: RunId, attempt: usize, error: &str) -> NewCrash {
        let mut ctx = self.lock();
        ctx.last_error = Some(error.to_owned());
        NewCrash {
            run_id,
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            journal_offset: ctx.state.steps,
            step: ctx
                .step
                .as_ref()
                .map_or_else(|| "unknown".into(), step_name),
            message: ctx.message.clone().unwrap_or_else(|| "unknown".into()),
            error: error.to_owned(),
            state: serde_json::to_value(&ctx.state).unwrap_or_default(),
        }
    }

    /// What the run's actor is doing now.
    pub fn status(&self) -> RunStatus {
        let ctx = self.lock();
        let loaded = ctx.state.steps > 0;
        RunStatus {
            state: loaded.then(|| ctx.state.stored_state().to_owned()),
            message: ctx.message.clone(),
            step: ctx.step.as_ref().map(step_name),
            waits_on: ctx.step.as_ref().and_then(waits_on),
            last_error: ctx.last_error.clone(),
            uptime_ms: millis(ctx.started.elapsed()),
        }
    }
}

/// The step's name: `RequestApproval` is `request_approval`; fields are left out.
pub fn step_name(next: &Next) -> String {
    snake_case(&format!("{next:?}"))
}

/// What a step waits on while it runs.
pub fn waits_on(next: &Next) -> Option<&'static str> {
    match next {
        Next::Fetch | Next::Write | Next::Confirm | Next::Verify => Some("servicenow"),
        Next::Triage => Some("llm"),
        Next::RequestApproval | Next::Close => Some("slack"),
        Next::AwaitApproval => Some("approval"),
        Next::Wait { .. } => Some("timer"),
        _ => None,
    }
}

/// The leading identifier of a `Debug` form, in snake case.
fn snake_case(debug: &str) -> String {
    let mut out = String::new();
    for c in debug.chars().take_while(char::is_ascii_alphanumeric) {
        if c.is_ascii_uppercase() {
            if !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Milliseconds, saturating.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use steward_core::{Incident, IncidentRef};

    use super::*;
    use crate::journal::Step;
    use crate::run::RunMsg;

    fn state_with_secret() -> RunState {
        let mut fields = BTreeMap::new();
        fields.insert(
            "description".to_owned(),
            "the bot token is xoxb-123-456-secretvalue".to_owned(),
        );
        fields.insert("u_vendor_password".to_owned(), "hunter2".to_owned());
        RunState::fold(&[
            Step::Received {
                incident: IncidentRef::Number("INC0010001".into()),
                source: None,
                delivery_id: None,
                requester: None,
            },
            Step::IncidentFetched {
                incident: Incident {
                    sys_id: "a".repeat(32),
                    number: "INC0010001".into(),
                    fields,
                },
            },
        ])
    }

    #[test]
    fn a_crash_snapshot_holds_the_message_step_state_and_error() {
        let watch = RunWatch::new();
        let state = state_with_secret();
        watch.handling(&RunMsg::Advance);
        watch.stepping(&Next::RequestApproval, &state);
        let crash = watch.crashed(RunId::new(), 2, "panicked at 'boom'");
        assert_eq!(crash.message, "advance");
        assert_eq!(crash.step, "request_approval");
        assert_eq!((crash.attempt, crash.journal_offset), (2, 2));
        assert_eq!(crash.error, "panicked at 'boom'");
        assert_eq!(crash.state["incident"]["number"], "INC0010001");
        let status = watch.status();
        assert_eq!(status.last_error.as_deref(), Some("panicked at 'boom'"));
        assert_eq!(status.waits_on, Some("slack"));
        assert_eq!(status.state.as_deref(), Some("triaging"));
    }

    #[test]
    fn a_watch_outlives_a_restart_of_its_actor() {
        let watch = RunWatch::new();
        watch.stepping(&Next::Triage, &state_with_secret());
        watch.started();
        watch.handling(&RunMsg::Reload);
        let crash = watch.crashed(RunId::new(), 1, "stored data is corrupt");
        assert_eq!(crash.message, "reload");
        assert_eq!(
            crash.step, "triage",
            "the last step known before the restart"
        );
        assert_eq!(crash.state["steps"], 2);
    }

    #[test]
    fn a_watch_that_saw_nothing_says_so() {
        let crash = RunWatch::new().crashed(RunId::new(), 1, "e");
        assert_eq!(
            (crash.step.as_str(), crash.message.as_str()),
            ("unknown", "unknown")
        );
        assert_eq!(RunWatch::new().status().state, None);
    }

    #[test]
    fn step_names_are_snake_case_without_fields() {
        assert_eq!(step_name(&Next::RequestApproval), "request_approval");
        assert_eq!(step_name(&Next::Wait { until: 5 }), "wait");
        assert_eq!(step_name(&Next::Fetch), "fetch");
        assert_eq!(waits_on(&Next::Triage), Some("llm"));
        assert_eq!(waits_on(&Next::Decide), None);
    }
}
