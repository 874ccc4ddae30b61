//! Group commit for intake. Concurrent [`Store::record_intake`] calls hand their validated run to
//! one batcher task, which writes whatever is pending in one write transaction and commits
//! once: with multi-row statements for the whole batch when it can
//! ([`Store::intake_together`]), else each run under a savepoint of its own. Every caller is answered only after the commit
//! that covers its run has returned, so no caller hears of a write that is not durable, and
//! one fsync serves the whole batch.

use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::intake::{IntakeOutcome, ValidRun, keys_distinct};
use crate::store::WriteTx;
use crate::{Store, StoreError, TenantScope};

/// The most runs one transaction writes.
const MAX_BATCH: usize = 256;

/// How many runs may wait for the batcher before callers wait to hand theirs over.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

/// The savepoint each run of a batch is written under.
const SAVEPOINT: &str = "intake_job";

/// The savepoint a batch written together is written under.
const TOGETHER: &str = "intake_batch";

/// One validated run waiting to be written, and where to send what became of it.
pub(crate) struct IntakeJob {
    pub(crate) scope: TenantScope,
    pub(crate) run: ValidRun,
    pub(crate) reply: oneshot::Sender<Result<IntakeOutcome, StoreError>>,
}

/// The handle on a store's batcher task: its queue and the task itself. A store that is the
/// batcher's own has neither.
#[derive(Debug, Default)]
pub(crate) struct IntakeQueue {
    sender: Mutex<Option<mpsc::Sender<IntakeJob>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl IntakeQueue {
    /// Starts the batcher task of `store` (a handle without a queue of its own).
    pub(crate) fn start(store: Store) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let worker = tokio::spawn(store.run_batcher(receiver));
        Self {
            sender: Mutex::new(Some(sender)),
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Hands `job` to the batcher; fails with a closed-pool error once the store is closed.
    pub(crate) async fn submit(&self, job: IntakeJob) -> Result<(), StoreError> {
        let sender = lock(&self.sender).clone();
        let sender = sender.ok_or(StoreError::Db(sqlx::Error::PoolClosed))?;
        sender
            .send(job)
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolClosed))
    }

    /// Stops taking runs, lets the batcher write and answer every run already handed over,
    /// and waits for it to end.
    pub(crate) async fn stop(&self) {
        drop(lock(&self.sender).take());
        let worker = lock(&self.worker).take();
        if let Some(worker) = worker
            && let Err(e) = worker.await
        {
            tracing::error!(error = %e, "the intake batcher ended abnormally");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A written run waiting for its batch's commit.
type Pending = (
    oneshot::Sender<Result<IntakeOutcome, StoreError>>,
    IntakeOutcome,
);

impl Store {
    /// The batcher's loop: takes the first pending run, drains up to [`MAX_BATCH`], writes
    /// them in one transaction, and repeats until every queue handle is gone and the queue is
    /// empty.
    async fn run_batcher(self, mut receiver: mpsc::Receiver<IntakeJob>) {
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        while receiver.recv_many(&mut jobs, MAX_BATCH).await > 0 {
            self.write_batch(std::mem::take(&mut jobs)).await;
        }
    }

    /// Writes `jobs` in one transaction and answers each: a run that fails is rolled back
    /// alone and answered with its own error; the others are answered after the commit, with
    /// their outcome or the commit's error.
    async fn write_batch(&self, jobs: Vec<IntakeJob>) {
        let mut tx = match self.begin_write().await {
            Ok(tx) => tx,
            Err(e) => return fail_all(jobs.into_iter().map(|job| job.reply), &e),
        };
        let results = match self.write_jobs(&mut tx, &jobs).await {
            Ok(results) => results,
            Err(e) => return fail_all(jobs.into_iter().map(|job| job.reply), &e),
        };
        let mut pending: Vec<Pending> = Vec::with_capacity(jobs.len());
        for (job, result) in jobs.into_iter().zip(results) {
            match result {
                Ok(outcome) => pending.push((job.reply, outcome)),
                Err(e) => answer(job.reply, Err(e)),
            }
        }
        match tx.commit().await {
            Ok(()) => {
                for (reply, outcome) in pending {
                    answer(reply, Ok(outcome));
                }
            }
            Err(e) => fail_all(
                pending.into_iter().map(|(reply, _)| reply),
                &StoreError::Db(e),
            ),
        }
    }

    /// Writes `jobs` inside `tx`: together, with a few statements for the whole batch, when
    /// there are several and no two claim the same delivery or change; one at a time, each
    /// under its own savepoint, otherwise or when writing them together failed (which is
    /// then undone first). The error is the transaction's, which can no longer be trusted.
    async fn write_jobs(
        &self,
        tx: &mut WriteTx,
        jobs: &[IntakeJob],
    ) -> Result<Vec<Result<IntakeOutcome, StoreError>>, StoreError> {
        let runs: Vec<_> = jobs.iter().map(|job| (&job.scope, &job.run)).collect();
        if runs.len() > 1 && keys_distinct(runs.iter().copied()) {
            savepoint(tx, &format!("SAVEPOINT {TOGETHER}")).await?;
            match self.intake_together(tx, &runs).await {
                Ok(results) => {
                    savepoint(tx, &format!("RELEASE SAVEPOINT {TOGETHER}")).await?;
                    return Ok(results);
                }
                Err(e) => {
                    tracing::debug!(error = %e, runs = runs.len(),
                        "an intake batch could not be written together; writing its runs one by one");
                    savepoint(tx, &format!("ROLLBACK TO SAVEPOINT {TOGETHER}")).await?;
                    savepoint(tx, &format!("RELEASE SAVEPOINT {TOGETHER}")).await?;
                }
            }
        }
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            results.push(self.write_job(tx, job).await?);
        }
        Ok(results)
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

async fn savepoint(tx: &mut WriteTx, sql: &str) -> Result<(), StoreError> {
    sqlx::query(sql).execute(&mut **tx).await?;
    Ok(())
}

/// Sends one answer; a caller that stopped waiting is no longer interested in it.
fn answer(
    reply: oneshot::Sender<Result<IntakeOutcome, StoreError>>,
    result: Result<IntakeOutcome, StoreError>,
) {
    let _ = reply.send(result);
}

/// Answers every reply with `error`, which the whole batch shares.
fn fail_all(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<IntakeOutcome, StoreError>>>,
    error: &StoreError,
) {
    tracing::warn!(error = %error, "an intake batch failed as a whole");
    for reply in replies {
        answer(reply, Err(shared_error(error)));
    }
}

/// A copy of an error that several callers share. Database errors other than a closed or
/// exhausted pool are not `Clone`; they are passed on as an I/O error carrying their message.
fn shared_error(error: &StoreError) -> StoreError {
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
    fn a_shared_closed_pool_stays_a_closed_pool() {
        let copy = shared_error(&StoreError::Db(sqlx::Error::PoolClosed));
        assert!(matches!(copy, StoreError::Db(sqlx::Error::PoolClosed)));
        let copy = shared_error(&StoreError::Conflict("run x exists".into()));
        assert_eq!(copy.to_string(), "conflict: run x exists");
    }
}
