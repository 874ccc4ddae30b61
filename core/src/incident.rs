//! The ServiceNow incident as Steward sees it: raw values (never display values), as strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a trigger names the incident a run may touch. The model never chooses this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", content = "value", rename_all = "snake_case")]
pub enum IncidentRef {
    /// The record's 32-hex-digit `sys_id`.
    SysId(String),
    /// The human number, such as `INC0010001`.
    Number(String),
}

impl IncidentRef {
    /// Validates a sys_id (32 lowercase hex digits) or an incident number (letters then digits,
    /// at most 40 characters), so that nothing odd reaches a ServiceNow query.
    pub fn sys_id(s: &str) -> Option<Self> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self::SysId(s.to_owned()))
    }

    pub fn number(s: &str) -> Option<Self> {
        let letters = s.bytes().take_while(|b| b.is_ascii_uppercase()).count();
        let ok = letters > 0
            && s.len() > letters
            && s.len() <= 40
            && s.bytes().skip(letters).all(|b| b.is_ascii_digit());
        ok.then(|| Self::Number(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::SysId(s) | Self::Number(s) => s,
        }
    }
}

impl std::fmt::Display for IncidentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SysId(s) => write!(f, "sys_id {s}"),
            Self::Number(s) => write!(f, "number {s}"),
        }
    }
}

/// An incident record read from the Table API. `fields` holds every returned field as its raw
/// string value; reference fields are reduced to their sys_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub sys_id: String,
    pub number: String,
    pub fields: BTreeMap<String, String>,
}

impl Incident {
    /// The raw value of a field, `""` when absent (as ServiceNow reports empty fields).
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }

    /// The record version: `sys_mod_count`, which ServiceNow bumps on every update.
    pub fn version(&self) -> &str {
        self.field("sys_mod_count")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_validated() {
        assert!(IncidentRef::sys_id("a9e30c7dc61122760116894de7bcc7bd").is_some());
        assert!(IncidentRef::sys_id("A9E30C7DC61122760116894DE7BCC7BD").is_none());
        assert!(IncidentRef::sys_id("a9e30c7d^ORnumber=1").is_none());
        assert!(IncidentRef::number("INC0010001").is_some());
        for bad in [
            "INC",
            "0010001",
            "INC001x",
            "inc001",
            "INC001^ORactive=true",
            "",
        ] {
            assert!(IncidentRef::number(bad).is_none(), "{bad}");
        }
    }
}
