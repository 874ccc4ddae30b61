//! Shared vocabulary for every Steward crate: tenant and run ids, regions, the incident record,
//! the model's proposal and the diff a person approves. Pure data and pure functions; no I/O.

pub mod clock;
pub mod diff;
pub mod ids;
pub mod incident;
pub mod proposal;
pub mod scheme;

pub use clock::{Clock, FixedClock, SystemClock};
pub use diff::{Diff, DiffEntry};
pub use ids::{ApprovalId, IdError, Region, RunId, SourceName, TenantId};
pub use incident::{Incident, IncidentRef};
pub use proposal::{FieldChange, Proposal, Provenance, TokenUsage};
pub use scheme::{SignatureScheme, UnknownScheme};
