//! Consumption budgets: how many LLM calls and tokens a tenant may spend per hour and per day,
//! and how many runs one webhook source may start per minute.
//!
//! The platform sets a ceiling for each ([`PlatformLimits`], from the config file); a tenant
//! may set its own value at or below it ([`Budgets`], in its settings), and without one gets
//! the ceiling. Windows are fixed and aligned to UTC (the hour from :00, the day from 00:00,
//! the minute from :00). A run asks before the work: the source cap when it starts, the LLM
//! budget before each triage. The ask is one atomic reservation in the store
//! (`Store::reserve_budget`), so two runs asking at once for the last unit of room cannot
//! both get it. A refused run is held until its window ends (see `run/gates.rs`).

use serde::{Deserialize, Serialize};
use steward_persistence::MeterAsk;

/// One minute, one hour and one day, in ms.
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// The meter names, as stored.
pub mod meters {
    pub const LLM_CALLS_HOUR: &str = "llm.calls.hour";
    pub const LLM_CALLS_DAY: &str = "llm.calls.day";
    pub const LLM_TOKENS_HOUR: &str = "llm.tokens.hour";
    pub const LLM_TOKENS_DAY: &str = "llm.tokens.day";

    /// The meter of runs started from `source`, per minute.
    pub fn source_minute(source: &str) -> String {
        format!("source.{source}.minute")
    }
}

/// The platform's ceilings; each is also the value of a tenant that sets none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformLimits {
    /// LLM calls per tenant per hour (default 10,000).
    pub llm_calls_per_hour: u64,
    /// LLM calls per tenant per day (default 100,000).
    pub llm_calls_per_day: u64,
    /// LLM tokens (prompt and completion) per tenant per hour (default 20 million).
    pub llm_tokens_per_hour: u64,
    /// LLM tokens per tenant per day (default 200 million).
    pub llm_tokens_per_day: u64,
    /// Runs one webhook source may start per minute (default 6,000).
    pub runs_per_source_per_minute: u64,
}

impl Default for PlatformLimits {
    fn default() -> Self {
        Self {
            llm_calls_per_hour: 10_000,
            llm_calls_per_day: 100_000,
            llm_tokens_per_hour: 20_000_000,
            llm_tokens_per_day: 200_000_000,
            runs_per_source_per_minute: 6_000,
        }
    }
}

/// A tenant's own budgets; an absent value means the platform's ceiling. Zero allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_calls_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_calls_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_tokens_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_per_source_per_minute: Option<u64>,
}

/// The budgets a tenant's runs are held to: its own values, never above the platform's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub llm_calls_per_hour: u64,
    pub llm_calls_per_day: u64,
    pub llm_tokens_per_hour: u64,
    pub llm_tokens_per_day: u64,
    pub runs_per_source_per_minute: u64,
}

impl Budgets {
    /// Each value with its name and the platform's ceiling for it.
    fn pairs(&self, limits: &PlatformLimits) -> [(&'static str, Option<u64>, u64); 5] {
        [
            (
                "llm_calls_per_hour",
                self.llm_calls_per_hour,
                limits.llm_calls_per_hour,
            ),
            (
                "llm_calls_per_day",
                self.llm_calls_per_day,
                limits.llm_calls_per_day,
            ),
            (
                "llm_tokens_per_hour",
                self.llm_tokens_per_hour,
                limits.llm_tokens_per_hour,
            ),
            (
                "llm_tokens_per_day",
                self.llm_tokens_per_day,
                limits.llm_tokens_per_day,
            ),
            (
                "runs_per_source_per_minute",
                self.runs_per_source_per_minute,
                limits.runs_per_source_per_minute,
            ),
        ]
    }

    /// Refuses any value above the platform's ceiling, naming each one and its ceiling.
    pub fn check(&self, limits: &PlatformLimits) -> Result<(), String> {
        let over: Vec<String> = self
            .pairs(limits)
            .iter()
            .filter_map(|(name, value, ceiling)| {
                value
                    .filter(|v| v > ceiling)
                    .map(|v| format!("`{name}` is {v}, above the platform limit of {ceiling}"))
            })
            .collect();
        if over.is_empty() {
            Ok(())
        } else {
            Err(over.join("; "))
        }
    }

    /// The values runs are held to now: the tenant's, capped by the platform's (a ceiling
    /// lowered after the tenant set its value still holds).
    pub fn effective(&self, limits: &PlatformLimits) -> Effective {
        let [calls_h, calls_d, tokens_h, tokens_d, source] = self
            .pairs(limits)
            .map(|(_, v, ceiling)| v.unwrap_or(ceiling).min(ceiling));
        Effective {
            llm_calls_per_hour: calls_h,
            llm_calls_per_day: calls_d,
            llm_tokens_per_hour: tokens_h,
            llm_tokens_per_day: tokens_d,
            runs_per_source_per_minute: source,
        }
    }
}

/// The start of the window of length `len` (ms) that holds `now`.
pub fn window_start(now: i64, len: i64) -> i64 {
    now - now.rem_euclid(len)
}

/// The length of a meter's window, from its name.
pub fn window_len(meter: &str) -> i64 {
    if meter.ends_with(".day") {
        DAY_MS
    } else if meter.ends_with(".hour") {
        HOUR_MS
    } else {
        MINUTE_MS
    }
}

/// The asks one triage makes at `now`: one call, and `tokens` (the reserved estimate) in
/// the hour and the day.
pub fn llm_asks(budget: &Effective, now: i64, tokens: u64) -> Vec<MeterAsk> {
    let ask = |meter: &str, len, limit, amount| MeterAsk {
        meter: meter.to_owned(),
        window_start: window_start(now, len),
        limit,
        amount,
    };
    vec![
        ask(
            meters::LLM_CALLS_HOUR,
            HOUR_MS,
            budget.llm_calls_per_hour,
            1,
        ),
        ask(meters::LLM_CALLS_DAY, DAY_MS, budget.llm_calls_per_day, 1),
        ask(
            meters::LLM_TOKENS_HOUR,
            HOUR_MS,
            budget.llm_tokens_per_hour,
            tokens,
        ),
        ask(
            meters::LLM_TOKENS_DAY,
            DAY_MS,
            budget.llm_tokens_per_day,
            tokens,
        ),
    ]
}

/// The ask a run makes when it starts from `source` at `now`.
pub fn source_ask(budget: &Effective, source: &str, now: i64) -> MeterAsk {
    MeterAsk {
        meter: meters::source_minute(source),
        window_start: window_start(now, MINUTE_MS),
        limit: budget.runs_per_source_per_minute,
        amount: 1,
    }
}

/// A meter's name in words, for a hold's reason.
pub fn describe(meter: &str) -> String {
    match meter {
        meters::LLM_CALLS_HOUR => "LLM calls this hour".into(),
        meters::LLM_CALLS_DAY => "LLM calls today".into(),
        meters::LLM_TOKENS_HOUR => "LLM tokens this hour".into(),
        meters::LLM_TOKENS_DAY => "LLM tokens today".into(),
        other => match other
            .strip_prefix("source.")
            .and_then(|s| s.strip_suffix(".minute"))
        {
            Some(source) => format!("runs started from source `{source}` this minute"),
            None => other.to_owned(),
        },
    }
}

/// A Unix-ms time as `HH:MM:SS UTC`.
pub fn clock_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_value_above_the_ceiling_is_refused_by_name() {
        let limits = PlatformLimits {
            llm_calls_per_hour: 100,
            ..PlatformLimits::default()
        };
        let budgets = Budgets {
            llm_calls_per_hour: Some(101),
            llm_tokens_per_day: Some(1),
            ..Budgets::default()
        };
        let err = budgets.check(&limits).unwrap_err();
        assert!(
            err.contains("`llm_calls_per_hour` is 101, above the platform limit of 100"),
            "{err}"
        );
        assert!(!err.contains("tokens"), "{err}");
        let ok = Budgets {
            llm_calls_per_hour: Some(100),
            ..Budgets::default()
        };
        ok.check(&limits).unwrap();
    }

    #[test]
    fn effective_budgets_never_exceed_the_ceiling() {
        let limits = PlatformLimits::default();
        let budgets = Budgets {
            llm_calls_per_hour: Some(3),
            runs_per_source_per_minute: Some(u64::MAX),
            ..Budgets::default()
        };
        let e = budgets.effective(&limits);
        assert_eq!(e.llm_calls_per_hour, 3);
        assert_eq!(
            e.llm_calls_per_day, limits.llm_calls_per_day,
            "unset: the ceiling"
        );
        assert_eq!(
            e.runs_per_source_per_minute, limits.runs_per_source_per_minute,
            "a lowered ceiling still holds"
        );
    }

    #[test]
    fn windows_are_aligned_to_utc() {
        let now = 1_700_000_123_456;
        assert_eq!(window_start(now, MINUTE_MS) % MINUTE_MS, 0);
        assert_eq!(window_start(now, HOUR_MS), 1_699_999_200_000);
        assert!(window_start(now, DAY_MS) <= now && now < window_start(now, DAY_MS) + DAY_MS);
        assert_eq!(window_len(meters::LLM_CALLS_DAY), DAY_MS);
        assert_eq!(window_len(meters::LLM_TOKENS_HOUR), HOUR_MS);
        assert_eq!(window_len(&meters::source_minute("sn")), MINUTE_MS);
        assert_eq!(clock_time(1_699_999_200_000), "22:00:00 UTC");
    }

    #[test]
    fn a_triage_asks_for_one_call_and_its_tokens_in_both_windows() {
        let e = Budgets::default().effective(&PlatformLimits::default());
        let asks = llm_asks(&e, HOUR_MS + 5, 1024);
        assert_eq!(asks.len(), 4);
        assert!(asks.iter().all(|a| a.window_start <= HOUR_MS + 5));
        let tokens: u64 = asks
            .iter()
            .filter(|a| a.meter.contains("tokens"))
            .map(|a| a.amount)
            .sum();
        assert_eq!(tokens, 2048);
        assert_eq!(
            describe(&meters::source_minute("sn")),
            "runs started from source `sn` this minute"
        );
    }

    #[test]
    fn unknown_budget_fields_are_refused() {
        let err =
            serde_json::from_value::<Budgets>(serde_json::json!({ "llm_calls": 5 })).unwrap_err();
        assert!(err.to_string().contains("llm_calls"), "{err}");
    }
}
