//! Table API records as Steward sees them: every field reduced to its raw string value.
//!
//! Values normally arrive as strings. Reference fields may instead arrive as `{"link","value"}`
//! or `{"display_value","link","value"}`; they are reduced to `value`, or to `""` when an
//! instance leaves `value` out. Other scalars become their text. Choice values are never checked
//! here: an instance may use values no built-in list knows (a `state` of `-2`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use steward_core::Incident;

use super::ServiceNowError;
use super::wire::{clip, json_body};

/// Reads the body of a successful single-record Table API reply (`{"result": {…}}`) as an
/// incident, as the client does before checking that it is the record asked for. Public so that
/// the record parser can be exercised without an instance.
pub fn parse_incident_reply(body: &[u8]) -> Result<Incident, ServiceNowError> {
    single_incident(json_body(body)?)
}

/// Reads the body of a successful list reply (`{"result": […]}`) as records of raw values, as
/// the client does. Public so that the record parser can be exercised without an instance.
pub fn parse_record_list_reply(
    body: &[u8],
) -> Result<Vec<BTreeMap<String, String>>, ServiceNowError> {
    record_list(json_body(body)?)
}

/// The `result` object of a single-record reply, as an incident.
pub(super) fn single_incident(reply: Value) -> Result<Incident, ServiceNowError> {
    match result(reply)? {
        Value::Object(record) => incident(&record),
        other => Err(decode(format!("result is {}, not a record", kind(&other)))),
    }
}

/// The records of a list reply, each reduced to raw values.
pub(super) fn record_list(reply: Value) -> Result<Vec<BTreeMap<String, String>>, ServiceNowError> {
    match result(reply)? {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(record) => Ok(raw_fields(record)),
                other => Err(decode(format!("list holds {}, not a record", kind(other)))),
            })
            .collect(),
        other => Err(decode(format!("result is {}, not a list", kind(&other)))),
    }
}

/// An incident from a record's raw fields; `sys_id` and `number` must be present.
pub(super) fn incident_from_fields(
    fields: BTreeMap<String, String>,
) -> Result<Incident, ServiceNowError> {
    let required = |name: &str| {
        fields
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| decode(format!("record has no {name}")))
    };
    let sys_id = required("sys_id")?;
    let number = required("number")?;
    Ok(Incident {
        sys_id,
        number,
        fields,
    })
}

fn incident(record: &Map<String, Value>) -> Result<Incident, ServiceNowError> {
    incident_from_fields(raw_fields(record))
}

fn result(reply: Value) -> Result<Value, ServiceNowError> {
    match reply {
        Value::Object(mut envelope) => envelope
            .remove("result")
            .ok_or_else(|| decode("reply has no result".into())),
        other => Err(decode(format!("reply is {}, not an object", kind(&other)))),
    }
}

fn raw_fields(record: &Map<String, Value>) -> BTreeMap<String, String> {
    record
        .iter()
        .map(|(name, value)| (name.clone(), raw_value(value)))
        .collect()
}

/// The raw string value of one field, whatever shape it came in.
fn raw_value(value: &Value) -> String {
    match value {
        Value::Object(reference) => reference.get("value").map(scalar_text).unwrap_or_default(),
        other => scalar_text(other),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn decode(reason: String) -> ServiceNowError {
    ServiceNowError::Decode(clip(&reason))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SYS_ID: &str = "a9e30c7dc61122760116894de7bcc7bd";

    #[test]
    fn reference_fields_reduce_to_their_raw_value_in_every_shape() {
        let group = "8a4dde73c6112278017a6a4baf547aa7";
        let link = format!("https://acme.service-now.com/api/now/table/sys_user_group/{group}");
        let reply = json!({"result": {
            "sys_id": SYS_ID, "number": "INC0010001",
            "assignment_group": {"link": link, "value": group},
            "caller_id": {"display_value": "Abel Tuter", "link": link, "value": "62826bf0"},
            "assigned_to": {"display_value": "Beth Anglin", "link": link},
            "cmdb_ci": "",
            "location": group,
        }});
        let incident = single_incident(reply).unwrap();
        assert_eq!(incident.field("assignment_group"), group);
        assert_eq!(incident.field("caller_id"), "62826bf0");
        assert_eq!(
            incident.field("assigned_to"),
            "",
            "a reference without value is empty"
        );
        assert_eq!(incident.field("cmdb_ci"), "");
        assert_eq!(incident.field("location"), group);
    }

    #[test]
    fn unknown_choice_values_and_odd_scalars_are_kept_as_text() {
        let reply = json!({"result": {
            "sys_id": SYS_ID, "number": "INC0010001", "state": "-2", "reassignment_count": 3,
            "active": true, "close_code": null, "u_tags": ["a", "b"], "u_ref": {"value": 42}
        }});
        let incident = single_incident(reply).unwrap();
        assert_eq!(incident.field("state"), "-2");
        assert_eq!(incident.field("reassignment_count"), "3");
        assert_eq!(incident.field("active"), "true");
        assert_eq!(incident.field("close_code"), "");
        assert_eq!(incident.field("u_tags"), r#"["a","b"]"#);
        assert_eq!(incident.field("u_ref"), "42");
    }

    #[test]
    fn sys_id_and_number_are_required() {
        for record in [
            json!({"number": "INC0010001"}),
            json!({"sys_id": SYS_ID}),
            json!({"sys_id": "", "number": "INC0010001"}),
            json!({"sys_id": {"link": "x"}, "number": "INC0010001"}),
        ] {
            let err = single_incident(json!({"result": record})).unwrap_err();
            assert!(matches!(&err, ServiceNowError::Decode(m) if m.contains("record has no")));
        }
    }

    #[test]
    fn malformed_envelopes_are_decode_errors() {
        for reply in [
            json!([]),
            json!({"records": []}),
            json!({"result": "INC0010001"}),
            json!({"result": [1]}),
            json!("result"),
        ] {
            let single = single_incident(reply.clone());
            assert!(matches!(single, Err(ServiceNowError::Decode(_))), "{reply}");
        }
        assert!(matches!(
            record_list(json!({"result": [1]})),
            Err(ServiceNowError::Decode(_))
        ));
        assert!(matches!(
            record_list(json!({"result": {}})),
            Err(ServiceNowError::Decode(_))
        ));
        assert!(record_list(json!({"result": []})).unwrap().is_empty());
    }
}
