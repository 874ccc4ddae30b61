//! Listing incidents changed since a point in time, for the catch-up pass.
//!
//! The request is the Table API list call with ServiceNow's own encoded query:
//! `sysparm_query=sys_updated_on>=YYYY-MM-DD HH:MM:SS^ORDERBYsys_updated_on^ORDERBYsys_id`, raw
//! values, only the fields the pass needs, one page of `sysparm_limit` records from
//! `sysparm_offset`. Times are UTC with one-second resolution, as ServiceNow stores them when
//! display values are off. The answer is checked strictly: every record must carry a valid
//! `sys_id`, an incident number and a `sys_updated_on` in the expected format, each as a JSON
//! string, no earlier than the time asked for; anything else fails the whole page, so a pass
//! never acts on half an answer.

use reqwest::StatusCode;
use serde_json::Value;
use steward_core::IncidentRef;

use super::wire::{self, clip};
use super::{RAW_VALUES, ServiceNowClient, ServiceNowError};

/// The largest page asked for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The fields each listed record carries.
const LIST_FIELDS: &str = "sys_id,number,sys_updated_on";

/// One incident change as listed: the record and when it was last updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentChange {
    pub sys_id: String,
    pub number: String,
    /// `sys_updated_on` as ServiceNow wrote it (`YYYY-MM-DD HH:MM:SS`, UTC).
    pub updated_on: String,
    /// The same time in Unix milliseconds (always a whole second).
    pub updated_at_ms: i64,
}

/// One page of changes, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    pub changes: Vec<IncidentChange>,
    /// `X-Total-Count`: how many records match the query, when the instance said.
    pub total: Option<u64>,
}

impl ServiceNowClient {
    /// One page of the incidents updated at or after `since_ms` (Unix ms, rounded down to the
    /// second), ordered by update time and then `sys_id`, starting `offset` records in. At
    /// most `limit` records (1 to [`MAX_PAGE_SIZE`]) are asked for; an answer with more is
    /// refused. A 429 is [`ServiceNowError::RateLimited`] with the `Retry-After` seconds.
    pub async fn incidents_updated_since(
        &self,
        since_ms: i64,
        offset: u64,
        limit: u32,
    ) -> Result<ChangePage, ServiceNowError> {
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(super::refused(
                "page size must be 1 to 1000",
                &limit.to_string(),
            ));
        }
        let since = format_time(since_ms)
            .ok_or_else(|| super::refused("the time is out of range", &since_ms.to_string()))?;
        let url = self.endpoint(&["api", "now", "table", "incident"])?;
        let query = format!("sys_updated_on>={since}^ORDERBYsys_updated_on^ORDERBYsys_id");
        let (limit_text, offset_text) = (limit.to_string(), offset.to_string());
        let mut params = vec![
            ("sysparm_query", query.as_str()),
            ("sysparm_fields", LIST_FIELDS),
            ("sysparm_limit", limit_text.as_str()),
            ("sysparm_offset", offset_text.as_str()),
        ];
        params.extend(RAW_VALUES);
        let build = || self.http.get(url.clone()).query(&params);
        let token = self.tokens.token().await?;
        let mut reply = self.send(&build, &token.secret).await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            let fresh = self.tokens.replace(&token).await?;
            reply = self.send(&build, &fresh.secret).await?;
        }
        if !reply.status.is_success() {
            return Err(wire::table_error(&reply));
        }
        let total = total_count(&reply.headers)?;
        let changes = parse_changes(&reply.json()?, since_ms.div_euclid(1000) * 1000)?;
        if changes.len() > limit as usize {
            return Err(ServiceNowError::Decode(format!(
                "asked for at most {limit} records but got {}",
                changes.len()
            )));
        }
        Ok(ChangePage { changes, total })
    }
}

/// `X-Total-Count`, when present; a value that is not a count is refused.
fn total_count(headers: &reqwest::header::HeaderMap) -> Result<Option<u64>, ServiceNowError> {
    let Some(value) = headers.get("x-total-count") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| ServiceNowError::Decode("X-Total-Count is not a count".into()))
}

/// The records of a list answer as changes, each checked, none earlier than `since_ms`, in
/// the order asked for. Public so that the parser can be exercised without an instance.
pub fn parse_changes(reply: &Value, since_ms: i64) -> Result<Vec<IncidentChange>, ServiceNowError> {
    let decode = |m: String| ServiceNowError::Decode(clip(&m));
    let items = reply
        .get("result")
        .and_then(Value::as_array)
        .ok_or_else(|| decode("the answer has no `result` list".into()))?;
    let mut changes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = |name: &str| {
            item.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| decode(format!("record {i} has no text `{name}`")))
        };
        let sys_id = text("sys_id")?;
        if IncidentRef::sys_id(sys_id).is_none() {
            return Err(decode(format!(
                "record {i} has a malformed sys_id `{sys_id}`"
            )));
        }
        let number = text("number")?;
        if IncidentRef::number(number).is_none() {
            return Err(decode(format!(
                "record {i} has a malformed number `{number}`"
            )));
        }
        let updated_on = text("sys_updated_on")?;
        let updated_at_ms = parse_time(updated_on).ok_or_else(|| {
            decode(format!(
                "record {i} has sys_updated_on `{updated_on}`, not YYYY-MM-DD HH:MM:SS"
            ))
        })?;
        if updated_at_ms < since_ms {
            return Err(decode(format!(
                "record {i} was updated at {updated_on}, before the time asked for"
            )));
        }
        if let Some(last) = changes.last().map(|c: &IncidentChange| c.updated_at_ms)
            && updated_at_ms < last
        {
            return Err(decode(format!("record {i} is out of update order")));
        }
        changes.push(IncidentChange {
            sys_id: sys_id.to_owned(),
            number: number.to_owned(),
            updated_on: updated_on.to_owned(),
            updated_at_ms,
        });
    }
    Ok(changes)
}

/// Reads ServiceNow's `YYYY-MM-DD HH:MM:SS` (UTC) as Unix ms; None for anything else,
/// including impossible dates (February 30th) and years outside 1970 to 9999.
pub fn parse_time(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let shaped = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shaped {
        return None;
    }
    let num = |from: usize, to: usize| text[from..to].parse::<i64>().ok();
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let valid = year >= 1970
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000)
}

/// Writes Unix ms (rounded down to the second) as ServiceNow's `YYYY-MM-DD HH:MM:SS` (UTC);
/// None before 1970 or after 9999.
pub fn format_time(ms: i64) -> Option<String> {
    if ms < 0 {
        return None;
    }
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SYS_ID: &str = "a9e30c7dc61122760116894de7bcc7bd";

    #[test]
    fn times_round_trip_in_servicenow_format() {
        assert_eq!(parse_time("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_time("2015-11-01 22:37:27"), Some(1_446_417_447_000));
        assert_eq!(parse_time("2024-02-29 23:59:59"), Some(1_709_251_199_000));
        for ms in [0, 1_446_417_447_000, 1_709_251_199_000, 4_102_444_800_000] {
            assert_eq!(parse_time(&format_time(ms).unwrap()), Some(ms));
        }
        assert_eq!(
            format_time(1_446_417_447_999).unwrap(),
            "2015-11-01 22:37:27"
        );
        assert_eq!(format_time(-1), None);
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "2015-11-01T22:37:27",
            "2015-11-01 22:37:27Z",
            "2015-11-01 22:37",
            "2023-02-29 10:00:00",
            "2015-13-01 00:00:00",
            "2015-11-01 24:00:00",
            "1969-12-31 23:59:59",
            "+015-11-01 22:37:27",
            "２015-11-01 22:37:27",
            "11/01/2015 22:37:27",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_total_count_header_is_a_count_or_refused() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let mut headers = HeaderMap::new();
        assert_eq!(total_count(&headers).unwrap(), None);
        headers.insert("x-total-count", HeaderValue::from_static("250"));
        assert_eq!(total_count(&headers).unwrap(), Some(250));
        for bad in ["-1", "many", "1e3", ""] {
            headers.insert("x-total-count", HeaderValue::from_static(bad));
            assert!(total_count(&headers).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_page_is_read_strictly() {
        let good = json!({"result": [
            {"sys_id": SYS_ID, "number": "INC0010001", "sys_updated_on": "2026-01-02 03:04:05"},
        ]});
        let changes = parse_changes(&good, 0).unwrap();
        assert_eq!(changes[0].updated_on, "2026-01-02 03:04:05");
        const WHEN: &str = "2026-01-02 03:04:05";
        let one = |sys_id: Value, number: Value, updated: Value| {
            let record = json!({"sys_id": sys_id, "number": number, "sys_updated_on": updated});
            json!({ "result": [record] })
        };
        let hostile = [
            json!({"result": {}}),
            json!({"records": []}),
            one(json!(7), json!("INC1"), json!(WHEN)),
            one(json!(SYS_ID), json!("INC1"), json!(1_767_323_045)),
            one(json!(SYS_ID), json!(["INC1"]), json!(WHEN)),
            one(json!("../x"), json!("INC1"), json!(WHEN)),
            one(json!(SYS_ID), json!("INC^1"), json!(WHEN)),
            one(json!(SYS_ID), json!("INC1"), json!("02/01/2026")),
            one(json!(SYS_ID), json!("INC1"), Value::Null),
            json!({"result": ["INC1"]}),
        ];
        for reply in hostile {
            assert!(
                matches!(parse_changes(&reply, 0), Err(ServiceNowError::Decode(_))),
                "{reply}"
            );
        }
        let early = parse_changes(&good, parse_time("2026-01-02 03:04:06").unwrap());
        assert!(matches!(early, Err(ServiceNowError::Decode(_))));
        let unordered = json!({"result": [
            {"sys_id": SYS_ID, "number": "INC1", "sys_updated_on": "2026-01-02 03:04:05"},
            {"sys_id": SYS_ID, "number": "INC1", "sys_updated_on": "2026-01-02 03:04:04"},
        ]});
        assert!(parse_changes(&unordered, 0).is_err());
    }
}
