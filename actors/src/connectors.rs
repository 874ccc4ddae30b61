//! Adapter actors: one per tenant for the LLM provider, ServiceNow and Slack. They own the HTTP
//! clients (and, for ServiceNow, the OAuth token cache); run actors message them and never hold
//! a client themselves. Each call is one attempt: retries belong to the run's step executor.
//!
//! A call runs in its own task under a concurrency limit, so one slow provider call does not
//! hold up the tenant's other runs. A panic in that task is a crash of the adapter: the client
//! may hold broken state (a token cache, say), so the adapter actor is stopped and its
//! supervisor replaces it with a fresh client. Only then does the caller see its call fail, so
//! the retry owner's next attempt reaches the replacement.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};
use serde_json::{Map, Value};
use steward_adapters::llm::{LlmError, LlmProvider, TriageReply, TriageRequest};
use steward_adapters::servicenow::{ServiceNowClient, ServiceNowError};
use steward_adapters::slack::{PostedMessage, SlackClient, SlackError};
use steward_core::{Incident, IncidentRef};
use tokio::sync::Semaphore;
use tracing::error;

/// How many calls one adapter actor runs at once.
const DEFAULT_CONCURRENCY: usize = 16;

/// How long a crashed call waits for its adapter to stop before failing the caller.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// Runs `call` in a task holding a permit, and answers `reply` with its result. If `call`
/// panics, `adapter` is stopped (its supervisor starts a new one) and then the caller's reply
/// is dropped, which it sees as a failed call.
fn spawn_call<T, F>(adapter: ActorCell, permits: &Arc<Semaphore>, reply: RpcReplyPort<T>, call: F)
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let permits = Arc::clone(permits);
    tokio::spawn(async move {
        let Ok(_permit) = permits.acquire_owned().await else {
            return;
        };
        match tokio::spawn(call).await {
            // The caller may have given up waiting; nothing to do then.
            Ok(result) => drop(reply.send(result)),
            Err(crash) if crash.is_panic() => {
                let text = panic_text(crash.into_panic());
                error!(
                    adapter = %adapter.get_id(),
                    panic = %text,
                    "An adapter call panicked; replacing the adapter."
                );
                let reason = format!("a call panicked: {text}");
                let _ = adapter
                    .stop_and_wait(Some(reason), Some(STOP_PATIENCE))
                    .await;
                drop(reply);
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => {}
        }
    });
}

/// The message of a panic payload, when it has one.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Calls queued or running: each call's task holds a clone of the permits until it ends.
fn pending(permits: &Arc<Semaphore>) -> usize {
    Arc::strong_count(permits).saturating_sub(1)
}

/// Messages to the LLM actor.
pub enum LlmMsg {
    Triage(TriageRequest, RpcReplyPort<Result<TriageReply, LlmError>>),
    /// How many calls are queued or running, for inspection.
    Pending(RpcReplyPort<usize>),
}

/// The tenant's LLM provider.
pub struct LlmActor;

pub struct LlmState {
    provider: Arc<dyn LlmProvider>,
    permits: Arc<Semaphore>,
}

impl Actor for LlmActor {
    type Msg = LlmMsg;
    type State = LlmState;
    type Arguments = Arc<dyn LlmProvider>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        provider: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(LlmState {
            provider,
            permits: Arc::new(Semaphore::new(DEFAULT_CONCURRENCY)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (request, reply) = match msg {
            LlmMsg::Triage(request, reply) => (request, reply),
            LlmMsg::Pending(reply) => {
                let _ = reply.send(pending(&state.permits));
                return Ok(());
            }
        };
        let provider = Arc::clone(&state.provider);
        spawn_call(myself.get_cell(), &state.permits, reply, async move {
            provider.triage(&request).await
        });
        Ok(())
    }
}

/// Messages to the ServiceNow actor.
pub enum ServiceNowMsg {
    Get(IncidentRef, RpcReplyPort<Result<Incident, ServiceNowError>>),
    Patch(
        String,
        Map<String, Value>,
        RpcReplyPort<Result<Incident, ServiceNowError>>,
    ),
    JournalContains {
        sys_id: String,
        element: String,
        marker: String,
        reply: RpcReplyPort<Result<bool, ServiceNowError>>,
    },
    /// How many calls are queued or running, for inspection.
    Pending(RpcReplyPort<usize>),
}

/// The tenant's ServiceNow instance (Table API with OAuth).
pub struct ServiceNowActor;

pub struct ServiceNowState {
    client: Arc<ServiceNowClient>,
    permits: Arc<Semaphore>,
}

impl Actor for ServiceNowActor {
    type Msg = ServiceNowMsg;
    type State = ServiceNowState;
    type Arguments = Arc<ServiceNowClient>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        client: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ServiceNowState {
            client,
            permits: Arc::new(Semaphore::new(DEFAULT_CONCURRENCY)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let client = Arc::clone(&state.client);
        match msg {
            ServiceNowMsg::Get(reference, reply) => {
                spawn_call(myself.get_cell(), &state.permits, reply, async move {
                    client.get_incident(&reference).await
                });
            }
            ServiceNowMsg::Patch(sys_id, fields, reply) => {
                spawn_call(myself.get_cell(), &state.permits, reply, async move {
                    client.patch_incident(&sys_id, &fields).await
                });
            }
            ServiceNowMsg::JournalContains {
                sys_id,
                element,
                marker,
                reply,
            } => {
                spawn_call(myself.get_cell(), &state.permits, reply, async move {
                    client.journal_contains(&sys_id, &element, &marker).await
                });
            }
            ServiceNowMsg::Pending(reply) => {
                let _ = reply.send(pending(&state.permits));
            }
        }
        Ok(())
    }
}

/// Messages to the Slack actor.
pub enum SlackMsg {
    Post {
        channel: String,
        text: String,
        blocks: Value,
        reply: RpcReplyPort<Result<PostedMessage, SlackError>>,
    },
    Update {
        channel: String,
        ts: String,
        text: String,
        blocks: Value,
        reply: RpcReplyPort<Result<(), SlackError>>,
    },
    Ephemeral {
        channel: String,
        user: String,
        text: String,
        reply: RpcReplyPort<Result<(), SlackError>>,
    },
    /// A reply in the thread of the message `thread_ts`.
    Thread {
        channel: String,
        thread_ts: String,
        text: String,
        reply: RpcReplyPort<Result<PostedMessage, SlackError>>,
    },
    /// How many calls are queued or running, for inspection.
    Pending(RpcReplyPort<usize>),
}

/// The tenant's Slack workspace (Web API).
pub struct SlackActor;

pub struct SlackState {
    client: Arc<SlackClient>,
    permits: Arc<Semaphore>,
}

impl Actor for SlackActor {
    type Msg = SlackMsg;
    type State = SlackState;
    type Arguments = Arc<SlackClient>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        client: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SlackState {
            client,
            permits: Arc::new(Semaphore::new(DEFAULT_CONCURRENCY)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let client = Arc::clone(&state.client);
        match msg {
            SlackMsg::Post {
                channel,
                text,
                blocks,
                reply,
            } => {
                spawn_call(myself.get_cell(), &state.permits, reply, async move {
                    client.post_message(&channel, &text, &blocks).await
                });
            }
            SlackMsg::Update {
                channel,
                ts,
                text,
                blocks,
                reply,
            } => {
                spawn_call(myself.get_cell(), &state.permits, reply, async move {
                    client.update_message(&channel, &ts, &text, &blocks).await
                });
            }
            SlackMsg::Ephemeral {
                channel,
                user,
                text,
                reply,
            } => {
                spawn_call(myself.get_cell(), &state.permits, reply, async move {
                    client.post_ephemeral(&channel, &user, &text).await
                });
            }
            SlackMsg::Thread {
                channel,
                thread_ts,
                text,
                reply,
            } => {
                spawn_call(myself.get_cell(), &state.permits, reply, async move {
                    client.post_in_thread(&channel, &thread_ts, &text).await
                });
            }
            SlackMsg::Pending(reply) => {
                let _ = reply.send(pending(&state.permits));
            }
        }
        Ok(())
    }
}

/// A tenant's three adapter actors.
#[derive(Clone)]
pub struct Connectors {
    pub llm: ActorRef<LlmMsg>,
    pub servicenow: ActorRef<ServiceNowMsg>,
    pub slack: ActorRef<SlackMsg>,
}

impl Connectors {
    /// Whether all three actors can take calls: none is stopping or stopped. An actor that is
    /// still starting counts as alive (a message sent now is handled once it runs); treating
    /// it as gone would make the first call of a fresh tenant wait for a replacement that
    /// never comes.
    pub fn all_running(&self) -> bool {
        [
            self.llm.get_status(),
            self.servicenow.get_status(),
            self.slack.get_status(),
        ]
        .iter()
        .all(|status| {
            !matches!(
                status,
                ActorStatus::Draining | ActorStatus::Stopping | ActorStatus::Stopped
            )
        })
    }
}
