//! Steward's supervision tree and run logic: the root, a supervisor per tenant, a run actor per
//! active run and per-tenant adapter actors for the LLM, ServiceNow and Slack; the run journal
//! and its fold; the Cedar policy gate; the one retry owner; approval decisions.

pub mod approvals;
pub mod budgets;
pub mod catchup;
pub mod cluster;
pub mod connectors;
pub mod crash;
pub mod inspect;
pub mod journal;
pub mod live;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod providers;
pub mod retention;
pub mod retry;
pub mod root;
pub mod run;
pub mod settings;
pub mod siem;
pub mod tenant;
pub mod tenant_runtime;
pub mod timers;
pub mod trace_context;
pub mod witness;

pub use approvals::{Clicker, DecisionOutcome};
pub use inspect::{ActorKind, ActorView, WaitingView};
pub use journal::{RunState, Step, Verdict, states};
pub use metrics::{Metrics, TenantMetrics};
pub use operator::{OperatorError, OperatorOutcome, OperatorRequest};
pub use policy::{APPROVERS_GROUP, ESCALATION_GROUP, PolicyGate};
pub use providers::{LlmFactory, LlmProviders};
pub use root::{ResumeGate, SingleNode, Steward, StewardOptions};
pub use settings::{PersonLink, Requester, TenantSettings, secret_names};
