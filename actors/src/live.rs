//! The process-wide cap on live run actors. Each run actor holds a [`LiveSlot`]; a run woken
//! while every slot is taken waits in one queue, shared by all tenants and kept in arrival
//! order, and is admitted when an actor stops and hands its slot on. A queued run is only its
//! id and its tenant supervisor's address, so a burst of deliveries costs memory for the
//! actors that run, not for the runs behind them; its actor reads the run from the store.
//!
//! A slot is released when the guard is dropped, which happens however the actor ends
//! (stopped, passivated, failed, or never started because its spawn failed), and also when an
//! admission message is dropped unread with a stopped supervisor's mailbox. So slots cannot
//! leak.
//!
//! While slots are scarce, a run that starts waiting gives its slot up at once instead of
//! lingering for the passivation delay (see [`LiveSlot::scarce`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::gauge::Gauge;
use ractor::{ActorRef, MessagingErr};
use steward_core::RunId;

use crate::tenant::TenantMsg;

/// The default cap: at about 60 KB per live run actor, 2,000 actors are some 120 MB.
pub const DEFAULT_MAX_LIVE: usize = 2_000;

/// The cap, the count of slots held, and the runs waiting for one.
pub struct LiveRuns {
    max: usize,
    inner: Mutex<Inner>,
    live_gauge: Gauge,
    queued_gauge: Gauge,
}

struct Inner {
    live: usize,
    queue: VecDeque<Queued>,
}

struct Queued {
    supervisor: ActorRef<TenantMsg>,
    run_id: RunId,
}

/// What a tenant supervisor gets when it asks for a slot.
pub enum Admission {
    /// A slot for the run's actor.
    Admitted(LiveSlot),
    /// Every slot is taken: the run is queued and its supervisor gets
    /// [`TenantMsg::Admit`] when a slot is free.
    Queued,
}

impl LiveRuns {
    /// A cap of `max` live run actors (at least one). The gauges follow the live and queued
    /// counts.
    pub fn new(max: usize, live_gauge: Gauge, queued_gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            inner: Mutex::new(Inner {
                live: 0,
                queue: VecDeque::new(),
            }),
            live_gauge,
            queued_gauge,
        })
    }

    /// A cap with gauges nobody reads (tests, tools).
    pub fn unobserved(max: usize) -> Arc<Self> {
        Self::new(max, Gauge::default(), Gauge::default())
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots held now.
    pub fn live(&self) -> usize {
        self.lock().live
    }

    /// Runs waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// A slot for `run_id`'s actor, or the run is queued behind the runs already waiting.
    pub fn acquire(self: &Arc<Self>, supervisor: &ActorRef<TenantMsg>, run_id: RunId) -> Admission {
        let mut inner = self.lock();
        if inner.live < self.max && inner.queue.is_empty() {
            inner.live += 1;
            self.live_gauge.set(inner.live as i64);
            return Admission::Admitted(LiveSlot {
                runs: Some(Arc::clone(self)),
            });
        }
        inner.queue.push_back(Queued {
            supervisor: supervisor.clone(),
            run_id,
        });
        self.queued_gauge.set(inner.queue.len() as i64);
        Admission::Queued
    }

    /// Hands a freed slot to the first queued run whose supervisor still listens, or gives it
    /// back when none waits.
    fn release(self: &Arc<Self>) {
        loop {
            let next = {
                let mut inner = self.lock();
                let Some(next) = inner.queue.pop_front() else {
                    inner.live = inner.live.saturating_sub(1);
                    self.live_gauge.set(inner.live as i64);
                    return;
                };
                self.queued_gauge.set(inner.queue.len() as i64);
                next
            };
            let slot = LiveSlot {
                runs: Some(Arc::clone(self)),
            };
            match next.supervisor.cast(TenantMsg::Admit(next.run_id, slot)) {
                Ok(()) => return,
                // That tenant's supervisor has stopped: keep the slot for the next in line.
                Err(MessagingErr::SendErr(TenantMsg::Admit(_, mut slot))) => slot.forget(),
                // The message was dropped, and with it the slot, which released itself.
                Err(_) => return,
            }
        }
    }

    /// Whether slots are scarce: some run waits for one, or three quarters are taken.
    fn scarce(&self) -> bool {
        let inner = self.lock();
        !inner.queue.is_empty() || inner.live.saturating_mul(4) >= self.max.saturating_mul(3)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is two counters and a queue, each left whole by every critical section.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One live run actor's place under the cap; dropping it frees the place.
pub struct LiveSlot {
    runs: Option<Arc<LiveRuns>>,
}

impl LiveSlot {
    /// A guard holding no place, for a run's state used outside any actor.
    pub(crate) fn none() -> Self {
        Self { runs: None }
    }

    /// Whether a run holding this slot should give it up as soon as it waits.
    pub fn scarce(&self) -> bool {
        self.runs.as_ref().is_some_and(|r| r.scarce())
    }

    /// Drops the guard without freeing its place (the place is handed on by the caller).
    fn forget(&mut self) {
        self.runs = None;
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        if let Some(runs) = self.runs.take() {
            runs.release();
        }
    }
}

impl std::fmt::Debug for LiveSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSlot")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc;

    use super::*;

    /// Stands in for a tenant supervisor: notes each admission and keeps its slot until told
    /// to let the run go.
    struct Supervisor;

    struct Held {
        admitted: mpsc::UnboundedSender<RunId>,
        slots: Vec<(RunId, LiveSlot)>,
    }

    impl Actor for Supervisor {
        type Msg = TenantMsg;
        type State = Held;
        type Arguments = mpsc::UnboundedSender<RunId>;

        async fn pre_start(
            &self,
            _myself: ActorRef<TenantMsg>,
            admitted: Self::Arguments,
        ) -> Result<Held, ActorProcessingErr> {
            Ok(Held {
                admitted,
                slots: Vec::new(),
            })
        }

        async fn handle(
            &self,
            _myself: ActorRef<TenantMsg>,
            msg: TenantMsg,
            state: &mut Held,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                TenantMsg::Admit(run_id, slot) => {
                    state.slots.push((run_id, slot));
                    let _ = state.admitted.send(run_id);
                }
                // "Wake" here means: the run's actor stopped, free its slot.
                TenantMsg::Wake(run_id) => state.slots.retain(|(id, _)| *id != run_id),
                _ => {}
            }
            Ok(())
        }
    }

    async fn supervisor() -> (ActorRef<TenantMsg>, mpsc::UnboundedReceiver<RunId>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (actor, _) = Actor::spawn(None, Supervisor, tx).await.expect("spawns");
        (actor, rx)
    }

    fn admitted(admission: Admission) -> LiveSlot {
        match admission {
            Admission::Admitted(slot) => slot,
            Admission::Queued => panic!("the run was queued"),
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<RunId>) -> RunId {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an admission in time")
            .expect("the supervisor runs")
    }

    #[tokio::test]
    async fn runs_beyond_the_cap_are_admitted_in_arrival_order_as_slots_free() {
        let runs = LiveRuns::unobserved(2);
        let (sup, mut rx) = supervisor().await;
        let first = admitted(runs.acquire(&sup, RunId::new()));
        let second = admitted(runs.acquire(&sup, RunId::new()));
        let queued: Vec<RunId> = (0..3).map(|_| RunId::new()).collect();
        for id in &queued {
            assert!(matches!(runs.acquire(&sup, *id), Admission::Queued));
        }
        assert_eq!((runs.live(), runs.queued()), (2, 3));

        drop(first);
        assert_eq!(next(&mut rx).await, queued[0]);
        assert_eq!(
            (runs.live(), runs.queued()),
            (2, 2),
            "the slot was handed on"
        );
        drop(second);
        assert_eq!(next(&mut rx).await, queued[1]);

        // A run woken now queues behind the one still waiting, though no slot is free anyway.
        let late = RunId::new();
        assert!(matches!(runs.acquire(&sup, late), Admission::Queued));
        sup.cast(TenantMsg::Wake(queued[0])).expect("sent");
        assert_eq!(next(&mut rx).await, queued[2]);
        sup.cast(TenantMsg::Wake(queued[1])).expect("sent");
        assert_eq!(next(&mut rx).await, late);
        assert_eq!((runs.live(), runs.queued()), (2, 0));

        sup.cast(TenantMsg::Wake(queued[2])).expect("sent");
        sup.cast(TenantMsg::Wake(late)).expect("sent");
        wait_until(|| runs.live() == 0).await;
        sup.stop(None);
    }

    #[tokio::test]
    async fn a_slot_skips_runs_whose_supervisor_stopped() {
        let runs = LiveRuns::unobserved(1);
        let (gone, _gone_rx) = supervisor().await;
        let (alive, mut rx) = supervisor().await;
        let slot = admitted(runs.acquire(&alive, RunId::new()));
        let orphan = RunId::new();
        let next_in_line = RunId::new();
        assert!(matches!(runs.acquire(&gone, orphan), Admission::Queued));
        assert!(matches!(
            runs.acquire(&alive, next_in_line),
            Admission::Queued
        ));
        gone.stop_and_wait(None, None).await.expect("stops");

        drop(slot);
        assert_eq!(next(&mut rx).await, next_in_line);
        assert_eq!((runs.live(), runs.queued()), (1, 0));
        alive.cast(TenantMsg::Wake(next_in_line)).expect("sent");
        wait_until(|| runs.live() == 0).await;
        alive.stop(None);
    }

    #[tokio::test]
    async fn an_admission_dropped_unread_frees_its_slot() {
        let runs = LiveRuns::unobserved(1);
        let (sup, _rx) = supervisor().await;
        let slot = admitted(runs.acquire(&sup, RunId::new()));
        let message = TenantMsg::Admit(RunId::new(), slot);
        assert_eq!(runs.live(), 1);
        drop(message);
        assert_eq!(runs.live(), 0);
        sup.stop(None);
    }

    /// An actor that holds a slot and fails on its first message.
    struct Crashing;

    impl Actor for Crashing {
        type Msg = ();
        type State = LiveSlot;
        type Arguments = LiveSlot;

        async fn pre_start(
            &self,
            myself: ActorRef<()>,
            slot: LiveSlot,
        ) -> Result<LiveSlot, ActorProcessingErr> {
            myself.cast(())?;
            Ok(slot)
        }

        async fn handle(
            &self,
            _myself: ActorRef<()>,
            _msg: (),
            _slot: &mut LiveSlot,
        ) -> Result<(), ActorProcessingErr> {
            Err("the run's step failed".into())
        }
    }

    #[tokio::test]
    async fn an_actor_that_fails_frees_its_slot() {
        let runs = LiveRuns::unobserved(1);
        let (sup, _rx) = supervisor().await;
        let slot = admitted(runs.acquire(&sup, RunId::new()));
        let (_actor, handle) = Actor::spawn(None, Crashing, slot).await.expect("spawns");
        handle.await.expect("the actor's task ends");
        assert_eq!(runs.live(), 0);
        sup.stop(None);
    }

    #[test]
    fn slots_are_scarce_from_three_quarters_taken_or_with_a_run_queued() {
        let runs = LiveRuns::unobserved(4);
        let probe = LiveSlot::none();
        assert!(!probe.scarce(), "a guard with no place never is");
        let held: Vec<LiveSlot> = (0..2)
            .map(|_| LiveSlot {
                runs: Some(runs.take()),
            })
            .collect();
        assert!(!held[0].scarce());
        let third = LiveSlot {
            runs: Some(runs.take()),
        };
        assert!(third.scarce(), "3 of 4 taken");
        drop(third);
        assert!(!held[0].scarce());
        drop(held);
        assert_eq!(runs.live(), 0);
    }

    impl LiveRuns {
        /// Takes a place without a supervisor (the cap is not checked).
        fn take(self: &Arc<Self>) -> Arc<Self> {
            self.lock().live += 1;
            Arc::clone(self)
        }
    }

    async fn wait_until(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the condition did not hold within 5 s");
    }
}
