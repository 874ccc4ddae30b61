//! The process-wide cap on live run actors. Each run actor holds a [`LiveSlot`]; a run woken
//! while every slot is taken is queued, and is admitted when an actor ends and hands its slot
//! on. Queued runs wait in one queue per tenant supervisor, kept in arrival order, and freed
//! slots go to the tenants in turn, so a tenant whose runs hold their slots long (an outside
//! system that hangs) cannot make another tenant's click wait behind its backlog. A queued run
//! is only its id, queued once however often it is woken, so a burst of deliveries costs
//! memory for the actors that work, not for the runs behind them; its actor reads the run from
//! the store.
//!
//! A slot is released when its guard is dropped: with the actor's state, which ractor drops
//! when a failing actor ends and hands, for an actor that stopped, to its supervisor with the
//! stop (so the slot frees once the supervisor has handled that); also when an admission
//! message is dropped unread with a stopped supervisor's mailbox. So slots cannot leak. The
//! runs queued for a supervisor that stops are withdrawn by whoever stopped it
//! ([`LiveRuns::withdraw`]); one that stopped some other way loses its queued runs to their
//! next wake-up, each logged.
//!
//! While slots are scarce, a waiting run gives its slot up instead of lingering for the
//! passivation delay (see [`LiveSlot::scarce`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::gauge::Gauge;
use ractor::{ActorId, ActorRef, MessagingErr};
use steward_core::RunId;
use tracing::warn;

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

#[derive(Default)]
struct Inner {
    live: usize,
    /// Runs queued, per supervisor.
    queues: HashMap<ActorId, Queue>,
    /// The supervisors with runs queued, in the order their turns come.
    turns: VecDeque<ActorId>,
    /// Every queued run, so that a run woken again while queued is queued once.
    queued: HashSet<RunId>,
    /// The most slots held and runs queued at once.
    peaks: (usize, usize),
}

struct Queue {
    supervisor: ActorRef<TenantMsg>,
    runs: VecDeque<RunId>,
}

/// What a tenant supervisor gets when it asks for a slot.
pub enum Admission {
    /// A slot for the run's actor.
    Admitted(LiveSlot),
    /// Every slot is taken: the run is queued (or already was) and its supervisor gets
    /// [`TenantMsg::Admit`] when a slot is free.
    Queued,
}

impl Inner {
    /// The next queued run, its tenant's turn taken.
    fn pop(&mut self) -> Option<(ActorRef<TenantMsg>, RunId)> {
        let id = self.turns.pop_front()?;
        let queue = self.queues.get_mut(&id)?;
        let run_id = queue.runs.pop_front()?;
        let supervisor = queue.supervisor.clone();
        if queue.runs.is_empty() {
            self.queues.remove(&id);
        } else {
            self.turns.push_back(id);
        }
        self.queued.remove(&run_id);
        Some((supervisor, run_id))
    }
}

impl LiveRuns {
    /// A cap of `max` live run actors (at least one). The gauges follow the live and queued
    /// counts.
    pub fn new(max: usize, live_gauge: Gauge, queued_gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            inner: Mutex::new(Inner::default()),
            live_gauge,
            queued_gauge,
        })
    }

    /// A cap with gauges nobody reads.
    #[cfg(test)]
    fn unobserved(max: usize) -> Arc<Self> {
        Self::new(max, Gauge::default(), Gauge::default())
    }

    /// Slots held now.
    pub fn live(&self) -> usize {
        self.lock().live
    }

    /// Runs waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.lock().queued.len()
    }

    /// The most slots held, and the most runs queued, at once since the start.
    pub fn peaks(&self) -> (usize, usize) {
        self.lock().peaks
    }

    /// A slot for `run_id`'s actor, or the run is queued behind its tenant's runs already
    /// waiting.
    pub fn acquire(self: &Arc<Self>, supervisor: &ActorRef<TenantMsg>, run_id: RunId) -> Admission {
        let mut inner = self.lock();
        if inner.live < self.max && inner.queued.is_empty() {
            inner.live += 1;
            inner.peaks.0 = inner.peaks.0.max(inner.live);
            self.live_gauge.set(inner.live as i64);
            return Admission::Admitted(LiveSlot {
                runs: Some(Arc::clone(self)),
            });
        }
        if inner.queued.insert(run_id) {
            let id = supervisor.get_id();
            match inner.queues.get_mut(&id) {
                Some(queue) => queue.runs.push_back(run_id),
                None => {
                    let queue = Queue {
                        supervisor: supervisor.clone(),
                        runs: VecDeque::from([run_id]),
                    };
                    inner.queues.insert(id, queue);
                    inner.turns.push_back(id);
                }
            }
            inner.peaks.1 = inner.peaks.1.max(inner.queued.len());
            self.queued_gauge.set(inner.queued.len() as i64);
        }
        Admission::Queued
    }

    /// Takes the runs queued for `supervisor` out of the queue, for the caller that stops it
    /// to wake again where the tenant runs next.
    pub fn withdraw(&self, supervisor: ActorId) -> Vec<RunId> {
        let mut inner = self.lock();
        let Some(queue) = inner.queues.remove(&supervisor) else {
            return Vec::new();
        };
        inner.turns.retain(|id| *id != supervisor);
        for run_id in &queue.runs {
            inner.queued.remove(run_id);
        }
        self.queued_gauge.set(inner.queued.len() as i64);
        queue.runs.into()
    }

    /// Hands a freed slot to the next queued run whose supervisor still listens, or gives it
    /// back when none waits.
    fn release(self: &Arc<Self>) {
        loop {
            let (supervisor, run_id) = {
                let mut inner = self.lock();
                let Some(next) = inner.pop() else {
                    inner.live = inner.live.saturating_sub(1);
                    self.live_gauge.set(inner.live as i64);
                    return;
                };
                self.queued_gauge.set(inner.queued.len() as i64);
                next
            };
            let slot = LiveSlot {
                runs: Some(Arc::clone(self)),
            };
            match supervisor.cast(TenantMsg::Admit(run_id, slot)) {
                Ok(()) => return,
                // That tenant's supervisor has stopped: keep the slot for the next in line.
                Err(MessagingErr::SendErr(TenantMsg::Admit(_, mut slot))) => {
                    slot.forget();
                    warn!(
                        run.id = %run_id,
                        "A queued run's tenant supervisor stopped; the run waits for its next \
                         wake-up."
                    );
                }
                // The message was dropped, and with it the slot, which released itself.
                Err(_) => return,
            }
        }
    }

    /// Whether slots are scarce: some run waits for one, or three quarters are taken.
    fn scarce(&self) -> bool {
        let inner = self.lock();
        !inner.queued.is_empty() || inner.live.saturating_mul(4) >= self.max.saturating_mul(3)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is counters, queues and a set, each left whole by every critical section.
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

    #[tokio::test]
    async fn a_run_woken_twice_while_queued_is_queued_once() {
        let runs = LiveRuns::unobserved(1);
        let (sup, mut rx) = supervisor().await;
        let slot = admitted(runs.acquire(&sup, RunId::new()));
        let (twice, other) = (RunId::new(), RunId::new());
        for run_id in [twice, twice, other, twice] {
            assert!(matches!(runs.acquire(&sup, run_id), Admission::Queued));
        }
        assert_eq!(runs.queued(), 2);
        drop(slot);
        assert_eq!(next(&mut rx).await, twice);
        sup.cast(TenantMsg::Wake(twice)).expect("sent");
        assert_eq!(next(&mut rx).await, other);
        assert_eq!(runs.peaks(), (1, 2));
        sup.stop(None);
    }

    #[tokio::test]
    async fn freed_slots_go_to_the_tenants_in_turn() {
        let runs = LiveRuns::unobserved(1);
        let (busy, mut busy_rx) = supervisor().await;
        let (quiet, mut quiet_rx) = supervisor().await;
        let slot = admitted(runs.acquire(&busy, RunId::new()));
        let backlog: Vec<RunId> = (0..3).map(|_| RunId::new()).collect();
        for run_id in &backlog {
            assert!(matches!(runs.acquire(&busy, *run_id), Admission::Queued));
        }
        let click = RunId::new();
        assert!(matches!(runs.acquire(&quiet, click), Admission::Queued));

        drop(slot);
        assert_eq!(next(&mut busy_rx).await, backlog[0]);
        busy.cast(TenantMsg::Wake(backlog[0])).expect("sent");
        assert_eq!(
            next(&mut quiet_rx).await,
            click,
            "the other tenant's run goes before the rest of the backlog"
        );
        quiet.cast(TenantMsg::Wake(click)).expect("sent");
        assert_eq!(next(&mut busy_rx).await, backlog[1]);
        busy.stop(None);
        quiet.stop(None);
    }

    #[tokio::test]
    async fn the_runs_of_a_stopped_supervisor_are_withdrawn_for_its_successor() {
        let runs = LiveRuns::unobserved(1);
        let (old, _old_rx) = supervisor().await;
        let (other, mut other_rx) = supervisor().await;
        let slot = admitted(runs.acquire(&other, RunId::new()));
        let (a, b, c) = (RunId::new(), RunId::new(), RunId::new());
        for run_id in [a, b] {
            assert!(matches!(runs.acquire(&old, run_id), Admission::Queued));
        }
        assert!(matches!(runs.acquire(&other, c), Admission::Queued));
        assert_eq!(runs.withdraw(old.get_id()), vec![a, b]);
        assert_eq!(runs.withdraw(old.get_id()), Vec::<RunId>::new());
        assert_eq!(runs.queued(), 1);
        old.stop(None);
        drop(slot);
        assert_eq!(next(&mut other_rx).await, c);
        other.stop(None);
    }

    /// Stands in for a tenant supervisor busy with a long message: an admission sent meanwhile
    /// waits in its mailbox.
    struct Busy;

    impl Actor for Busy {
        type Msg = TenantMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<TenantMsg>,
            _: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _myself: ActorRef<TenantMsg>,
            msg: TenantMsg,
            _state: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            if let TenantMsg::Wake(_) = msg {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_admission_left_in_a_stopped_supervisors_mailbox_frees_its_slot() {
        let runs = LiveRuns::unobserved(1);
        let (sup, handle) = Actor::spawn(None, Busy, ()).await.expect("spawns");
        let slot = admitted(runs.acquire(&sup, RunId::new()));
        assert!(matches!(
            runs.acquire(&sup, RunId::new()),
            Admission::Queued
        ));
        sup.cast(TenantMsg::Wake(RunId::new())).expect("sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(slot);
        assert_eq!(
            (runs.live(), runs.queued()),
            (1, 0),
            "handed to the mailbox"
        );
        sup.stop(None);
        handle.await.expect("the supervisor ends");
        wait_until(|| runs.live() == 0).await;
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
