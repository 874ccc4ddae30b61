//! Incident rows as ServiceNow keeps them: every value a string, journal fields that read back
//! empty, system fields the instance maintains, and reference fields rendered as
//! `{"link","value"}` unless the caller asks for raw values.

use serde_json::{Map, Value};

use super::query::Row;

/// Fields that append to the record's journal instead of storing a value.
pub(super) const JOURNAL_FIELDS: [&str; 2] = ["work_notes", "comments"];

/// Reference fields of `incident` and the table each points at.
const REFERENCES: [(&str, &str); 12] = [
    ("assignment_group", "sys_user_group"),
    ("assigned_to", "sys_user"),
    ("caller_id", "sys_user"),
    ("opened_by", "sys_user"),
    ("resolved_by", "sys_user"),
    ("closed_by", "sys_user"),
    ("cmdb_ci", "cmdb_ci"),
    ("business_service", "cmdb_ci_service"),
    ("company", "core_company"),
    ("location", "cmn_location"),
    ("problem_id", "problem"),
    ("sys_domain", "sys_user_group"),
];

/// Fields every seeded incident has, with the value a new record gets when the seed names none.
const DEFAULTS: [(&str, &str); 29] = [
    ("short_description", ""),
    ("description", ""),
    ("state", "1"),
    ("incident_state", "1"),
    ("impact", "3"),
    ("urgency", "3"),
    ("priority", "5"),
    ("severity", "3"),
    ("category", "inquiry"),
    ("subcategory", ""),
    ("contact_type", ""),
    ("active", "true"),
    ("close_code", ""),
    ("close_notes", ""),
    ("resolved_at", ""),
    ("closed_at", ""),
    ("assignment_group", ""),
    ("assigned_to", ""),
    ("caller_id", ""),
    ("opened_by", ""),
    ("resolved_by", ""),
    ("closed_by", ""),
    ("cmdb_ci", ""),
    ("business_service", ""),
    ("company", ""),
    ("location", ""),
    ("problem_id", ""),
    ("work_notes", ""),
    ("comments", ""),
];

/// A journal line a write produced: which field, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JournalLine {
    pub(super) element: String,
    pub(super) value: String,
}

/// How a seeded or patched value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {0} must be a string, number, boolean or null")]
pub(super) struct InvalidValue(pub(super) String);

/// A new incident row from a seed: the seed's values as strings over the defaults, with
/// system fields filled in where the seed leaves them out, identity from `sys_id` and
/// `number`, and the journal lines the seed's journal fields make.
pub(super) fn seed(
    record: &Map<String, Value>,
    sys_id: String,
    number: String,
    now: &str,
) -> (Row, Vec<JournalLine>) {
    let mut row: Row = DEFAULTS
        .iter()
        .map(|(field, value)| (field.to_string(), value.to_string()))
        .collect();
    for (field, value) in [
        ("opened_at", now),
        ("sys_created_on", now),
        ("sys_updated_on", now),
        ("sys_created_by", "admin"),
        ("sys_updated_by", "admin"),
        ("sys_mod_count", "0"),
        ("sys_class_name", "incident"),
        ("sys_domain", "global"),
        ("sys_tags", ""),
    ] {
        row.insert(field.to_owned(), value.to_owned());
    }
    let lines = overlay(&mut row, record);
    row.insert("sys_id".into(), sys_id);
    row.insert("number".into(), number);
    if !record.contains_key("priority") {
        derive_priority(&mut row);
    }
    (row, lines)
}

/// Puts seed values over a row; journal fields become journal lines.
fn overlay(row: &mut Row, record: &Map<String, Value>) -> Vec<JournalLine> {
    let mut lines = Vec::new();
    for (field, value) in record {
        let value = seed_string(value);
        if JOURNAL_FIELDS.contains(&field.as_str()) {
            lines.extend(journal_line(field, value));
        } else {
            row.insert(field.clone(), value);
        }
    }
    lines
}

/// A seed value as a string: scalars as written, references by their `value`, anything else
/// as its JSON text.
fn seed_string(value: &Value) -> String {
    match value {
        Value::Object(object) => match object.get("value") {
            Some(Value::String(inner)) => inner.clone(),
            _ => value.to_string(),
        },
        Value::Array(_) => value.to_string(),
        scalar => scalar_string(scalar).unwrap_or_default(),
    }
}

/// A scalar as the Table API stores it; `None` for objects and arrays.
fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn journal_line(field: &str, value: String) -> Option<JournalLine> {
    (!value.is_empty()).then(|| JournalLine {
        element: field.to_owned(),
        value,
    })
}

/// What a PATCH did to a row.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    /// Whether a stored value changed or a journal line was added.
    pub(super) changed: bool,
    pub(super) journal: Vec<JournalLine>,
}

/// Applies a PATCH body the way the Table API does: known fields take the new string value,
/// journal fields append a line, system (`sys_*`) and unknown fields are silently ignored.
/// No business rules run, so a PATCH changes exactly the fields it names (a real instance may
/// also re-derive `priority` from `impact` and `urgency`). When anything changed, the system
/// fields record the update. Nothing is applied if any value is an object or array.
pub(super) fn apply(
    row: &mut Row,
    changes: &Map<String, Value>,
    user: &str,
    now: &str,
) -> Result<Applied, InvalidValue> {
    let values = scalar_changes(changes)?;
    let mut applied = Applied::default();
    for (field, value) in values {
        applied.changed |= apply_one(row, field, value, &mut applied.journal);
    }
    if applied.changed {
        touch(row, user, now);
    }
    Ok(applied)
}

fn scalar_changes(changes: &Map<String, Value>) -> Result<Vec<(&str, String)>, InvalidValue> {
    changes
        .iter()
        .map(|(field, value)| {
            scalar_string(value)
                .map(|text| (field.as_str(), text))
                .ok_or_else(|| InvalidValue(field.clone()))
        })
        .collect()
}

fn apply_one(row: &mut Row, field: &str, value: String, journal: &mut Vec<JournalLine>) -> bool {
    if JOURNAL_FIELDS.contains(&field) {
        let line = journal_line(field, value);
        let added = line.is_some();
        journal.extend(line);
        return added;
    }
    if field.starts_with("sys_") {
        return false;
    }
    match row.get_mut(field) {
        Some(stored) if *stored != value => {
            *stored = value;
            true
        }
        _ => false,
    }
}

/// Sets `priority` from `impact` × `urgency` with ServiceNow's default lookup, as a new record
/// gets it; leaves it alone when either is outside 1..=3.
fn derive_priority(row: &mut Row) {
    let level = |field: &str| {
        row.get(field)
            .and_then(|value| value.parse::<u8>().ok())
            .filter(|level| (1..=3).contains(level))
    };
    if let (Some(impact), Some(urgency)) = (level("impact"), level("urgency")) {
        row.insert("priority".into(), (impact + urgency - 1).to_string());
    }
}

fn touch(row: &mut Row, user: &str, now: &str) {
    let count = row
        .get("sys_mod_count")
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    row.insert("sys_mod_count".into(), (count + 1).to_string());
    row.insert("sys_updated_on".into(), now.to_owned());
    row.insert("sys_updated_by".into(), user.to_owned());
}

/// How a row is rendered in a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Render {
    /// `sysparm_exclude_reference_link`: reference fields as bare sys_ids.
    pub(super) exclude_reference_link: bool,
    /// `sysparm_fields`: only these fields (unknown names are ignored).
    pub(super) fields: Option<Vec<String>>,
}

// === impl Render ===

impl Render {
    /// A row as a JSON object. `references` says whether this table has reference fields;
    /// `base_url` is the instance the links point at.
    pub(super) fn row(&self, row: &Row, references: bool, base_url: &str) -> Value {
        let object: Map<String, Value> = row
            .iter()
            .filter(|(field, _)| self.wants(field))
            .map(|(field, value)| {
                let target = references.then(|| reference_table(field)).flatten();
                (field.clone(), self.value(value, target, base_url))
            })
            .collect();
        Value::Object(object)
    }

    fn wants(&self, field: &str) -> bool {
        self.fields
            .as_ref()
            .is_none_or(|fields| fields.iter().any(|wanted| wanted == field))
    }

    fn value(&self, value: &str, target: Option<&str>, base_url: &str) -> Value {
        match target {
            Some(table) if !self.exclude_reference_link && !value.is_empty() => serde_json::json!({
                "link": format!("{base_url}/api/now/table/{table}/{value}"),
                "value": value,
            }),
            _ => Value::String(value.to_owned()),
        }
    }
}

fn reference_table(field: &str) -> Option<&'static str> {
    REFERENCES
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, table)| *table)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: &str = "2024-05-01 10:00:00";

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn seeded(value: Value) -> (Row, Vec<JournalLine>) {
        seed(&object(value), "a".repeat(32), "INC0010001".into(), NOW)
    }

    #[test]
    fn seeds_fill_identity_and_system_fields_and_stringify_values() {
        let (row, lines) = seeded(json!({
            "short_description": "Checkout is down",
            "impact": 1, "urgency": "2", "active": false, "close_notes": null,
            "assignment_group": {"link": "x", "value": "b".repeat(32)},
            "work_notes": "seeded note",
        }));
        assert_eq!(row["sys_id"], "a".repeat(32));
        assert_eq!(row["number"], "INC0010001");
        assert_eq!(row["sys_mod_count"], "0");
        assert_eq!(row["sys_updated_on"], NOW);
        assert_eq!(row["impact"], "1");
        assert_eq!(row["priority"], "2");
        assert_eq!(row["active"], "false");
        assert_eq!(row["close_notes"], "");
        assert_eq!(row["assignment_group"], "b".repeat(32));
        assert_eq!(row["work_notes"], "");
        assert_eq!(
            lines,
            [JournalLine {
                element: "work_notes".into(),
                value: "seeded note".into()
            }]
        );
    }

    #[test]
    fn patches_apply_known_fields_and_ignore_unknown_and_system_ones() {
        let (mut row, _) = seeded(json!({}));
        let applied = apply(
            &mut row,
            &object(json!({"urgency": "1", "u_made_up": "x", "sys_mod_count": "99"})),
            "steward",
            "2024-05-01 11:00:00",
        )
        .unwrap();
        assert!(applied.changed);
        assert_eq!(row["urgency"], "1");
        assert_eq!(row["priority"], "5");
        assert!(!row.contains_key("u_made_up"));
        assert_eq!(row["sys_mod_count"], "1");
        assert_eq!(row["sys_updated_by"], "steward");
        assert_eq!(row["sys_updated_on"], "2024-05-01 11:00:00");
    }

    #[test]
    fn journal_writes_add_lines_and_keep_the_field_empty() {
        let (mut row, _) = seeded(json!({}));
        let applied = apply(
            &mut row,
            &object(json!({"work_notes": "[run-1] triaged", "comments": ""})),
            "steward",
            NOW,
        )
        .unwrap();
        assert_eq!(applied.journal.len(), 1);
        assert_eq!(applied.journal[0].element, "work_notes");
        assert_eq!(row["work_notes"], "");
        assert_eq!(row["sys_mod_count"], "1");
    }

    #[test]
    fn a_patch_that_changes_nothing_leaves_the_version_alone() {
        let (mut row, _) = seeded(json!({"state": "2", "incident_state": "2"}));
        let applied = apply(&mut row, &object(json!({"state": "2"})), "steward", NOW).unwrap();
        assert!(!applied.changed);
        assert_eq!(row["sys_mod_count"], "0");
    }

    #[test]
    fn patches_run_no_business_rules() {
        let (mut row, _) = seeded(json!({"priority": "4"}));
        apply(
            &mut row,
            &object(json!({"state": "2", "impact": "1"})),
            "steward",
            NOW,
        )
        .unwrap();
        assert_eq!(row["incident_state"], "1");
        assert_eq!(row["priority"], "4");
    }

    #[test]
    fn structured_values_refuse_the_whole_patch() {
        let (mut row, _) = seeded(json!({}));
        let before = row.clone();
        for bad in [
            json!({"urgency": "1", "state": {"value": "2"}}),
            json!({"state": [1]}),
        ] {
            let error = apply(&mut row, &object(bad), "steward", NOW).unwrap_err();
            assert_eq!(error, InvalidValue("state".into()));
            assert_eq!(row, before);
        }
    }

    #[test]
    fn reference_fields_render_as_links_unless_excluded() {
        let group = "8a4dde73c6112278017a6a4baf547aa7";
        let (row, _) = seeded(json!({"assignment_group": group}));
        let linked = Render::default().row(&row, true, "http://127.0.0.1:9");
        assert_eq!(
            linked["assignment_group"],
            json!({
                "link": format!("http://127.0.0.1:9/api/now/table/sys_user_group/{group}"),
                "value": group,
            })
        );
        assert_eq!(linked["caller_id"], "");
        assert_eq!(linked["sys_domain"]["value"], "global");
        let raw = Render {
            exclude_reference_link: true,
            fields: None,
        };
        assert_eq!(raw.row(&row, true, "http://x")["assignment_group"], group);
        assert_eq!(
            Render::default().row(&row, false, "http://x")["assignment_group"],
            group
        );
    }

    #[test]
    fn field_lists_select_fields_and_ignore_unknown_names() {
        let (row, _) = seeded(json!({}));
        let render = Render {
            exclude_reference_link: false,
            fields: Some(vec![
                "number".into(),
                "sys_mod_count".into(),
                "bogus".into(),
            ]),
        };
        assert_eq!(
            render.row(&row, true, "http://x"),
            json!({"number": "INC0010001", "sys_mod_count": "0"})
        );
    }
}
