//! SQLite's checkpoints, taken off the writer connection. In WAL mode every commit appends the
//! pages it changed to the `-wal` file, and a checkpoint copies them back into the database file
//! and syncs it. Left to itself, SQLite checkpoints on the connection that committed, once the
//! WAL holds 1,000 pages: at intake's rates that was several times a second, each time holding
//! the single writer (and so every batch waiting behind it) through two syncs and megabytes of
//! copying.
//!
//! Here a connection of its own checkpoints every [`EVERY`], in `PASSIVE` mode: it copies what
//! no reader still needs and never waits for the writer, which keeps appending meanwhile. The
//! writer still checkpoints by itself once the WAL reaches [`WRITER_BACKSTOP`] pages, which
//! bounds the WAL when this task falls behind or a long reader holds old pages: SQLite starts
//! the WAL over only when a checkpoint has copied all of it, and the writer's own checkpoint,
//! taken between its transactions, is the one that reliably does.

use std::time::Duration;

use sqlx::AnyPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the background connection checkpoints.
pub(crate) const EVERY: Duration = Duration::from_millis(100);

/// The WAL's length, in pages, at which the writer checkpoints by itself
/// (`PRAGMA wal_autocheckpoint`); 64 MiB at the default page size.
pub(crate) const WRITER_BACKSTOP: u32 = 16_384;

/// Failed checkpoints in a row between two warnings: about a minute at [`EVERY`].
const WARN_EVERY: u64 = 600;

/// The checkpointing task and the signal that stops it.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts checkpointing through `pool` (one connection that may write), every [`EVERY`].
    pub(crate) fn start(pool: AnyPool) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                match checkpoint(&pool).await {
                    Ok(()) => failures = 0,
                    // A checkpoint that fails leaves the pages in the WAL, where readers still
                    // find them and the writer's own checkpoint copies them later; one that
                    // keeps failing is said once, then about once a minute.
                    Err(e) => {
                        if failures.is_multiple_of(WARN_EVERY) {
                            tracing::warn!(
                                error = %e,
                                failures = failures + 1,
                                "background WAL checkpoints are failing; the writer checkpoints \
                                 by itself once the WAL reaches its limit"
                            );
                        }
                        failures += 1;
                    }
                }
            }
            pool.close().await;
        });
        Self {
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Stops checkpointing and closes the connection; the writer's own checkpoint, as it
    /// closes, copies whatever is left.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the WAL checkpointer ended abnormally");
        }
    }
}

/// One passive checkpoint. SQLite answers with a row (busy, frames in the WAL, frames
/// copied); nothing here needs it, so it is read and dropped.
async fn checkpoint(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_optional(pool)
        .await?;
    Ok(())
}
