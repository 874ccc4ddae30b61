//! Adapter actors: one per tenant for the LLM provider, ServiceNow and Slack. They own the HTTP
//! clients (and, for ServiceNow, the OAuth token cache); run actors message them and never hold
//! a client themselves. Each call is one attempt: retries belong to the run's step executor.
//!
//! A call runs in its own task under a concurrency limit, so one slow provider call does not
//! hold up the tenant's other runs; a panic in that task drops the reply port, which the caller
//! sees as a failed call.

use std::future::Future;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Map, Value};
use steward_adapters::llm::{LlmError, LlmProvider, TriageReply, TriageRequest};
use steward_adapters::servicenow::{ServiceNowClient, ServiceNowError};
use steward_adapters::slack::{PostedMessage, SlackClient, SlackError};
use steward_core::{Incident, IncidentRef};
use tokio::sync::Semaphore;

/// How many calls one adapter actor runs at once.
const DEFAULT_CONCURRENCY: usize = 16;

/// Runs `call` in a task holding a permit, and answers `reply` with its result.
fn spawn_call<T, F>(permits: &Arc<Semaphore>, reply: RpcReplyPort<T>, call: F)
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let permits = Arc::clone(permits);
    tokio::spawn(async move {
        let Ok(_permit) = permits.acquire_owned().await else {
            return;
        };
        let result = call.await;
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(result);
    });
}

/// Messages to the LLM actor.
pub enum LlmMsg {
    Triage(TriageRequest, RpcReplyPort<Result<TriageReply, LlmError>>),
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
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let LlmMsg::Triage(request, reply) = msg;
        let provider = Arc::clone(&state.provider);
        spawn_call(&state.permits, reply, async move {
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
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let client = Arc::clone(&state.client);
        match msg {
            ServiceNowMsg::Get(reference, reply) => {
                spawn_call(&state.permits, reply, async move {
                    client.get_incident(&reference).await
                });
            }
            ServiceNowMsg::Patch(sys_id, fields, reply) => {
                spawn_call(&state.permits, reply, async move {
                    client.patch_incident(&sys_id, &fields).await
                });
            }
            ServiceNowMsg::JournalContains {
                sys_id,
                element,
                marker,
                reply,
            } => {
                spawn_call(&state.permits, reply, async move {
                    client.journal_contains(&sys_id, &element, &marker).await
                });
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
        _myself: ActorRef<Self::Msg>,
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
                spawn_call(&state.permits, reply, async move {
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
                spawn_call(&state.permits, reply, async move {
                    client.update_message(&channel, &ts, &text, &blocks).await
                });
            }
            SlackMsg::Ephemeral {
                channel,
                user,
                text,
                reply,
            } => {
                spawn_call(&state.permits, reply, async move {
                    client.post_ephemeral(&channel, &user, &text).await
                });
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
