//! Conversions between Rust values and the column types the schema uses (TEXT, BIGINT), and
//! the input limits the store enforces before it writes anything.

use serde::de::DeserializeOwned;
use steward_core::{ApprovalId, IncidentRef, RunId, SourceName, TenantId};

use crate::StoreError;

/// The largest JSON document kept in a step, audit entry, trigger, policy or settings column.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The largest run snapshot kept.
pub(crate) const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024;

/// Serializes `value` as compact JSON, refusing documents over `max` bytes.
pub(crate) fn json_text(
    value: &serde_json::Value,
    what: &str,
    max: usize,
) -> Result<String, StoreError> {
    let text = serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("{what} is not serializable: {e}")))?;
    if text.len() > max {
        return Err(StoreError::Invalid(format!(
            "{what} is {} bytes; the limit is {max}",
            text.len()
        )));
    }
    Ok(text)
}

/// Parses a stored JSON column.
pub(crate) fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Checks a caller-supplied name or label: 1 to `max` bytes, no control characters.
pub(crate) fn check_text(value: &str, what: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::Invalid(format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(StoreError::Invalid(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

/// Checks an optional free-text column such as an error message: at most `max` bytes.
pub(crate) fn check_len(value: &str, what: &str, max: usize) -> Result<(), StoreError> {
    if value.len() > max {
        return Err(StoreError::Invalid(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// A stored BIGINT that must fit a `u32`.
pub(crate) fn to_u32(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is out of range")))
}

/// A stored BIGINT that must fit a `u64`.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is out of range")))
}

/// A `u64` bound into a BIGINT column.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is too large")))
}

pub(crate) fn tenant_id(text: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(text).map_err(|e| StoreError::Corrupt(format!("tenant id: {e}")))
}

pub(crate) fn run_id(text: &str) -> Result<RunId, StoreError> {
    RunId::parse(text).map_err(|_| StoreError::Corrupt(format!("run id `{}`", clip(text))))
}

pub(crate) fn approval_id(text: &str) -> Result<ApprovalId, StoreError> {
    ApprovalId::parse(text)
        .map_err(|_| StoreError::Corrupt(format!("approval id `{}`", clip(text))))
}

pub(crate) fn source_name(text: &str) -> Result<SourceName, StoreError> {
    SourceName::parse(text).map_err(|e| StoreError::Corrupt(format!("source name: {e}")))
}

/// The (by, value) column pair an incident reference is stored as.
pub(crate) fn incident_columns(incident: &IncidentRef) -> Result<(&'static str, &str), StoreError> {
    let valid = match incident {
        IncidentRef::SysId(s) => IncidentRef::sys_id(s).is_some(),
        IncidentRef::Number(s) => IncidentRef::number(s).is_some(),
    };
    if !valid {
        return Err(StoreError::Invalid(format!(
            "incident reference `{}` is malformed",
            clip(incident.as_str())
        )));
    }
    let by = match incident {
        IncidentRef::SysId(_) => "sys_id",
        IncidentRef::Number(_) => "number",
    };
    Ok((by, incident.as_str()))
}

/// Rebuilds an incident reference from its columns, validating it again.
pub(crate) fn incident(by: &str, value: &str) -> Result<IncidentRef, StoreError> {
    let parsed = match by {
        "sys_id" => IncidentRef::sys_id(value),
        "number" => IncidentRef::number(value),
        _ => None,
    };
    parsed.ok_or_else(|| StoreError::Corrupt(format!("incident reference {by} `{}`", clip(value))))
}

/// Turns a unique-key violation into [`StoreError::Conflict`]; other errors pass through.
pub(crate) fn conflict_on_duplicate(err: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Db(err),
    }
}

/// The first 64 characters of a value quoted in an error, so a hostile value cannot flood logs.
pub(crate) fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(64).filter(|c| !c.is_control()).collect();
    if text.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_short_printable_and_present() {
        assert!(check_text("servicenow-oauth", "name", 16).is_ok());
        for bad in ["", "a\nb", "a\u{0}b", "\u{7f}"] {
            assert!(
                matches!(check_text(bad, "name", 16), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_text(&"a".repeat(17), "name", 16),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn oversized_documents_are_refused() {
        let big = serde_json::Value::String("x".repeat(100));
        assert!(json_text(&big, "body", 50).is_err());
        assert_eq!(
            json_text(&serde_json::json!({"a": 1}), "body", 50).unwrap(),
            r#"{"a":1}"#
        );
    }

    #[test]
    fn stored_values_that_do_not_decode_are_corrupt() {
        assert!(matches!(run_id("not-a-uuid"), Err(StoreError::Corrupt(_))));
        assert!(matches!(tenant_id("xx-acme"), Err(StoreError::Corrupt(_))));
        assert!(matches!(to_u32(-1, "seq"), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            to_u32(i64::MAX, "seq"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            incident("sys_id", "INC0010001"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            incident("name", "INC0010001"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            from_json::<serde_json::Value>("{", "body"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn incident_references_are_validated_before_storing() {
        let hostile = IncidentRef::Number("INC001^ORactive=true".into());
        assert!(matches!(
            incident_columns(&hostile),
            Err(StoreError::Invalid(_))
        ));
        let ok = IncidentRef::Number("INC0010001".into());
        assert_eq!(incident_columns(&ok).unwrap(), ("number", "INC0010001"));
        assert_eq!(incident("number", "INC0010001").unwrap(), ok);
    }

    #[test]
    fn quoted_values_are_clipped_and_stripped() {
        let clipped = clip(&"é\n".repeat(100));
        assert_eq!(clipped.chars().count(), 33);
        assert!(!clipped.contains('\n'));
    }
}
