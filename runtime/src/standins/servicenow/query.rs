//! The subset of ServiceNow's encoded query language the stand-in answers: conditions joined by
//! `^` (AND) using `=`, `!=`, `LIKE` (case-insensitive contains), `STARTSWITH` or a comparison
//! (`<`, `<=`, `>`, `>=`: numerically when both sides are numbers, else as text, which orders
//! ServiceNow's `YYYY-MM-DD HH:MM:SS` date-times by time), plus `ORDERBY<field>` and
//! `ORDERBYDESC<field>`. Anything else (`^OR`, `^NQ`, other operators) is
//! refused rather than guessed at: a real instance quietly ignores conditions it cannot parse
//! and may return every row, which is exactly what a test must not rely on.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A stored row: field name to raw string value.
pub(super) type Row = BTreeMap<String, String>;

/// Why an encoded query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum QueryError {
    #[error("query term {0:?} has no field name")]
    NoField(String),
    #[error("query term {0:?} uses an operator the stand-in does not support")]
    Operator(String),
    #[error("query term {0:?} joins with OR or NQ, which the stand-in does not support")]
    Disjunction(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    Like,
    StartsWith,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    field: String,
    operator: Operator,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Order {
    field: String,
    descending: bool,
}

/// A parsed `sysparm_query`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct EncodedQuery {
    conditions: Vec<Condition>,
    orders: Vec<Order>,
}

// === impl EncodedQuery ===

impl EncodedQuery {
    /// Parses an encoded query; the empty query matches every row.
    pub(super) fn parse(query: &str) -> Result<Self, QueryError> {
        let mut parsed = Self::default();
        for term in query.split('^').filter(|term| !term.is_empty()) {
            parsed.push_term(term)?;
        }
        Ok(parsed)
    }

    fn push_term(&mut self, term: &str) -> Result<(), QueryError> {
        if let Some(field) = term.strip_prefix("ORDERBYDESC") {
            self.orders.push(order(term, field, true)?);
        } else if let Some(field) = term.strip_prefix("ORDERBY") {
            self.orders.push(order(term, field, false)?);
        } else if term.starts_with("OR") || term.starts_with("NQ") {
            return Err(QueryError::Disjunction(term.to_owned()));
        } else {
            self.conditions.push(condition(term)?);
        }
        Ok(())
    }

    /// Whether a row satisfies every condition. A field the row lacks matches nothing.
    pub(super) fn matches(&self, row: &Row) -> bool {
        self.conditions.iter().all(|condition| {
            row.get(&condition.field)
                .is_some_and(|value| condition.holds(value))
        })
    }

    /// Sorts rows by the query's ORDERBY terms, keeping stored order between equal rows.
    pub(super) fn sort(&self, rows: &mut [&Row]) {
        rows.sort_by(|a, b| {
            self.orders
                .iter()
                .map(|order| order.compare(a, b))
                .find(|ordering| ordering.is_ne())
                .unwrap_or(Ordering::Equal)
        });
    }
}

impl Condition {
    fn holds(&self, value: &str) -> bool {
        match self.operator {
            Operator::Equals => value == self.value,
            Operator::NotEquals => value != self.value,
            Operator::Like => value.to_lowercase().contains(&self.value.to_lowercase()),
            Operator::StartsWith => value.starts_with(&self.value),
            Operator::Less => compare(value, &self.value).is_lt(),
            Operator::LessOrEqual => compare(value, &self.value).is_le(),
            Operator::Greater => compare(value, &self.value).is_gt(),
            Operator::GreaterOrEqual => compare(value, &self.value).is_ge(),
        }
    }
}

/// A stored value against a query's: as integers when both are, else as numbers when both
/// are, else as text.
fn compare(value: &str, bound: &str) -> Ordering {
    if let (Ok(a), Ok(b)) = (value.parse::<i128>(), bound.parse::<i128>()) {
        return a.cmp(&b);
    }
    match (value.parse::<f64>(), bound.parse::<f64>()) {
        (Ok(a), Ok(b)) if a.is_finite() && b.is_finite() => {
            a.partial_cmp(&b).unwrap_or(Ordering::Equal)
        }
        _ => value.cmp(bound),
    }
}

impl Order {
    fn compare(&self, a: &Row, b: &Row) -> Ordering {
        let key = |row: &Row| row.get(&self.field).cloned().unwrap_or_default();
        let ordering = key(a).cmp(&key(b));
        if self.descending {
            ordering.reverse()
        } else {
            ordering
        }
    }
}

fn order(term: &str, field: &str, descending: bool) -> Result<Order, QueryError> {
    if field.is_empty() || !field.bytes().all(is_field_byte) {
        return Err(QueryError::NoField(term.to_owned()));
    }
    Ok(Order {
        field: field.to_owned(),
        descending,
    })
}

fn condition(term: &str) -> Result<Condition, QueryError> {
    let split = term.bytes().take_while(|b| is_field_byte(*b)).count();
    let (field, rest) = term.split_at(split);
    if field.is_empty() {
        return Err(QueryError::NoField(term.to_owned()));
    }
    let (operator, value) = operator(rest).ok_or_else(|| QueryError::Operator(term.to_owned()))?;
    // `a<>b`, `a<==b` and script values (`javascript:gs.daysAgo(1)`) are not guessed at.
    let literal = matches!(operator, Operator::Like | Operator::StartsWith);
    if !literal && (value.starts_with(['<', '>', '=', '!']) || value.starts_with("javascript:")) {
        return Err(QueryError::Operator(term.to_owned()));
    }
    Ok(Condition {
        field: field.to_owned(),
        operator,
        value: value.to_owned(),
    })
}

fn operator(rest: &str) -> Option<(Operator, &str)> {
    // Two-character operators first, so `>=` is not read as `>` of `=…`.
    const OPERATORS: [(&str, Operator); 8] = [
        ("!=", Operator::NotEquals),
        ("<=", Operator::LessOrEqual),
        (">=", Operator::GreaterOrEqual),
        ("<", Operator::Less),
        (">", Operator::Greater),
        ("=", Operator::Equals),
        ("STARTSWITH", Operator::StartsWith),
        ("LIKE", Operator::Like),
    ];
    OPERATORS
        .iter()
        .find_map(|(token, op)| rest.strip_prefix(token).map(|value| (*op, value)))
}

/// Field names are lowercase letters, digits and underscores.
fn is_field_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn conditions_are_anded() {
        let query =
            EncodedQuery::parse("element_id=abc^element=work_notes^valueLIKE[RUN-1]").unwrap();
        let hit = row(&[
            ("element_id", "abc"),
            ("element", "work_notes"),
            ("value", "Triage note [run-1] done"),
        ]);
        assert!(query.matches(&hit));
        let mut miss = hit;
        miss.insert("element".into(), "comments".into());
        assert!(!query.matches(&miss));
    }

    #[test]
    fn values_may_contain_equals_signs_and_operators() {
        let query = EncodedQuery::parse("short_description=a=b LIKE c").unwrap();
        assert!(query.matches(&row(&[("short_description", "a=b LIKE c")])));
    }

    #[test]
    fn not_equals_and_startswith_work() {
        let query = EncodedQuery::parse("state!=7^numberSTARTSWITHINC001").unwrap();
        assert!(query.matches(&row(&[("state", "1"), ("number", "INC0010001")])));
        assert!(!query.matches(&row(&[("state", "7"), ("number", "INC0010001")])));
    }

    #[test]
    fn comparisons_order_date_times_by_time_and_numbers_by_value() {
        let at = |t: &str| row(&[("sys_updated_on", t), ("impact", "2")]);
        let query = EncodedQuery::parse("sys_updated_on>=2024-05-01 11:00:00").unwrap();
        assert!(query.matches(&at("2024-05-01 11:00:00")));
        assert!(query.matches(&at("2024-05-02 00:00:00")));
        assert!(!query.matches(&at("2024-05-01 10:59:59")));
        let query = EncodedQuery::parse("sys_updated_on>2024-05-01 11:00:00").unwrap();
        assert!(!query.matches(&at("2024-05-01 11:00:00")));
        assert!(query.matches(&at("2024-05-01 11:00:01")));
        let query = EncodedQuery::parse("sys_updated_on<2024-05-01 11:00:00").unwrap();
        assert!(query.matches(&at("2024-04-30 23:59:59")));
        assert!(!query.matches(&at("2024-05-01 11:00:00")));
        let query = EncodedQuery::parse("sys_updated_on<=2024-05-01 11:00:00").unwrap();
        assert!(query.matches(&at("2024-05-01 11:00:00")));
        // Numbers by value, not as text ("10" > "9").
        let n = |v: &str| row(&[("reassignment_count", v)]);
        let query = EncodedQuery::parse("reassignment_count>9").unwrap();
        assert!(query.matches(&n("10")));
        assert!(!query.matches(&n("9")));
        assert!(!query.matches(&n("-1")));
        let query = EncodedQuery::parse("reassignment_count>=0").unwrap();
        assert!(query.matches(&n("-0")), "-0 is 0");
        let query = EncodedQuery::parse("reassignment_count>9007199254740992").unwrap();
        assert!(
            query.matches(&n("9007199254740993")),
            "integers beyond f64's"
        );
        let query = EncodedQuery::parse("reassignment_count<2.5").unwrap();
        assert!(query.matches(&n("2.25")));
        assert!(!query.matches(&n("10")));
        // The catch-up pass's own query, whole.
        let query = EncodedQuery::parse(
            "sys_updated_on>=2024-05-01 11:00:00^ORDERBYsys_updated_on^ORDERBYsys_id",
        )
        .unwrap();
        assert!(query.matches(&at("2024-05-01 11:00:00")));
        assert!(!query.matches(&at("2024-04-01 11:00:00")));
    }

    #[test]
    fn a_missing_field_matches_nothing() {
        let query = EncodedQuery::parse("u_unknown=1").unwrap();
        assert!(!query.matches(&row(&[("number", "INC0010001")])));
    }

    #[test]
    fn the_empty_query_matches_everything() {
        let query = EncodedQuery::parse("").unwrap();
        assert!(query.matches(&row(&[])));
        assert_eq!(EncodedQuery::parse("^^").unwrap(), query);
    }

    #[test]
    fn unsupported_terms_are_refused() {
        let cases = [
            (
                "number=1^ORnumber=2",
                QueryError::Disjunction("ORnumber=2".into()),
            ),
            (
                "number=1^NQstate=2",
                QueryError::Disjunction("NQstate=2".into()),
            ),
            ("=1", QueryError::NoField("=1".into())),
            ("numberIN1,2", QueryError::Operator("numberIN1,2".into())),
            ("number<>1", QueryError::Operator("number<>1".into())),
            ("number<==1", QueryError::Operator("number<==1".into())),
            ("number!==1", QueryError::Operator("number!==1".into())),
            (
                "sys_updated_on>=javascript:gs.daysAgoStart(0)",
                QueryError::Operator("sys_updated_on>=javascript:gs.daysAgoStart(0)".into()),
            ),
            ("number", QueryError::Operator("number".into())),
            ("ORDERBY", QueryError::NoField("ORDERBY".into())),
            (
                "ORDERBYDESCa;b",
                QueryError::NoField("ORDERBYDESCa;b".into()),
            ),
            ("Number=1", QueryError::NoField("Number=1".into())),
        ];
        for (query, expected) in cases {
            assert_eq!(EncodedQuery::parse(query), Err(expected), "{query}");
        }
    }

    #[test]
    fn hostile_input_is_refused_without_panicking() {
        let long = "a".repeat(100_000) + "\u{1F600}=\u{0}";
        assert!(EncodedQuery::parse(&long).is_err());
        assert!(EncodedQuery::parse("\u{1F600}").is_err());
        assert!(EncodedQuery::parse("value=\u{1F600}^").is_ok());
    }

    #[test]
    fn rows_sort_by_orderby_terms() {
        let a = row(&[("sys_created_on", "2024-01-01 00:00:02"), ("n", "a")]);
        let b = row(&[("sys_created_on", "2024-01-01 00:00:01"), ("n", "b")]);
        let c = row(&[("sys_created_on", "2024-01-01 00:00:02"), ("n", "c")]);
        let query = EncodedQuery::parse("ORDERBYDESCsys_created_on").unwrap();
        let mut rows = vec![&a, &b, &c];
        query.sort(&mut rows);
        let names: Vec<_> = rows.iter().map(|r| r["n"].as_str()).collect();
        assert_eq!(names, ["a", "c", "b"]);
        let query = EncodedQuery::parse("ORDERBYsys_created_on").unwrap();
        query.sort(&mut rows);
        let names: Vec<_> = rows.iter().map(|r| r["n"].as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
    }
}
