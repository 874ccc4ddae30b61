//! What the model proposes, and what produced the reply. A proposal is only ever a suggestion:
//! policy decides what may be written and a person approves it.

use serde::{Deserialize, Serialize};

/// One field the model would change, with the new raw value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub value: String,
}

/// A parsed, schema-valid triage reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub summary: String,
    pub category: String,
    pub changes: Vec<FieldChange>,
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What produced a reply: enough to reproduce or question it later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `openai` or `anthropic` (the wire protocol spoken).
    pub provider: String,
    pub model_requested: String,
    /// The model name the provider reported in its reply.
    pub model_reported: String,
    pub prompt_version: String,
    pub temperature: f32,
    pub max_tokens: u32,
    pub usage: TokenUsage,
    /// The provider's id for the reply (`chatcmpl-…`, `msg_…`).
    pub response_id: String,
}
