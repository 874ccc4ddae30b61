//! Group commit for the many small writes of intake and of running runs. Concurrent
//! [`Store::record_intake`] calls hand their validated run to one batcher task, which writes
//! whatever is pending in one write transaction and commits once: with multi-row statements for
//! the whole batch when it can ([`Store::intake_together`]), else each run under a savepoint of
//! its own. Budget reservations ([`Store::reserve_budget`], one per starting run) ride in the
//! same transactions, and so, on SQLite, do journal steps ([`Store::append_step`]), each under a
//! savepoint of its own. Every caller is answered only after the commit that covers its write
//! has returned, so no caller hears of a write that is not durable, and one fsync serves the
//! whole batch.
//!
//! SQLite has one writer connection, so one batcher. PostgreSQL takes writers side by side, and
//! a single batcher would spend most of its time waiting on round trips one after another; it
//! runs several, each with a queue of its own for its share of the tenants (by a hash of the
//! tenant id). Their batches never touch one tenant's rows together, so they neither wait for
//! nor deadlock one another, and a tenant's reservations are taken in the order they came.
//! Within a batch, tenant rows are locked in tenant order; a batch that still loses a
//! deadlock, or a serialization failure, to a writer outside the batchers is undone whole and
//! written again, once.

use std::sync::{Arc, Mutex};

use sqlx::Executor as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::controls::{MeterAsk, Reservation};
use crate::intake::{IntakeOutcome, ValidRun, keys_distinct};
use crate::runs::{Fence, InBatch};
use crate::store::WriteTx;
use crate::{DecideOutcome, StepWrite, Store, StoreError, TenantScope};

/// The most runs one transaction writes.
const MAX_BATCH: usize = 256;

/// How many runs may wait for the batcher before callers wait to hand theirs over.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

/// The savepoint each run of a batch is written under.
const SAVEPOINT: &str = "intake_job";

/// The savepoint a batch written together is written under.
const TOGETHER: &str = "intake_batch";

/// The savepoint each budget reservation of a batch is taken under.
const RESERVE: &str = "reserve_job";

/// The savepoint each journal step of a batch is written under.
const STEP: &str = "step_job";

/// Starts a step's savepoint.
const STEP_START: &str = "SAVEPOINT step_job";

/// Releases the savepoint of the step before, keeping what it wrote, and starts the next's.
const STEP_NEXT: &str = "RELEASE SAVEPOINT step_job; SAVEPOINT step_job";

/// One validated run waiting to be written, and where to send what became of it.
pub(crate) struct IntakeJob {
    pub(crate) scope: TenantScope,
    pub(crate) run: ValidRun,
    pub(crate) reply: oneshot::Sender<Result<IntakeOutcome, StoreError>>,
}

/// One budget reservation waiting to be taken (its asks checked and in meter order), and
/// where to send its answer.
pub(crate) struct ReserveJob {
    pub(crate) scope: TenantScope,
    pub(crate) asks: Vec<MeterAsk>,
    pub(crate) reply: oneshot::Sender<Result<Reservation, StoreError>>,
}

/// Journal steps of one run waiting to be written, in order (with the lease they must still
/// be under, for a run this node owns), and where to send what became of each.
pub(crate) struct StepJob {
    pub(crate) scope: TenantScope,
    /// One step, or steps that follow one another: once one is not written, the ones after
    /// it are not tried.
    pub(crate) steps: Vec<StepWrite>,
    pub(crate) fence: Option<Fence>,
    pub(crate) reply: oneshot::Sender<Vec<Result<(), StoreError>>>,
}

/// An approval's decision (or expiry) and the step its run records for it, as
/// [`Store::decide_approval`] writes them.
pub(crate) struct DecideJob {
    pub(crate) scope: TenantScope,
    pub(crate) id: steward_core::ApprovalId,
    pub(crate) status: &'static str,
    pub(crate) by: Option<String>,
    pub(crate) step: StepWrite,
}

/// A decision waiting to be written, and where to send what became of it.
type Decision = (
    DecideJob,
    oneshot::Sender<Result<DecideOutcome, StoreError>>,
);

/// The savepoint each decision of a batch is written under.
const DECIDE: &str = "decide_job";

/// Starts a decision's savepoint.
const DECIDE_START: &str = "SAVEPOINT decide_job";

/// Releases the savepoint of the decision before, keeping what it wrote, and starts the next's.
const DECIDE_NEXT: &str = "RELEASE SAVEPOINT decide_job; SAVEPOINT decide_job";

/// What the batcher writes: new runs, the budget reservations each run takes as it starts, and
/// the steps runs record as they go. All are many small writes that would each cost a commit
/// of their own.
pub(crate) enum Job {
    Intake(Box<IntakeJob>),
    Reserve(ReserveJob),
    Step(Box<StepJob>),
    Decide(Box<Decision>),
}

/// How the intake batches of a store were written since it opened: each write of a batch
/// counts once, under the way that wrote it (a batch undone by another writer's deadlock and
/// written again counts twice). Redeliveries, unregistered tenants and runs that fail
/// for a reason of their own send a batch down the longer ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntakePaths {
    /// Fresh batches written at the first try: one script on SQLite, one statement per
    /// tenant on PostgreSQL.
    pub first_try: u64,
    /// Batches written together with a few statements for the whole batch.
    pub together: u64,
    /// Batches written one run at a time, each under a savepoint of its own.
    pub one_by_one: u64,
}

/// The counters behind [`IntakePaths`].
#[derive(Debug, Default)]
pub(crate) struct PathCounters {
    first_try: std::sync::atomic::AtomicU64,
    together: std::sync::atomic::AtomicU64,
    one_by_one: std::sync::atomic::AtomicU64,
}

impl PathCounters {
    fn count(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn read(&self) -> IntakePaths {
        use std::sync::atomic::Ordering::Relaxed;
        IntakePaths {
            first_try: self.first_try.load(Relaxed),
            together: self.together.load(Relaxed),
            one_by_one: self.one_by_one.load(Relaxed),
        }
    }
}

/// How many times a batch is written when another writer's deadlock or serialization failure
/// undid it.
const ATTEMPTS: u32 = 2;

/// The handle on a store's batcher tasks: a queue for each, and the tasks themselves. A store
/// that is the batchers' own has neither.
#[derive(Debug, Default)]
pub(crate) struct IntakeQueue {
    senders: Mutex<Option<Arc<[mpsc::Sender<Job>]>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl IntakeQueue {
    /// Starts `batchers` (at least one) batcher tasks of `store` (a handle without a queue of
    /// its own), each on a queue of its own.
    pub(crate) fn start(store: Store, batchers: usize) -> Self {
        let (senders, workers): (Vec<_>, Vec<_>) = (0..batchers.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
                (sender, spawn_batcher(store.clone(), receiver))
            })
            .unzip();
        Self {
            senders: Mutex::new(Some(senders.into())),
            workers: Mutex::new(workers),
        }
    }

    /// Hands `job` to the batcher of its tenant; fails with a closed-pool error once the
    /// store is closed.
    pub(crate) async fn submit(&self, job: Job) -> Result<(), StoreError> {
        let senders = lock(&self.senders).clone();
        let senders = senders.ok_or(StoreError::Db(sqlx::Error::PoolClosed))?;
        let sender = &senders[share(job.tenant(), senders.len())];
        sender
            .send(job)
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolClosed))
    }

    /// Stops taking jobs, lets the batchers write and answer every job already handed over,
    /// and waits for them to end.
    pub(crate) async fn stop(&self) {
        drop(lock(&self.senders).take());
        let workers = std::mem::take(&mut *lock(&self.workers));
        for worker in workers {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "an intake batcher ended abnormally");
            }
        }
    }
}

/// Starts a batcher on a thread of its own, driving a runtime of its own. A batch is a chain
/// of statements, each a hand-off to the database connection and back; on the service's
/// shared runtime every hand-back would wait behind whatever else is ready to run (requests,
/// run actors), so a batch of a few hundred statements would take that wait a few hundred
/// times, and the batcher, which every durable write waits for, would set the pace of the
/// whole process.
fn spawn_batcher(store: Store, receiver: mpsc::Receiver<Job>) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match runtime {
            Ok(runtime) => runtime.block_on(store.run_batcher(receiver)),
            Err(e) => tracing::error!(error = %e, "the intake batcher's runtime did not start"),
        }
    })
}

impl Job {
    /// The tenant whose rows the job writes.
    fn tenant(&self) -> &str {
        match self {
            Job::Intake(job) => job.scope.id(),
            Job::Reserve(job) => job.scope.id(),
            Job::Step(job) => job.scope.id(),
            Job::Decide(job) => job.0.scope.id(),
        }
    }
}

/// Which of `batchers` queues takes `tenant`'s jobs: the same one for as long as the store is
/// open (FNV-1a of the tenant id).
fn share(tenant: &str, batchers: usize) -> usize {
    let hash = tenant
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    usize::try_from(hash % batchers.max(1) as u64).unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The jobs of one batch, by kind.
#[derive(Default)]
struct Batch {
    runs: Vec<IntakeJob>,
    reservations: Vec<ReserveJob>,
    steps: Vec<StepJob>,
    decisions: Vec<Decision>,
}

/// What became of each job of a committed batch, in the batch's order.
struct Written {
    runs: Vec<Result<IntakeOutcome, StoreError>>,
    reservations: Vec<Result<Reservation, StoreError>>,
    steps: Vec<Vec<Result<(), StoreError>>>,
    decisions: Vec<Result<DecideOutcome, StoreError>>,
}

/// Why a batch failed as a whole: before its commit, when the database undid all of it, or at
/// its commit, whose outcome is then unknown (so it is never written again).
enum BatchError {
    Undone(StoreError),
    Commit(StoreError),
}

/// A deadlock (PostgreSQL's 40P01) or serialization failure (40001): another writer won, the
/// transaction was undone, and writing it again is the documented remedy.
fn lost_to_another_writer(error: &StoreError) -> bool {
    match error {
        StoreError::Db(sqlx::Error::Database(e)) => {
            matches!(e.code().as_deref(), Some("40P01" | "40001"))
        }
        _ => false,
    }
}

impl Store {
    /// How this store's intake batches were written since it opened.
    pub fn intake_paths(&self) -> IntakePaths {
        self.path_counters().read()
    }

    /// A batcher's loop: takes the first pending job, drains up to [`MAX_BATCH`], writes them
    /// in one transaction, and repeats until every queue handle is gone and the queue is
    /// empty.
    async fn run_batcher(self, mut receiver: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        while receiver.recv_many(&mut jobs, MAX_BATCH).await > 0 {
            let mut batch = Batch::default();
            for job in jobs.drain(..) {
                match job {
                    Job::Intake(job) => batch.runs.push(*job),
                    Job::Reserve(job) => batch.reservations.push(job),
                    Job::Step(job) => batch.steps.push(*job),
                    Job::Decide(job) => batch.decisions.push(*job),
                }
            }
            self.write_batch(batch).await;
        }
    }

    /// Writes a batch's runs, reservations and steps in one transaction and answers each,
    /// after the commit: a job that failed was rolled back alone and is answered with its own
    /// error; the others with their outcome, or with the error that failed the whole batch.
    async fn write_batch(&self, batch: Batch) {
        let mut attempt = 1;
        let written = loop {
            match self.try_batch(&batch).await {
                Err(BatchError::Undone(e)) if attempt < ATTEMPTS && lost_to_another_writer(&e) => {
                    let why = "a batch lost to another writer; writing it again";
                    tracing::debug!(error = %e, attempt, "{why}");
                    attempt += 1;
                }
                Err(BatchError::Undone(e) | BatchError::Commit(e)) => break Err(e),
                Ok(written) => break Ok(written),
            }
        };
        let Batch {
            runs,
            reservations,
            steps,
            decisions,
        } = batch;
        let Written {
            runs: run_results,
            reservations: reservation_results,
            steps: step_results,
            decisions: decision_results,
        } = match written {
            Ok(written) => written,
            Err(e) => {
                fail_all(runs.into_iter().map(|job| job.reply), &e);
                fail_all(reservations.into_iter().map(|job| job.reply), &e);
                fail_all(decisions.into_iter().map(|(_, reply)| reply), &e);
                if !steps.is_empty() {
                    tracing::warn!(error = %e, "a batch of journal steps failed as a whole");
                }
                for job in steps {
                    let _ = job
                        .reply
                        .send(job.steps.iter().map(|_| Err(shared_error(&e))).collect());
                }
                return;
            }
        };
        for (job, result) in runs.into_iter().zip(run_results) {
            answer(job.reply, result);
        }
        for (job, result) in reservations.into_iter().zip(reservation_results) {
            answer(job.reply, result);
        }
        for (job, results) in steps.into_iter().zip(step_results) {
            let _ = job.reply.send(results);
        }
        for ((_, reply), result) in decisions.into_iter().zip(decision_results) {
            answer(reply, result);
        }
    }

    /// One attempt at a batch: every job written in one transaction, which is committed.
    async fn try_batch(&self, batch: &Batch) -> Result<Written, BatchError> {
        let mut tx = self.begin_write().await.map_err(BatchError::Undone)?;
        let runs = self
            .write_jobs(&mut tx, &batch.runs)
            .await
            .map_err(BatchError::Undone)?;
        let reservations = self
            .take_reservations(&mut tx, &batch.reservations)
            .await
            .map_err(BatchError::Undone)?;
        let mut in_batch = self
            .chains_of(&mut tx, batch)
            .await
            .map_err(BatchError::Undone)?;
        let steps = self
            .write_steps(&mut tx, &batch.steps, &mut in_batch)
            .await
            .map_err(BatchError::Undone)?;
        let decisions = self
            .write_decisions(&mut tx, &batch.decisions, &mut in_batch)
            .await
            .map_err(BatchError::Undone)?;
        tx.commit()
            .await
            .map_err(|e| BatchError::Commit(StoreError::Db(e)))?;
        Ok(Written {
            runs,
            reservations,
            steps,
            decisions,
        })
    }

    /// What the batch's steps and decisions are written with: on SQLite, the heads of the
    /// audit chains of their tenants, read with one statement when there are two tenants or
    /// more (a lone tenant's is read as its first step needs it, which costs the same).
    /// Intake's runs, written before, have moved the heads already.
    async fn chains_of(&self, tx: &mut WriteTx, batch: &Batch) -> Result<InBatch, StoreError> {
        let mut in_batch = InBatch {
            heads: crate::audit::ChainHeads::new(),
            opening: None,
        };
        if self.is_postgres() {
            return Ok(in_batch);
        }
        let steps = batch
            .steps
            .iter()
            .filter(|job| job.steps.iter().any(|s| !s.audit.is_empty()));
        let mut tenants: Vec<&str> = steps.map(|job| job.scope.id()).collect();
        tenants.extend(batch.decisions.iter().map(|(job, _)| job.scope.id()));
        tenants.sort_unstable();
        tenants.dedup();
        if tenants.len() < 2 {
            return Ok(in_batch);
        }
        for (tenant, head) in crate::intake::tenant_chain_heads(tx, tenants, false).await? {
            in_batch
                .heads
                .insert(tenant, crate::audit::ChainHead::read(head)?);
        }
        Ok(in_batch)
    }

    /// Writes `steps` inside `tx` in the order they came, each step under its own savepoint
    /// (its tenant named first, for PostgreSQL's row-level security): a step that fails, a
    /// journal that moved on (Conflict) or a lost lease (Fenced), is undone and answered
    /// alone, and the steps handed over after it in the same job are not tried (Conflict), so
    /// a job's steps land as a prefix of it, never with a gap. Two steps of one run in one
    /// batch are written in order, so the second sees the first. The error is the
    /// transaction's.
    async fn write_steps(
        &self,
        tx: &mut WriteTx,
        steps: &[StepJob],
        batch: &mut InBatch,
    ) -> Result<Vec<Vec<Result<(), StoreError>>>, StoreError> {
        let mut results = Vec::with_capacity(steps.len());
        // Whether a step's savepoint is still held: released together with the next step's
        // start, in one statement, or by the batch's commit.
        let mut held = false;
        let postgres = self.is_postgres();
        for job in steps {
            let mut answers: Vec<Result<(), StoreError>> = Vec::with_capacity(job.steps.len());
            for step in &job.steps {
                if answers.last().is_some_and(Result::is_err) {
                    answers.push(Err(StoreError::Conflict(format!(
                        "run {}: step {} was not written, as the step before it was not",
                        step.run_id, step.expected_seq
                    ))));
                    continue;
                }
                let start = if held { STEP_NEXT } else { STEP_START };
                if postgres {
                    tx.execute(start).await?;
                } else {
                    batch.opening = Some(start);
                }
                self.set_tenant(tx, job.scope.id()).await?;
                let fence = job.fence.as_ref();
                let result = self
                    .step_in(tx, &job.scope, step, fence, Some(&mut *batch))
                    .await;
                // A step that failed before its first write left its savepoint unstarted,
                // and the one before it (if any) still held: there is nothing to undo.
                let started = batch.opening.take().is_none();
                held |= started;
                if result.is_err() {
                    if started {
                        undo_to(tx, STEP, result.as_ref().err(), postgres).await?;
                    }
                    batch.heads.remove(job.scope.id());
                }
                answers.push(result);
            }
            results.push(answers);
        }
        // The last step's savepoint, if held, is released by the batch's commit.
        Ok(results)
    }

    /// Writes `decisions` inside `tx` in the order they came, each under a savepoint of its
    /// own (its tenant named first, for PostgreSQL's row-level security): one that fails is
    /// undone and answered alone, as is one that finds its approval gone or decided already
    /// (nothing of it was written). The error is the transaction's.
    async fn write_decisions(
        &self,
        tx: &mut WriteTx,
        decisions: &[Decision],
        batch: &mut InBatch,
    ) -> Result<Vec<Result<DecideOutcome, StoreError>>, StoreError> {
        let mut results = Vec::with_capacity(decisions.len());
        // As for steps: a decision's savepoint is released together with the next one's
        // start (on SQLite sent with the decision's first write), and the last by the commit.
        let mut held = false;
        for (job, _) in decisions {
            let start = if held { DECIDE_NEXT } else { DECIDE_START };
            if self.is_postgres() {
                tx.execute(start).await?;
            } else {
                batch.opening = Some(start);
            }
            self.set_tenant(tx, job.scope.id()).await?;
            let result = self.close_approval_in(tx, job, Some(&mut *batch)).await;
            let started = batch.opening.take().is_none();
            held |= started;
            if !matches!(result, Ok(DecideOutcome::Decided(_))) {
                if started {
                    let postgres = self.is_postgres();
                    undo_to(tx, DECIDE, result.as_ref().err(), postgres).await?;
                }
                batch.heads.remove(job.scope.id());
            }
            results.push(result);
        }
        Ok(results)
    }

    /// Takes `reservations` inside `tx`, tenant by tenant (in tenant order, which on
    /// PostgreSQL names the tenant for row-level security), each under its own savepoint where
    /// one is needed: a tenant that is not registered is NotFound for each of its
    /// reservations, and the tenant's old windows are removed when due. The error is the
    /// transaction's.
    async fn take_reservations(
        &self,
        tx: &mut WriteTx,
        reservations: &[ReserveJob],
    ) -> Result<Vec<Result<Reservation, StoreError>>, StoreError> {
        let mut results: Vec<Option<Result<Reservation, StoreError>>> =
            reservations.iter().map(|_| None).collect();
        let mut by_tenant = std::collections::BTreeMap::<&str, Vec<usize>>::new();
        for (i, job) in reservations.iter().enumerate() {
            by_tenant.entry(job.scope.id()).or_default().push(i);
        }
        // SQLite checks every tenant of the batch with one statement and takes the
        // reservations together; PostgreSQL names each tenant for row-level security and
        // checks it then.
        if !self.is_postgres() {
            return self.reserve_together(tx, reservations, by_tenant).await;
        }
        for group in by_tenant.into_values() {
            let scope = &reservations[group[0]].scope;
            if let Err(e) = self.enter_tenant(tx, scope).await {
                if matches!(e, StoreError::NotFound(_)) {
                    for i in group {
                        results[i] = Some(Err(shared_error(&e)));
                    }
                    continue;
                }
                return Err(e);
            }
            self.prune_meters_when_due(tx, scope).await?;
            for i in group {
                let job = &reservations[i];
                // Each reservation under a savepoint: all of its asks or none, and an error
                // (which aborts a PostgreSQL transaction) undone alone.
                savepoint(tx, &format!("SAVEPOINT {RESERVE}")).await?;
                let taken = self.reserve_in(tx, &job.scope, &job.asks).await;
                if !matches!(taken, Ok(Reservation::Granted)) {
                    savepoint(tx, &format!("ROLLBACK TO SAVEPOINT {RESERVE}")).await?;
                }
                savepoint(tx, &format!("RELEASE SAVEPOINT {RESERVE}")).await?;
                results[i] = Some(match taken {
                    Ok(Reservation::Refused {
                        meter,
                        window_start,
                        ..
                    }) => {
                        let ask = job
                            .asks
                            .iter()
                            .find(|a| a.meter == meter && a.window_start == window_start);
                        match ask {
                            Some(ask) => self.refuse_in(tx, &job.scope, ask).await?,
                            None => Err(StoreError::Corrupt(format!(
                                "meter {meter} refused a reservation that did not ask it"
                            ))),
                        }
                    }
                    other => other,
                });
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| StoreError::Corrupt("a reservation was left unanswered".into()))
            })
            .collect()
    }

    /// SQLite's [`Store::take_reservations`]: the tenants checked with one statement, each
    /// tenant's old windows removed when due, and the reservations of registered tenants
    /// taken together in the order they came ([`Store::reserve_all_in`]).
    async fn reserve_together(
        &self,
        tx: &mut WriteTx,
        reservations: &[ReserveJob],
        by_tenant: std::collections::BTreeMap<&str, Vec<usize>>,
    ) -> Result<Vec<Result<Reservation, StoreError>>, StoreError> {
        let tenants: Vec<&str> = by_tenant.keys().copied().collect();
        let known = self.registered_tenants(tx, &tenants).await?;
        for group in by_tenant.values() {
            let scope = &reservations[group[0]].scope;
            if known.contains(scope.id()) {
                self.prune_meters_when_due(tx, scope).await?;
            }
        }
        let live: Vec<usize> = (0..reservations.len())
            .filter(|&i| known.contains(reservations[i].scope.id()))
            .collect();
        let asks: Vec<(&TenantScope, &[crate::MeterAsk])> = live
            .iter()
            .map(|&i| (&reservations[i].scope, reservations[i].asks.as_slice()))
            .collect();
        let mut taken = self.reserve_all_in(tx, &asks).await?.into_iter();
        let mut live = live.into_iter().peekable();
        let mut results = Vec::with_capacity(reservations.len());
        for (i, job) in reservations.iter().enumerate() {
            if live.next_if_eq(&i).is_some() {
                let answer = taken.next().ok_or_else(|| {
                    StoreError::Corrupt("a reservation was left unanswered".into())
                })?;
                results.push(answer);
            } else {
                results.push(Err(StoreError::NotFound(format!(
                    "tenant `{}` is not registered",
                    job.scope.tenant()
                ))));
            }
        }
        Ok(results)
    }

    /// Writes `jobs` inside `tx`. When no two claim the same delivery or change: first with
    /// one script on SQLite ([`Store::intake_script`]) or one statement per tenant on
    /// PostgreSQL ([`Store::intake_by_tenant`]), kept when every key is fresh and every tenant
    /// known; then together, with a few statements for the whole batch, when there are
    /// several. Otherwise, or when writing them together failed (which is then
    /// undone first), one at a time, each under its own savepoint. The error is the
    /// transaction's, which can no longer be trusted.
    async fn write_jobs(
        &self,
        tx: &mut WriteTx,
        jobs: &[IntakeJob],
    ) -> Result<Vec<Result<IntakeOutcome, StoreError>>, StoreError> {
        let runs: Vec<_> = jobs.iter().map(|job| (&job.scope, &job.run)).collect();
        let distinct = keys_distinct(runs.iter().copied());
        // SQLite writes a batch of fresh runs with one script; the rest goes the longer way.
        if distinct
            && !self.is_postgres()
            && !runs.is_empty()
            && let Some(results) = self.intake_script(tx, &runs).await?
        {
            PathCounters::count(&self.path_counters().first_try);
            return Ok(results);
        }
        // PostgreSQL's first try runs under a savepoint: a failed statement aborts the
        // transaction back to it.
        if distinct && self.is_postgres() && !runs.is_empty() {
            savepoint(tx, &format!("SAVEPOINT {TOGETHER}")).await?;
            let tried = self.intake_by_tenant(tx, &runs).await;
            if let Err(e) = &tried {
                tracing::debug!(error = %e, "an intake batch's statements failed");
            }
            let written = tried.ok().flatten();
            end_together(tx, written.is_some()).await?;
            if let Some(results) = written {
                PathCounters::count(&self.path_counters().first_try);
                return Ok(results);
            }
        }
        if runs.len() > 1 && distinct {
            savepoint(tx, &format!("SAVEPOINT {TOGETHER}")).await?;
            let tried = self.intake_together(tx, &runs).await;
            if let Err(e) = &tried {
                tracing::debug!(
                    error = %e,
                    runs = runs.len(),
                    "an intake batch could not be written together; writing its runs one by one"
                );
            }
            end_together(tx, tried.is_ok()).await?;
            if let Ok(results) = tried {
                PathCounters::count(&self.path_counters().together);
                return Ok(results);
            }
        }
        // One by one in tenant order, as the batch written together locks its tenants.
        if !jobs.is_empty() {
            PathCounters::count(&self.path_counters().one_by_one);
        }
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|i| jobs[*i].scope.id());
        let mut results: Vec<Option<Result<IntakeOutcome, StoreError>>> =
            jobs.iter().map(|_| None).collect();
        for i in order {
            results[i] = Some(self.write_job(tx, &jobs[i]).await?);
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| StoreError::Corrupt("a run was left unwritten".into())))
            .collect()
    }

    /// Writes one run under its own savepoint. The outer error means the transaction itself
    /// can no longer be trusted (the savepoint could not be set, released or rolled back to);
    /// the inner one is this run's own failure, already undone.
    async fn write_job(
        &self,
        tx: &mut WriteTx,
        job: &IntakeJob,
    ) -> Result<Result<IntakeOutcome, StoreError>, StoreError> {
        savepoint(tx, &format!("SAVEPOINT {SAVEPOINT}")).await?;
        let result = self.intake_in(tx, &job.scope, &job.run).await;
        if result.is_err() {
            savepoint(tx, &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")).await?;
        }
        savepoint(tx, &format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?;
        Ok(result)
    }
}

/// Undoes a step's or decision's writes, back to its savepoint `name`. On SQLite its savepoint
/// was started by the first statements sent with its first write, so an error of the database
/// itself (not a refusal the store made of a row) may have stopped those statements before the
/// savepoint began, and an undo would then reach the savepoint of the write before: the batch
/// fails as a whole instead.
async fn undo_to(
    tx: &mut WriteTx,
    name: &str,
    error: Option<&StoreError>,
    postgres: bool,
) -> Result<(), StoreError> {
    if let Some(e @ StoreError::Db(_)) = error
        && !postgres
    {
        return Err(shared_error(e));
    }
    savepoint(tx, &format!("ROLLBACK TO SAVEPOINT {name}")).await
}

async fn savepoint(tx: &mut WriteTx, sql: &str) -> Result<(), StoreError> {
    sqlx::query(sql).execute(&mut **tx).await?;
    Ok(())
}

/// Ends the savepoint a batch written together was tried under: released, keeping what was
/// written under it, when `keep`; else undone to it first.
async fn end_together(tx: &mut WriteTx, keep: bool) -> Result<(), StoreError> {
    if !keep {
        savepoint(tx, &format!("ROLLBACK TO SAVEPOINT {TOGETHER}")).await?;
    }
    savepoint(tx, &format!("RELEASE SAVEPOINT {TOGETHER}")).await
}

/// Sends one answer; a caller that stopped waiting is no longer interested in it.
fn answer<T>(reply: oneshot::Sender<Result<T, StoreError>>, result: Result<T, StoreError>) {
    let _ = reply.send(result);
}

/// Answers every reply with `error`, which the whole batch shares.
fn fail_all<T>(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<T, StoreError>>>,
    error: &StoreError,
) {
    let mut replies = replies.into_iter().peekable();
    if replies.peek().is_none() {
        return;
    }
    tracing::warn!(error = %error, "an intake batch failed as a whole");
    for reply in replies {
        answer(reply, Err(shared_error(error)));
    }
}

/// A copy of an error that several callers share. Database errors other than a closed or
/// exhausted pool are not `Clone`; they are passed on as an I/O error carrying their message.
pub(crate) fn shared_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Db(sqlx::Error::PoolClosed) => StoreError::Db(sqlx::Error::PoolClosed),
        StoreError::Db(sqlx::Error::PoolTimedOut) => StoreError::Db(sqlx::Error::PoolTimedOut),
        StoreError::Db(e) => StoreError::Db(sqlx::Error::Io(std::io::Error::other(e.to_string()))),
        StoreError::Migrate(e) => {
            StoreError::Db(sqlx::Error::Io(std::io::Error::other(e.to_string())))
        }
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Fenced(m) => StoreError::Fenced(m.clone()),
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        StoreError::WrongMasterKey { expected, found } => StoreError::WrongMasterKey {
            expected: expected.clone(),
            found: found.clone(),
        },
        StoreError::Crypto(m) => StoreError::Crypto(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_database_error_keeps_its_message() {
        let original = StoreError::Db(sqlx::Error::Protocol("disk I/O error".into()));
        let copy = shared_error(&original);
        assert!(
            matches!(copy, StoreError::Db(sqlx::Error::Io(_))),
            "{copy:?}"
        );
        assert!(copy.to_string().contains("disk I/O error"), "{copy}");
    }

    #[test]
    fn a_tenant_always_goes_to_the_same_batcher_and_tenants_spread_over_all() {
        let tenants: Vec<String> = (0..50).map(|i| format!("us-tenant-{i:02}")).collect();
        let mut counts = [0_usize; 4];
        for tenant in &tenants {
            let at = share(tenant, 4);
            assert_eq!(at, share(tenant, 4), "{tenant}");
            counts[at] += 1;
        }
        assert!(counts.iter().all(|&n| n >= 5), "{counts:?}");
        assert_eq!(share("us-acme", 1), 0);
        assert_eq!(share("us-acme", 0), 0, "no batcher count is one queue");
    }

    #[test]
    fn a_shared_closed_pool_stays_a_closed_pool() {
        let copy = shared_error(&StoreError::Db(sqlx::Error::PoolClosed));
        assert!(matches!(copy, StoreError::Db(sqlx::Error::PoolClosed)));
        let copy = shared_error(&StoreError::Conflict("run x exists".into()));
        assert_eq!(copy.to_string(), "conflict: run x exists");
    }
}
