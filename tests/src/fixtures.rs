//! The incident and the model replies the scenarios start from.

use serde_json::{Map, Value, json};

/// The sys_id of the incident every scenario is about.
pub const SYS_ID: &str = "a9e30c7dc61122760116894de7bcc7bd";
/// Its number.
pub const NUMBER: &str = "INC0010001";
/// The assignment group the model proposes.
pub const NEW_GROUP: &str = "287ebd7da9fe198100f92cc8d1d2154e";

/// A realistic incident as the Table API returns it with raw values.
pub fn incident() -> Map<String, Value> {
    json!({
        "sys_id": SYS_ID,
        "number": NUMBER,
        "short_description": "Checkout fails with HTTP 502 since the 14:05 deploy",
        "description": "Customers cannot pay: /checkout returns 502 for about 40% of requests \
            since the 14:05 payments deploy.",
        "category": "inquiry",
        "impact": "2",
        "urgency": "3",
        "priority": "4",
        "state": "1",
        "assignment_group": "8a4dde73c6112278017a6a4baf547aa7",
        "caller_id": "5137153cc611227c000bbd1bd8cd2005",
        "work_notes": "",
        "comments": "",
        "sys_mod_count": "4",
        "sys_updated_on": "2024-05-02 14:07:31",
    })
    .as_object()
    .cloned()
    .expect("the literal is an object")
}

/// A proposal in the shape the model must answer with.
pub fn proposal(summary: &str, changes: &[(&str, &str)]) -> Value {
    json!({
        "summary": summary,
        "category": "software",
        "changes": changes
            .iter()
            .map(|(field, value)| json!({"field": field, "value": value}))
            .collect::<Vec<_>>(),
    })
}

/// The model's work note in [`triage`].
pub const MODEL_NOTE: &str = "Likely cause: connection pool exhaustion in payments after the \
                              14:05 deploy. Suggest rolling back.";

/// A sound triage: three approvable fields, a work note, and one field the default policy
/// denies (`priority`).
pub fn triage() -> Value {
    proposal(
        "Checkout requests fail with HTTP 502 since the 14:05 deploy; the payments service \
         exhausts its database connection pool.",
        &[
            ("category", "software"),
            ("urgency", "1"),
            ("assignment_group", NEW_GROUP),
            ("work_notes", MODEL_NOTE),
            ("priority", "1"),
        ],
    )
}
