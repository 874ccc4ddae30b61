//! The run actor: one per active run. It folds its journal, does the next step, records it, and
//! goes on until the run waits (for a person, or parked until a rate-limit window opens) or
//! ends. A waiting run stays in memory for the tenant's idle time, so a decision or timer that
//! comes soon is handled by the live actor, and is then passivated: its actor stops, its state
//! is on disk, and its callback or timer starts a new actor from the journal.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use steward_adapters::llm::TriageRequest;
use steward_adapters::slack::{self, ApprovalView, DeniedField};
use steward_core::{Diff, DiffEntry, Incident, RunId};
use steward_persistence::{ApprovalMessage, AuditDraft, NewApproval, StepWrite, StoreError};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::connectors::{Connectors, LlmMsg, ServiceNowMsg, SlackMsg};
use crate::crash::RunWatch;
use crate::journal::{Next, RunState, Step, Verdict, states};
use crate::policy::{FieldRequest, Outcome};
use crate::retry::{CallError, Transient, call, park_until, retrying};
use crate::tenant::TenantMsg;
use crate::tenant_runtime::SharedRuntime;

mod announce;
mod gates;
mod waits;

pub(crate) use announce::{Notice, announce};

/// Fields ServiceNow treats as journals: writing appends an entry, reading returns "".
pub const JOURNAL_FIELDS: &[&str] = &["work_notes", "comments"];

/// How many times a run starts over when the record changes under its approval before it ends
/// `stale`.
pub const MAX_REPROPOSALS: u32 = 2;

/// Stands in the work note for the approver's name until someone approves.
pub const APPROVER_PLACEHOLDER: &str = "[the person who approves]";

/// Messages to a run actor.
#[derive(Debug)]
pub enum RunMsg {
    /// Do the next step.
    Advance,
    /// Something was recorded from outside (a decision) or a timer is due: read the journal
    /// and the run's timers again, then go on.
    Reload,
    /// A waiting run looks whether to stop, at the given count of handled messages: if nothing
    /// came since, it offers to stop once its idle time is over or slots are scarce.
    Idle(u64),
}

/// The actor. Its arguments name the run; the shared tenant runtime does the rest.
pub struct RunActor;

/// A run intake has just committed, as intake wrote it: what the run's actor would otherwise
/// read back from the store as it starts (its row and journal; a new run has no timers).
/// Starting from it saves those reads. If the journal moved on in between (an operator's
/// cancel, say), the actor's first record conflicts and it reads the journal again.
#[derive(Debug, Clone)]
pub struct FreshRun {
    /// The webhook source that delivered the trigger, if any.
    pub source: Option<steward_core::SourceName>,
    /// The trigger as recorded.
    pub trigger: serde_json::Value,
    /// Step 0, as recorded.
    pub first_step: Step,
}

impl FreshRun {
    /// What `run` will be once intake has written it: its step 0 read back from the JSON
    /// that is stored, as the actor's own read would.
    pub fn of(run: &steward_persistence::NewRun) -> Result<Self, serde_json::Error> {
        Ok(Self {
            source: run.source.clone(),
            trigger: run.trigger.clone(),
            first_step: serde_json::from_value(run.first_step.1.clone())?,
        })
    }
}

pub struct RunArgs {
    pub run_id: RunId,
    pub runtime: SharedRuntime,
    /// The tenant supervisor, which decides when a waiting run's actor may stop.
    pub supervisor: ActorRef<TenantMsg>,
    /// How long a waiting run stays in memory before it is passivated; zero stops it at once.
    pub passivate_after: std::time::Duration,
    /// Where the actor notes what it is doing, for its supervisor's crash snapshots.
    pub watch: RunWatch,
    /// The run as intake wrote it, for an actor started right after intake; `None` reads it.
    pub fresh: Option<Box<FreshRun>>,
    /// This actor's place under the process's cap on live run actors, freed when it stops.
    pub slot: crate::live::LiveSlot,
}

pub struct RunActorState {
    run_id: RunId,
    runtime: SharedRuntime,
    source: String,
    run: RunState,
    supervisor: ActorRef<TenantMsg>,
    passivate_after: std::time::Duration,
    /// Messages handled (Advance and Reload), to tell whether an idle deadline is still current.
    handled: u64,
    /// Reloads handled, the first included; the supervisor compares it with the ones it sent.
    reloads: u64,
    watch: RunWatch,
    /// The trace context of the request that started the run (its trigger's `traceparent`):
    /// the parent of each step's span.
    trace_parent: Option<opentelemetry::trace::SpanContext>,
    /// The token reservation the triage under way made, settled with the step that records
    /// the triage (see `gates.rs`).
    settle: Option<gates::TokenSettlement>,
    /// The triage's reservation, taken ahead with the step that recorded the incident.
    reserved: Option<gates::Reserved>,
    /// Whether this actor recorded the run's end, which removed the run's timers with it.
    timers_cleared: bool,
    /// The run as intake wrote it, taken by the first reload in place of the store's copy.
    fresh: Option<Box<FreshRun>>,
    /// Its place under the cap on live run actors; dropped with the state when the actor ends.
    slot: crate::live::LiveSlot,
    /// When the run last began waiting.
    idle_since: std::time::Instant,
}

impl Actor for RunActor {
    type Msg = RunMsg;
    type State = RunActorState;
    type Arguments = RunArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Loading happens on the first message, so that a store error is a handled failure of
        // this run (restarted by the supervisor), not a failed spawn.
        myself.cast(RunMsg::Reload)?;
        Ok(RunActorState {
            run_id: args.run_id,
            runtime: args.runtime,
            source: String::new(),
            run: RunState::default(),
            supervisor: args.supervisor,
            passivate_after: args.passivate_after,
            handled: 0,
            reloads: 0,
            watch: args.watch,
            trace_parent: None,
            settle: None,
            reserved: None,
            timers_cleared: false,
            fresh: args.fresh,
            slot: args.slot,
            idle_since: std::time::Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span =
            info_span!("run", run.id = %state.run_id, tenant = %state.runtime.scope.tenant());
        if let Some(parent) = &state.trace_parent {
            crate::trace_context::set_parent(&span, parent);
        }
        async {
            state.watch.handling(&msg);
            match msg {
                RunMsg::Idle(mark) => {
                    state.idle_check(&myself, mark);
                    return Ok(());
                }
                RunMsg::Reload => {
                    state.reloads += 1;
                    // A run started from intake's copy has no timers yet.
                    let read = match state.fresh.take() {
                        Some(fresh) => Ok(state.start_fresh(*fresh)),
                        None => state.reload().await.map(|()| true),
                    };
                    state.watch.folded(&state.run, &state.run.next(state.now()));
                    if read? {
                        state.fire_due_timers().await?;
                    }
                }
                RunMsg::Advance => {}
            }
            state.handled += 1;
            let next = state.next_now().await;
            debug!(?next, "run step");
            match next {
                Next::Done => {
                    // A run whose actor recorded its end cleared its timers with that step.
                    if !state.timers_cleared {
                        state.clear_timers().await;
                    }
                    myself.stop(None);
                }
                Next::AwaitApproval | Next::Wait { .. } => state.idle(&myself),
                _ => {
                    state.watch.stepping(&next, &state.run);
                    if let Err(e) = state.gated_step(next).await {
                        // Another node owns the tenant now: stop here, without counting a
                        // crash; the owner resumes the run from its journal.
                        if let Some(StoreError::Fenced(why)) = e.downcast_ref::<StoreError>() {
                            info!(%why, "The tenant moved to another node; the run stops here.");
                            myself.stop(Some("fenced".into()));
                            return Ok(());
                        }
                        return Err(e);
                    }
                    myself.cast(RunMsg::Advance)?;
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// A step that cannot go on, with the reason recorded on the run.
struct Fail(String);

/// Why a step stopped short.
enum Halt {
    /// It cannot go on: the run ends `failed`.
    Fail(Fail),
    /// The other side asked for a wait beyond the retry policy's: park until `until` (Unix ms).
    Park { until: i64, reason: String },
}

impl From<Fail> for Halt {
    fn from(fail: Fail) -> Self {
        Halt::Fail(fail)
    }
}

impl<E: std::fmt::Display> From<CallError<E>> for Fail {
    fn from(e: CallError<E>) -> Self {
        Fail(e.to_string())
    }
}

impl RunActorState {
    /// Takes the run as intake wrote it in place of reading it back: its trace context, its
    /// source and its journal of one step. Answers false: nothing was read from the store.
    fn start_fresh(&mut self, fresh: FreshRun) -> bool {
        self.trace_parent = crate::trace_context::from_trigger(&fresh.trigger);
        self.source = fresh
            .source
            .map(|s| s.to_string())
            .unwrap_or_else(|| "api".into());
        self.run = RunState::fold(&[fresh.first_step]);
        false
    }

    async fn reload(&mut self) -> Result<(), StoreError> {
        // A reservation taken ahead was for the run as it stood; the journal read decides
        // anew. What it took stays charged (counting more, never less).
        self.reserved = None;
        // The journal read may have moved on past an end this actor recorded (an operator's
        // retry); whatever ends the run next must clear its timers again.
        self.timers_cleared = false;
        let rt = &self.runtime;
        let run = rt.store.run(&rt.scope, self.run_id).await?;
        let Some(run) = run else {
            return Err(StoreError::NotFound(format!("run {}", self.run_id)));
        };
        self.trace_parent = crate::trace_context::from_trigger(&run.trigger);
        self.source = run
            .source
            .map(|s| s.to_string())
            .unwrap_or_else(|| "api".into());
        let steps = rt.store.steps(&rt.scope, self.run_id).await?;
        let mut journal = Vec::with_capacity(steps.len());
        for record in steps {
            match serde_json::from_value::<Step>(record.body) {
                Ok(step) => journal.push(step),
                Err(e) => {
                    // Keep what could be read: a crash snapshot shows the run that far.
                    self.run = RunState::fold(&journal);
                    return Err(StoreError::Corrupt(format!("step {}: {e}", record.seq)));
                }
            }
        }
        self.run = RunState::fold(&journal);
        Ok(())
    }

    /// Does one step and records its outcome, timing it for `steward_step_duration_seconds`.
    /// Each step has a `run.step` span (a child of the run's recorded trace context, when
    /// there is one) carrying the tenant, run id, step name and outcome, never incident text.
    async fn step(&mut self, next: Next) -> Result<(), ActorProcessingErr> {
        let name = crate::metrics::step_name(&next);
        let span = info_span!(
            "run.step",
            steward.tenant = %self.runtime.scope.tenant(),
            steward.run_id = %self.run_id,
            steward.step = name.unwrap_or("none"),
            steward.outcome = tracing::field::Empty,
        );
        if let Some(parent) = &self.trace_parent {
            crate::trace_context::set_parent(&span, parent);
        }
        let started = std::time::Instant::now();
        let result = self.take_step(next).instrument(span.clone()).await;
        if let Some(name) = name {
            self.runtime.metrics.step_took(name, started.elapsed());
        }
        span.record("steward.outcome", self.step_outcome(result.is_ok()));
        result
    }

    /// A step's outcome for its span: `error`, the run's end state, `parked`, or `ok`.
    fn step_outcome(&self, ok: bool) -> &str {
        match (&self.run.finished, self.run.parked_until) {
            _ if !ok => "error",
            (Some((state, _)), _) => state,
            (None, Some(_)) => "parked",
            (None, None) => "ok",
        }
    }

    async fn take_step(&mut self, next: Next) -> Result<(), ActorProcessingErr> {
        let outcome = match next {
            Next::Fetch => self.fetch().await,
            Next::Triage => self.triage().await,
            Next::Decide => self.decide().map_err(Halt::from),
            Next::RequestApproval => return self.request_approval().await,
            Next::Write => self.write().await,
            Next::Confirm => self.confirm().await,
            Next::Verify => self.verify().await,
            Next::Close => return self.close().await,
            Next::AwaitApproval | Next::Done | Next::Wait { .. } => return Ok(()),
        };
        match outcome {
            // An end decided inside a step (stale, denied) goes through `finish`, so the
            // approver's Slack message says how the run ended.
            Ok(Step::Finished { state, reason }) => self.finish(&state, &reason).await?,
            Ok(step @ Step::Reproposed { .. }) => self.repropose(step).await?,
            Ok(step @ Step::Triaged { .. }) => self.record_with_decision(step).await?,
            Ok(step @ Step::IncidentFetched { .. }) => self.record_reserving_triage(step).await?,
            Ok(step) => self.record(step, None).await?,
            Err(halt) => self.halted(halt).await?,
        }
        Ok(())
    }

    /// Records a triage together with the policy's decision on it, when the run decides next
    /// and the decision opens an approval or allows a write: the decision needs nothing but
    /// the triage and does nothing outside Steward, so both share one commit on the way to
    /// the approval request. A decision that ends the run (every change denied, nothing
    /// proposed) or fails is taken as its own step after the triage, as before.
    async fn record_with_decision(&mut self, triaged: Step) -> Result<(), StoreError> {
        let mut after = self.run.clone();
        after.apply(&triaged);
        if after.next(self.now()) != Next::Decide {
            return self.record(triaged, None).await;
        }
        let started = std::time::Instant::now();
        match self.decide_on(&after) {
            Ok(decided @ Step::PolicyDecided { .. }) => {
                // Like every step's span, the decision's is a child of the run's recorded
                // trace context, when there is one.
                let span = info_span!(
                    "run.step",
                    steward.tenant = %self.runtime.scope.tenant(),
                    steward.run_id = %self.run_id,
                    steward.step = "decide",
                    steward.outcome = tracing::field::Empty,
                );
                if let Some(parent) = &self.trace_parent {
                    crate::trace_context::set_parent(&span, parent);
                }
                let recorded = self
                    .record_all(vec![triaged, decided])
                    .instrument(span.clone())
                    .await;
                self.runtime.metrics.step_took("decide", started.elapsed());
                span.record("steward.outcome", self.step_outcome(recorded.is_ok()));
                recorded
            }
            _ => self.record(triaged, None).await,
        }
    }

    /// Starts over after a stale approval: the approver's message says nothing was written and a
    /// fresh proposal follows, the old approval's timers go, and the run reads the record again.
    async fn repropose(&mut self, step: Step) -> Result<(), StoreError> {
        let Step::Reproposed { reason } = &step else {
            return self.record(step, None).await;
        };
        let told = format!("{reason}. Steward asks for a fresh proposal against the record now.");
        if let Some((channel, ts)) = self.run.message.clone() {
            self.update_message(states::STALE, &told, &channel, &ts)
                .await;
        }
        if let Some((channel, ts)) = self.run.escalation_message.clone() {
            self.update_message(states::STALE, &told, &channel, &ts)
                .await;
        }
        self.clear_timers().await;
        let reason = reason.clone();
        self.record(step, Some(&reason)).await
    }

    /// Records a step that stopped short: the run parks, or ends `failed`.
    async fn halted(&mut self, halt: Halt) -> Result<(), StoreError> {
        match halt {
            Halt::Fail(Fail(reason)) => self.finish(states::FAILED, &reason).await,
            Halt::Park { until, reason } => {
                let step = Step::Parked {
                    until,
                    reason: reason.clone(),
                };
                self.record(step, Some(&reason)).await
            }
        }
    }

    /// A failed call as a halt: the run parks if the other side asked for a wait beyond the
    /// retry policy's and the run has not parked too often in a row; otherwise the step fails
    /// with `what` and the error.
    fn halt<E: Transient>(&self, error: &E, what: &str) -> Halt {
        let policy = &self.runtime.retry;
        let reason = format!("{what}: {error}");
        match park_until(policy, error, self.now()) {
            Some(until) if self.run.parks < policy.max_parks => Halt::Park { until, reason },
            Some(_) => Halt::Fail(Fail(format!(
                "{reason}; still refused after parking {} times",
                self.run.parks
            ))),
            None => Halt::Fail(Fail(reason)),
        }
    }

    /// Asks an adapter actor through the retry owner. Each attempt takes the adapter as it is
    /// then, waiting for a replacement when the one it had has stopped.
    async fn ask<M, T, E>(
        &self,
        pick: fn(&Connectors) -> ActorRef<M>,
        build: impl Fn(RpcReplyPort<Result<T, E>>) -> M,
    ) -> (Result<T, CallError<E>>, u32)
    where
        M: crate::metrics::AdapterMsg,
        T: Send + 'static,
        E: Transient + Send + 'static,
    {
        let rt = &self.runtime;
        let timeout = rt.retry.call_timeout;
        retrying(&rt.retry, rt.store.clock().as_ref(), || async {
            let actor = pick(&rt.live_connectors(timeout).await);
            call(&rt.metrics, &actor, timeout, &build)
                .instrument(info_span!("adapter.call", steward.adapter = M::ADAPTER))
                .await
        })
        .await
    }

    /// Now, from the store's clock.
    fn now(&self) -> i64 {
        self.runtime.store.clock().now_millis()
    }

    async fn fetch(&self) -> Result<Step, Halt> {
        let reference = self
            .run
            .incident_ref
            .clone()
            .ok_or(Fail("run has no incident".into()))?;
        let (result, _) = self
            .ask(
                |c| c.servicenow.clone(),
                |r| ServiceNowMsg::Get(reference.clone(), r),
            )
            .await;
        let incident = result.map_err(|e| self.halt(&e, "reading the incident failed"))?;
        Ok(Step::IncidentFetched { incident })
    }

    async fn triage(&self) -> Result<Step, Halt> {
        let incident = self.incident()?.clone();
        let allowed_fields = self.allowed_fields(&incident);
        let request = TriageRequest {
            incident,
            allowed_fields,
        };
        let (result, attempts) = self
            .ask(|c| c.llm.clone(), |r| LlmMsg::Triage(request.clone(), r))
            .await;
        let reply = result.map_err(|e| {
            self.halt(
                &e,
                &format!("triage failed after {attempts} attempt(s), no proposal"),
            )
        })?;
        Ok(Step::Triaged {
            proposal: reply.proposal,
            provenance: reply.provenance,
            attempts,
        })
    }

    /// Fields the policy may allow on this record, told to the model as a hint only: those
    /// [`PolicyGate::writable`](crate::policy::PolicyGate::writable) answers for, as
    /// [`RunActorState::decide`] would for a change to an empty value.
    fn allowed_fields(&self, incident: &Incident) -> Vec<String> {
        let mut names: Vec<&str> = incident.fields.keys().map(String::as_str).collect();
        names.extend(JOURNAL_FIELDS);
        names.sort_unstable();
        names.dedup();
        let asked: Vec<(&str, &str)> = names.iter().map(|f| (*f, incident.field(f))).collect();
        let base = self.field_request(incident, "", "");
        let writable = self.runtime.policy.writable(&base, &asked);
        names
            .into_iter()
            .zip(writable)
            .filter(|&(_, writable)| writable)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    fn field_request<'a>(
        &'a self,
        incident: &'a Incident,
        field: &'a str,
        value: &'a str,
    ) -> FieldRequest<'a> {
        FieldRequest {
            tenant: self.runtime.scope.tenant().as_str(),
            run_id: "run",
            source: &self.source,
            table: "incident",
            field,
            old_value: incident.field(field),
            value,
        }
    }

    /// The policy gate: a decision per proposed field, and the diff of what it allows.
    fn decide(&self) -> Result<Step, Fail> {
        self.decide_on(&self.run)
    }

    /// [`RunActorState::decide`] for the run at `run`: the state a triage not yet recorded
    /// leads to, when the decision rides with it.
    fn decide_on(&self, run: &RunState) -> Result<Step, Fail> {
        let incident = run
            .incident
            .as_ref()
            .ok_or(Fail("the incident was not read".into()))?;
        let proposal = run.proposal.as_ref().ok_or(Fail("no proposal".into()))?;
        let mut decisions = Vec::new();
        let mut entries = Vec::new();
        let mut needs_approval = false;
        let mut approvers_required = 1;
        let mut model_note = None;
        for change in &proposal.changes {
            let d = self.runtime.policy.decide(&self.field_request(
                incident,
                &change.field,
                &change.value,
            ));
            let is_journal = JOURNAL_FIELDS.contains(&change.field.as_str());
            if d.outcome != Outcome::Denied {
                if change.field == "work_notes" {
                    model_note = Some(change.value.clone());
                } else if is_journal || incident.field(&change.field) != change.value {
                    if d.outcome == Outcome::WithApproval {
                        needs_approval = true;
                        approvers_required = approvers_required.max(d.approvers);
                    }
                    entries.push(DiffEntry {
                        field: change.field.clone(),
                        old: if is_journal {
                            String::new()
                        } else {
                            d.old_value.clone()
                        },
                        new: change.value.clone(),
                    });
                }
            }
            decisions.push(d);
        }
        if entries.is_empty() && model_note.is_none() {
            let every_denied = !decisions.is_empty();
            return Ok(self.finished_step(
                if every_denied {
                    states::DENIED
                } else {
                    states::COMPLETED
                },
                if every_denied {
                    "every proposed change was denied by policy; nothing was posted or written"
                } else {
                    "the model proposed no change"
                },
            ));
        }
        // Steward's own work note goes through the same policy as any other field.
        let note_decision = self.runtime.policy.decide(&self.field_request(
            incident,
            "work_notes",
            "Steward work note",
        ));
        if note_decision.outcome != Outcome::Denied {
            if note_decision.outcome == Outcome::WithApproval {
                needs_approval = true;
                approvers_required = approvers_required.max(note_decision.approvers);
            }
            let note = work_note(
                &self.run_id,
                &proposal.summary,
                &entries,
                model_note.as_deref(),
            );
            entries.push(DiffEntry {
                field: "work_notes".into(),
                old: String::new(),
                new: note,
            });
        }
        let diff = Diff {
            table: "incident".into(),
            sys_id: incident.sys_id.clone(),
            record_version: incident.version().to_owned(),
            entries,
        };
        Ok(Step::PolicyDecided {
            decisions,
            diff_hash: diff.hash(),
            diff,
            needs_approval,
            approval_id: needs_approval.then(steward_core::ApprovalId::new),
            summary: proposal.summary.clone(),
            approvers_required: if needs_approval {
                approvers_required
            } else {
                0
            },
        })
    }

    async fn request_approval(&mut self) -> Result<(), ActorProcessingErr> {
        let rt = self.runtime.clone();
        let Some(approval_id) = self.run.approval_id else {
            return Ok(self
                .finish(states::FAILED, "approval needed but no approval id")
                .await?);
        };
        let parts = self.view_parts();
        let approval = approval_id.to_string();
        let owned = parts.view(&approval);
        let (text, blocks) = slack::approval_message(&owned.as_view());
        let channel = rt.settings.slack.approval_channel.clone();
        let (result, _) = self
            .ask(
                |c| c.slack.clone(),
                |reply| SlackMsg::Post {
                    channel: channel.clone(),
                    text: text.clone(),
                    blocks: blocks.clone(),
                    reply,
                },
            )
            .await;
        match result {
            Ok(posted) => {
                // The approval notes its message in the transaction of this step.
                let step = Step::ApprovalRequested {
                    approval_id,
                    channel: posted.channel,
                    ts: posted.ts,
                };
                self.record(step, None).await?;
            }
            Err(e) => {
                let halt = self.halt(&e, "posting the approval request failed");
                self.halted(halt).await?;
            }
        }
        Ok(())
    }

    /// Checks the record still holds the values the approver saw, records the intent, writes.
    async fn write(&self) -> Result<Step, Halt> {
        let diff = self.diff()?;
        // Only the diff the approval names is written: its hash must be the one decided.
        if self.run.diff_hash.as_deref() != Some(diff.hash().as_str()) {
            return Err(Fail("the diff does not match the hash the approval names".into()).into());
        }
        let current = self.get_current(diff).await?;
        let stale: Vec<String> = diff
            .entries
            .iter()
            .filter(|e| !JOURNAL_FIELDS.contains(&e.field.as_str()))
            .filter(|e| current.field(&e.field) != e.old)
            .map(|e| {
                format!(
                    "{} is now {:?}, not {:?}",
                    e.field,
                    current.field(&e.field),
                    e.old
                )
            })
            .collect();
        if !stale.is_empty() {
            let reason = format!("the record changed since approval: {}", stale.join("; "));
            if self.run.reproposals < MAX_REPROPOSALS {
                return Ok(Step::Reproposed { reason });
            }
            let reason = format!(
                "{reason}; it changed under {} fresh proposals too, so the run stops here",
                self.run.reproposals
            );
            return Ok(self.finished_step(states::STALE, &reason));
        }
        let marker = run_marker(&self.run_id);
        // The intent is recorded first; the `PATCH` is the next step (Confirm), so a crash
        // between the two is resolved by reading the record back.
        Ok(Step::WriteIntended {
            diff_hash: diff.hash(),
            marker,
        })
    }

    /// After the intent: learn whether the write already happened; write if it did not.
    async fn confirm(&self) -> Result<Step, Halt> {
        let diff = self.diff()?;
        let body = self.patch_body(diff);
        let rt = &self.runtime;
        let (result, _) = retrying(&rt.retry, rt.store.clock().as_ref(), || {
            self.confirm_once(diff, &body)
        })
        .await;
        result.map_err(|e| self.halt(&e, "writing to ServiceNow failed"))
    }

    /// One attempt of the write: read the record back, and `PATCH` only if the write has not
    /// already happened. Retrying this whole unit (not the `PATCH` alone) means an ambiguous
    /// failure, such as a 502 sent after ServiceNow applied the change, never writes twice.
    async fn confirm_once(
        &self,
        diff: &Diff,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Step, CallError<steward_adapters::servicenow::ServiceNowError>> {
        let reference = steward_core::IncidentRef::SysId(diff.sys_id.clone());
        let current = self
            .once(
                |c| c.servicenow.clone(),
                |r| ServiceNowMsg::Get(reference.clone(), r),
            )
            .await?;
        let fields_hold = diff
            .entries
            .iter()
            .filter(|e| !JOURNAL_FIELDS.contains(&e.field.as_str()))
            .all(|e| current.field(&e.field) == e.new);
        let has_note = diff.entries.iter().any(|e| e.field == "work_notes");
        let written = fields_hold
            && if has_note {
                let marker = self.marker();
                self.once(
                    |c| c.servicenow.clone(),
                    |reply| ServiceNowMsg::JournalContains {
                        sys_id: diff.sys_id.clone(),
                        element: "work_notes".into(),
                        marker: marker.clone(),
                        reply,
                    },
                )
                .await?
            } else {
                // Without a note, matching values are all the evidence there is.
                !diff.entries.is_empty()
            };
        if written {
            return Ok(Step::Written {
                after: current,
                recovered: true,
            });
        }
        let sys_id = diff.sys_id.clone();
        let after = self
            .once(
                |c| c.servicenow.clone(),
                |r| ServiceNowMsg::Patch(sys_id.clone(), body.clone(), r),
            )
            .await?;
        Ok(Step::Written {
            after,
            recovered: false,
        })
    }

    /// One call to an adapter actor, without retries (the caller owns them).
    async fn once<M, T, E>(
        &self,
        pick: fn(&Connectors) -> ActorRef<M>,
        build: impl Fn(RpcReplyPort<Result<T, E>>) -> M,
    ) -> Result<T, CallError<E>>
    where
        M: crate::metrics::AdapterMsg,
        T: Send + 'static,
        E: Send + 'static,
    {
        let timeout = self.runtime.retry.call_timeout;
        let actor = pick(&self.runtime.live_connectors(timeout).await);
        call(&self.runtime.metrics, &actor, timeout, &build).await
    }

    /// This run's work-note marker.
    fn marker(&self) -> String {
        self.run
            .write_marker
            .clone()
            .unwrap_or_else(|| run_marker(&self.run_id))
    }

    async fn journal_has_marker(&self, sys_id: &str) -> Result<bool, Halt> {
        let marker = self
            .run
            .write_marker
            .clone()
            .unwrap_or_else(|| run_marker(&self.run_id));
        let (result, _) = self
            .ask(
                |c| c.servicenow.clone(),
                |reply| ServiceNowMsg::JournalContains {
                    sys_id: sys_id.to_owned(),
                    element: "work_notes".into(),
                    marker: marker.clone(),
                    reply,
                },
            )
            .await;
        result.map_err(|e| self.halt(&e, "reading the work-note journal failed"))
    }

    /// Reads the record back and lists any field that does not hold what was written.
    async fn verify(&self) -> Result<Step, Halt> {
        let diff = self.diff()?;
        let current = self.get_current(diff).await?;
        let mut mismatches: Vec<String> = diff
            .entries
            .iter()
            .filter(|e| !JOURNAL_FIELDS.contains(&e.field.as_str()))
            .filter(|e| current.field(&e.field) != e.new)
            .map(|e| {
                format!(
                    "{} reads {:?}, wrote {:?}",
                    e.field,
                    current.field(&e.field),
                    e.new
                )
            })
            .collect();
        if diff.entries.iter().any(|e| e.field == "work_notes")
            && !self.journal_has_marker(&diff.sys_id).await?
        {
            mismatches.push("the work note is not in the journal".into());
        }
        Ok(Step::Verified { mismatches })
    }

    /// Ends the run: updates the Slack message if there is one, then records the end.
    async fn close(&mut self) -> Result<(), ActorProcessingErr> {
        if self.run.expired {
            let reason = self.expiry_reason();
            return Ok(self.finish(states::EXPIRED, &reason).await?);
        }
        let (state, reason) = match (&self.run.verdict, &self.run.verified) {
            (Some((Verdict::Reject, _, name)), _) => (
                states::REJECTED,
                format!("rejected by {name}; nothing was written"),
            ),
            (_, Some(m)) if m.is_empty() => (states::COMPLETED, "written and confirmed".to_owned()),
            (_, Some(m)) => (
                states::FAILED,
                format!("written, but the read-back differs: {}", m.join("; ")),
            ),
            _ => (
                states::FAILED,
                "the run reached its end without a write".to_owned(),
            ),
        };
        Ok(self.finish(state, &reason).await?)
    }

    /// Records the run's end, first telling the approver in Slack if a message was posted.
    async fn finish(&mut self, state: &str, reason: &str) -> Result<(), StoreError> {
        if let Some((channel, ts)) = self.run.message.clone() {
            self.update_message(state, reason, &channel, &ts).await;
        }
        if let Some((channel, ts)) = self.run.escalation_message.clone() {
            self.update_message(state, reason, &channel, &ts).await;
        }
        if state == states::FAILED {
            warn!(%reason, "A run failed.");
        }
        let step = self.finished_step(state, reason);
        self.record(step, Some(reason)).await
    }

    fn finished_step(&self, state: &str, reason: &str) -> Step {
        Step::Finished {
            state: state.to_owned(),
            reason: reason.to_owned(),
        }
    }

    async fn update_message(&self, state: &str, reason: &str, channel: &str, ts: &str) {
        let by = self.approvers_named(|_, name| name.to_owned());
        let outcome = match state {
            states::COMPLETED => slack::Outcome::Written { by: &by },
            states::REJECTED => slack::Outcome::Rejected { by: &by },
            states::STALE => slack::Outcome::Stale { reason },
            states::EXPIRED => slack::Outcome::Expired,
            states::CANCELLED => slack::Outcome::Cancelled { reason },
            states::WRITING => slack::Outcome::Approved { by: &by },
            _ => slack::Outcome::Failed { reason },
        };
        let parts = self.view_parts();
        let approval_id = self
            .run
            .approval_id
            .map(|a| a.to_string())
            .unwrap_or_default();
        let owned = parts.view(&approval_id);
        let (text, blocks) = slack::outcome_message(&owned.as_view(), &outcome);
        let (result, _) = self
            .ask(
                |c| c.slack.clone(),
                |reply| SlackMsg::Update {
                    channel: channel.to_owned(),
                    ts: ts.to_owned(),
                    text: text.clone(),
                    blocks: blocks.clone(),
                    reply,
                },
            )
            .await;
        if let Err(error) = result {
            warn!(%error, "Updating the Slack message with the outcome failed.");
        }
    }

    /// Appends a step (and its audit entry), then folds it into the state. A conflict means
    /// something was recorded from outside (a decision): read the journal again. A step that
    /// notes a Slack message already posted is then appended after what came in, so the run
    /// can still update that message when it ends.
    async fn record(&mut self, step: Step, error: Option<&str>) -> Result<(), StoreError> {
        let (write, next) = self.step_write(&self.run.clone(), &step, error)?;
        let rt = &self.runtime;
        let appended = rt.store.append_owned_step(&rt.scope, write);
        let result = rt
            .metrics
            .metrics()
            .time_query("append_step", appended)
            .await;
        self.recorded(step, error, next, result).await
    }

    /// Records `steps`, which follow one another, with one commit where the store can
    /// ([`steward_persistence::Store::append_owned_steps`]), then folds in each one written.
    /// The first that is not written is answered as [`RunActorState::record`] answers it, and
    /// the ones after it are dropped: a conflict reads the journal again, and the run takes
    /// its next step from there.
    async fn record_all(&mut self, steps: Vec<Step>) -> Result<(), StoreError> {
        let mut state = self.run.clone();
        let mut writes = Vec::with_capacity(steps.len());
        let mut states = Vec::with_capacity(steps.len());
        for step in &steps {
            let (write, next) = self.step_write(&state, step, None)?;
            writes.push(write);
            states.push(next.clone());
            state = next;
        }
        let rt = &self.runtime;
        let appended = rt.store.append_owned_steps(&rt.scope, writes);
        let results = rt
            .metrics
            .metrics()
            .time_query("append_step", async { Ok::<_, StoreError>(appended.await) })
            .await?;
        for ((step, next), result) in steps.into_iter().zip(states).zip(results) {
            let moved = result.is_err();
            self.recorded(step, None, next, result).await?;
            if moved {
                break;
            }
        }
        Ok(())
    }

    /// The write that appends `step` to a run at `state`, and the state after it.
    fn step_write(
        &mut self,
        state: &RunState,
        step: &Step,
        error: Option<&str>,
    ) -> Result<(StepWrite, RunState), StoreError> {
        let mut next = state.clone();
        next.apply(step);
        let body = serde_json::to_value(step).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let new_approval = match step {
            Step::PolicyDecided {
                approval_id: Some(id),
                diff,
                diff_hash,
                decisions,
                ..
            } => Some(NewApproval {
                id: *id,
                diff_hash: diff_hash.clone(),
                record_version: diff.record_version.clone(),
                policy: json!(decisions),
            }),
            _ => None,
        };
        let write = StepWrite {
            run_id: self.run_id,
            expected_seq: state.steps,
            kind: step.kind().to_owned(),
            audit: vec![audit_for(&self.run_id, state.steps, step, &body)],
            body,
            new_state: next.stored_state().to_owned(),
            last_error: error.map(str::to_owned),
            new_approval,
            timers: self.timers_for(step),
            charges: self.take_charges(step, &next),
            approval_message: match step {
                Step::ApprovalRequested {
                    approval_id,
                    channel,
                    ts,
                } => Some(ApprovalMessage {
                    approval_id: *approval_id,
                    channel: channel.clone(),
                    ts: ts.clone(),
                }),
                _ => None,
            },
            clears_timers: ends(state, &next),
        };
        Ok((write, next))
    }

    /// Folds in a step the store answered: `next` when it was written; on a conflict, the
    /// journal read again (and a step noting a posted message appended after it).
    async fn recorded(
        &mut self,
        step: Step,
        error: Option<&str>,
        next: RunState,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match result {
            Ok(()) => {
                if ends(&self.run, &next) {
                    self.runtime.metrics.run_finished(next.stored_state());
                    self.timers_cleared = true;
                }
                self.run = next;
                Ok(())
            }
            Err(StoreError::Conflict(why)) => {
                debug!(%why, "journal moved underneath the run; reloading");
                self.reload().await?;
                if self.run.finished.is_none() && notes_a_posted_message(&step) {
                    return Box::pin(self.record(step, error)).await;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn get_current(&self, diff: &Diff) -> Result<Incident, Halt> {
        let reference = steward_core::IncidentRef::SysId(diff.sys_id.clone());
        let (result, _) = self
            .ask(
                |c| c.servicenow.clone(),
                |r| ServiceNowMsg::Get(reference.clone(), r),
            )
            .await;
        result.map_err(|e| self.halt(&e, "reading the record back failed"))
    }

    /// Everyone who approved, earlier votes first, each as `name(id, name)`, joined by "and";
    /// empty when nobody approved.
    fn approvers_named(&self, name: impl Fn(&str, &str) -> String) -> String {
        let mut names: Vec<String> = self.run.votes.iter().map(|(id, n)| name(id, n)).collect();
        if let Some((_, id, n)) = &self.run.verdict {
            names.push(name(id, n));
        }
        names.join(" and ")
    }

    fn patch_body(&self, diff: &Diff) -> serde_json::Map<String, serde_json::Value> {
        let approver = match self.approvers_named(|id, name| format!("{name} (Slack {id})")) {
            named if named.is_empty() => "policy (no approval required)".to_owned(),
            named => named,
        };
        let mut body = diff.patch_body();
        if let Some(serde_json::Value::String(note)) = body.get_mut("work_notes") {
            // Only the header names the approver; other text in the note stays as written.
            *note = note.replacen(APPROVER_PLACEHOLDER, &approver, 1);
        }
        body
    }

    fn incident(&self) -> Result<&Incident, Fail> {
        self.run
            .incident
            .as_ref()
            .ok_or(Fail("the incident was not read".into()))
    }

    fn diff(&self) -> Result<&Diff, Fail> {
        self.run
            .diff
            .as_ref()
            .ok_or(Fail("no diff was decided".into()))
    }

    fn view_parts(&self) -> ViewParts {
        let incident = self.run.incident.clone();
        let denied = self
            .run
            .decisions
            .iter()
            .filter(|d| d.outcome == Outcome::Denied)
            .map(|d| (d.field.clone(), d.value.clone(), d.reason.clone()))
            .collect();
        let entries = self
            .run
            .diff
            .as_ref()
            .map(|d| d.entries.clone())
            .unwrap_or_default();
        let work_note = entries
            .iter()
            .find(|e| e.field == "work_notes")
            .map(|e| e.new.clone())
            .unwrap_or_default();
        ViewParts {
            run_id: self.run_id.to_string(),
            number: incident
                .as_ref()
                .map(|i| i.number.clone())
                .unwrap_or_default(),
            title: incident
                .as_ref()
                .map(|i| i.field("short_description").to_owned())
                .unwrap_or_default(),
            url: incident
                .as_ref()
                .map(|i| self.runtime.incident_url(&i.sys_id)),
            summary: self.run.summary.clone().unwrap_or_default(),
            entries,
            denied,
            work_note,
        }
    }
}

/// Owned pieces of the approval message, borrowed into an [`ApprovalView`].
struct ViewParts {
    run_id: String,
    number: String,
    title: String,
    url: Option<String>,
    summary: String,
    entries: Vec<DiffEntry>,
    denied: Vec<(String, String, String)>,
    work_note: String,
}

impl ViewParts {
    fn view<'a>(&'a self, approval_id: &'a str) -> ApprovalViewOwned<'a> {
        ApprovalViewOwned {
            denied: self
                .denied
                .iter()
                .map(|(field, value, reason)| DeniedField {
                    field,
                    value,
                    reason,
                })
                .collect(),
            parts: self,
            approval_id,
        }
    }
}

struct ApprovalViewOwned<'a> {
    denied: Vec<DeniedField<'a>>,
    parts: &'a ViewParts,
    approval_id: &'a str,
}

impl<'a> ApprovalViewOwned<'a> {
    fn as_view(&'a self) -> ApprovalView<'a> {
        ApprovalView {
            approval_id: self.approval_id,
            run_id: &self.parts.run_id,
            incident_number: &self.parts.number,
            incident_title: &self.parts.title,
            summary: &self.parts.summary,
            entries: &self.parts.entries,
            denied: &self.denied,
            work_note: &self.parts.work_note,
            incident_url: self.parts.url.as_deref(),
        }
    }
}

/// Whether a step taking a run from `before` to `after` ends it.
fn ends(before: &RunState, after: &RunState) -> bool {
    after.finished.is_some() && before.finished.is_none()
}

/// Steps that note a message Steward has posted in Slack. The fold does not depend on their
/// order, so they stay true when something else was recorded first.
fn notes_a_posted_message(step: &Step) -> bool {
    matches!(
        step,
        Step::ApprovalRequested { .. } | Step::ReminderSent { .. } | Step::ApprovalEscalated { .. }
    )
}

/// The marker that identifies this run's work note in the record's journal.
pub fn run_marker(run_id: &RunId) -> String {
    format!("[steward run {run_id}]")
}

/// The work note Steward appends: what changed, why, and who approved it.
pub fn work_note(
    run_id: &RunId,
    summary: &str,
    entries: &[DiffEntry],
    model_note: Option<&str>,
) -> String {
    let mut note = format!(
        "{} Change approved by {APPROVER_PLACEHOLDER}.\n",
        run_marker(run_id)
    );
    for e in entries {
        let old = if e.old.is_empty() { "(empty)" } else { &e.old };
        note.push_str(&format!("- {}: {} -> {}\n", e.field, old, e.new));
    }
    note.push_str(&format!(
        "Triage summary (proposed by the model): {summary}"
    ));
    if let Some(extra) = model_note {
        note.push_str(&format!("\nNote proposed by the model: {extra}"));
    }
    note
}

/// The audit entry for a step: digests and small facts, never the content itself.
fn audit_for(run_id: &RunId, seq: u32, step: &Step, body: &serde_json::Value) -> AuditDraft {
    let digest = hex::encode(Sha256::digest(body.to_string().as_bytes()));
    let mut facts = json!({ "seq": seq, "step_sha256": digest });
    let actor = match step {
        Step::ApprovalDecided { by, .. } | Step::ApprovalVoted { by, .. } => format!("slack:{by}"),
        _ => "steward".to_owned(),
    };
    match step {
        Step::Triaged {
            provenance,
            attempts,
            ..
        } => {
            facts["provider"] = json!(provenance.provider);
            facts["model"] = json!(provenance.model_reported);
            facts["prompt_version"] = json!(provenance.prompt_version);
            facts["attempts"] = json!(attempts);
        }
        Step::PolicyDecided {
            decisions,
            diff_hash,
            approvers_required,
            ..
        } => {
            facts["diff_sha256"] = json!(diff_hash);
            facts["approvers_required"] = json!(approvers_required);
            facts["decisions"] =
                json!(decisions
                .iter()
                .map(|d| json!({"field": d.field, "outcome": d.outcome, "policies": d.policies}))
                .collect::<Vec<_>>());
        }
        Step::ApprovalDecided { verdict, .. } => facts["verdict"] = json!(verdict),
        Step::Finished { state, .. } => facts["state"] = json!(state),
        Step::Held { gate, reason, .. } => {
            facts["gate"] = json!(gate);
            facts["reason"] = json!(reason);
        }
        Step::Reproposed { reason } => facts["reason"] = json!(reason),
        _ => {}
    }
    AuditDraft {
        kind: format!("run.{}", step.kind()),
        run_id: Some(*run_id),
        actor,
        body: facts,
    }
}
