//! The timer service: one task that wakes runs whose durable timers are due. It sleeps until
//! the earliest timer (at most `poll`, so a clock that jumps, or a timer written by another
//! process, is noticed too), and a timer set through the store wakes it early. Timers live in
//! the store, so after a restart the service finds them where they were.
//!
//! Time is the store's clock, the same one that stamps the steps and computes the due times.

use std::collections::BTreeSet;
use std::time::Duration;

use steward_core::{ApprovalId, RunId, TenantId};
use steward_persistence::{NewTimer, Store};
use tokio::task::JoinHandle;
use tracing::{debug, error};

use crate::root::Steward;
use crate::settings::SlackSettings;

/// The kinds of timer a run sets.
pub mod kinds {
    /// Post a reminder in the approval request's thread.
    pub const REMIND: &str = "approval.remind";
    /// Escalate the approval request.
    pub const ESCALATE: &str = "approval.escalate";
    /// Expire the approval request; the run ends `expired`.
    pub const EXPIRE: &str = "approval.expire";
    /// A rate-limit window the run is parked for has opened.
    pub const RESUME: &str = "run.resume";
}

/// How many due timers one round hands out.
const BATCH: u32 = 100;

/// The reminder, escalation and expiry timers of an approval requested at `requested_at`
/// (Unix ms), as the tenant's Slack settings ask; a time of zero sets none of its kind.
pub fn approval_timers(
    settings: &SlackSettings,
    requested_at: i64,
    approval_id: ApprovalId,
) -> Vec<NewTimer> {
    let escalate = if settings.escalates() {
        settings.escalate_after_secs
    } else {
        0
    };
    [
        (kinds::REMIND, settings.remind_after_secs),
        (kinds::ESCALATE, escalate),
        (kinds::EXPIRE, settings.expire_after_secs),
    ]
    .into_iter()
    .filter(|(_, secs)| *secs > 0)
    .map(|(kind, secs)| NewTimer {
        kind: kind.to_owned(),
        due_at: requested_at.saturating_add(secs_to_millis(secs)),
        payload: serde_json::json!({ "approval_id": approval_id.to_string() }),
    })
    .collect()
}

fn secs_to_millis(secs: u64) -> i64 {
    i64::try_from(secs).map_or(i64::MAX, |s| s.saturating_mul(1000))
}

/// A duration in seconds as a person reads it: `72 h`, `90 min`, `45 s`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Starts the timer service for `steward`; it runs until the returned task is aborted.
pub(crate) fn spawn(steward: Steward, poll: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let store = steward.store().clone();
        loop {
            let handed_out = match wake_due(&steward, &store).await {
                Ok(n) => n,
                Err(e) => {
                    error!(error = %e, "Reading due timers failed.");
                    0
                }
            };
            if handed_out >= BATCH as usize {
                continue;
            }
            let pause = pause(&store, poll).await;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = store.timer_set() => {}
            }
        }
    })
}

/// Wakes the run of every due timer, each run once. Returns how many timers were handed out.
async fn wake_due(
    steward: &Steward,
    store: &Store,
) -> Result<usize, steward_persistence::StoreError> {
    let now = store.clock().now_millis();
    let due = store.due_timers(now, BATCH).await?;
    let runs: BTreeSet<(TenantId, RunId)> =
        due.iter().map(|t| (t.tenant.clone(), t.run_id)).collect();
    for (tenant, run_id) in runs {
        debug!(run.id = %run_id, %tenant, "A timer is due; waking the run.");
        steward.wake(&tenant, run_id).await;
    }
    Ok(due.len())
}

/// How long to sleep: until the next timer can be handed out, at most `poll`.
async fn pause(store: &Store, poll: Duration) -> Duration {
    let next = match store.next_timer_at().await {
        Ok(next) => next,
        Err(e) => {
            error!(error = %e, "Reading the next timer failed.");
            None
        }
    };
    let Some(at) = next else {
        return poll;
    };
    let wait = at.saturating_sub(store.clock().now_millis());
    Duration::from_millis(u64::try_from(wait).unwrap_or(0)).min(poll)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slack() -> SlackSettings {
        SlackSettings::new("b".into(), "C1".into(), vec!["U1".into()])
    }

    #[test]
    fn an_approval_gets_a_reminder_and_an_expiry_by_default() {
        let id = ApprovalId::new();
        let timers = approval_timers(&slack(), 1_000, id);
        let kinds: Vec<(&str, i64)> = timers.iter().map(|t| (t.kind.as_str(), t.due_at)).collect();
        assert_eq!(
            kinds,
            vec![
                (kinds::REMIND, 1_000 + 4 * 3600 * 1000),
                (kinds::EXPIRE, 1_000 + 72 * 3600 * 1000),
            ],
            "no escalation without anyone to escalate to"
        );
        assert_eq!(timers[0].payload["approval_id"], id.to_string());
    }

    #[test]
    fn escalation_is_set_when_someone_can_be_reached_and_zero_disables_a_timer() {
        let mut settings = slack();
        settings.escalation_channel = Some("C2".into());
        settings.remind_after_secs = 0;
        settings.expire_after_secs = 0;
        let timers = approval_timers(&settings, 0, ApprovalId::new());
        assert_eq!(timers.len(), 1);
        assert_eq!(timers[0].kind, kinds::ESCALATE);
        assert_eq!(timers[0].due_at, 24 * 3600 * 1000);
    }

    #[test]
    fn absurd_times_do_not_overflow() {
        let mut settings = slack();
        settings.expire_after_secs = u64::MAX;
        let timers = approval_timers(&settings, i64::MAX - 5, ApprovalId::new());
        assert!(timers.iter().all(|t| t.due_at == i64::MAX));
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human_duration(72 * 3600), "72 h");
        assert_eq!(human_duration(90 * 60), "90 min");
        assert_eq!(human_duration(45), "45 s");
        assert_eq!(human_duration(3601), "3601 s");
        assert_eq!(human_duration(0), "0 s");
    }
}
