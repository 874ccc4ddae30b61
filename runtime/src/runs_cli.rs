//! `steward runs list|inspect|retry|cancel`: the operator's view of runs, through a running
//! server's ops API with the operator token (`--token-file` or `STEWARD_OPS_TOKEN`). Every
//! value that came from outside (incident text, errors) is printed with control characters
//! escaped, so it cannot drive the terminal.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

use crate::api_client::{ApiClient, clean, read_token};
/// The most runs one `retry` with a filter acts on.
const MAX_BULK: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs of every tenant, newest first.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Print a run's timeline, crash snapshots and audit entries.
    Inspect {
        #[command(flatten)]
        server: ServerArgs,
        /// The run id.
        run: String,
        /// Print the ops API's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Resume failed runs from the step they failed at: one run, or every failed run a filter
    /// selects.
    Retry {
        #[command(flatten)]
        server: ServerArgs,
        /// The run id; leave it out to retry what the filter selects.
        run: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        decision: DecisionArgs,
    },
    /// End a run that has not finished, as `cancelled`.
    Cancel {
        #[command(flatten)]
        server: ServerArgs,
        /// The run id.
        run: String,
        #[command(flatten)]
        decision: DecisionArgs,
    },
}

/// Where the server is and how to prove the operator.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    url: Url,
    /// A file holding the operator token; without it, STEWARD_OPS_TOKEN is read.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Which runs.
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// A state, or several separated by commas (`failed,stale`).
    #[arg(long)]
    state: Option<String>,
    /// A webhook source name, or `api` for runs started through the API.
    #[arg(long)]
    source: Option<String>,
    /// Created at or after: RFC 3339, Unix milliseconds, or an age such as 30m, 2h or 7d.
    #[arg(long)]
    since: Option<String>,
    /// Created before, in the same forms.
    #[arg(long)]
    until: Option<String>,
    /// The incident number, such as INC0010001.
    #[arg(long)]
    number: Option<String>,
    /// Only this tenant's runs.
    #[arg(long)]
    tenant: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// Who decides and why; both are audited.
#[derive(Debug, Args)]
pub struct DecisionArgs {
    /// Why (1 to 1000 characters).
    #[arg(long)]
    reason: String,
    /// Your name; defaults to STEWARD_OPERATOR, then USER.
    #[arg(long)]
    operator: Option<String>,
}

impl DecisionArgs {
    /// The body; without a name it has no `operator`, which a signed-in person does not need
    /// (the server audits who signed in) and the operator token is refused without.
    fn body(&self) -> anyhow::Result<Value> {
        let operator = self
            .operator
            .clone()
            .or_else(|| std::env::var("STEWARD_OPERATOR").ok())
            .or_else(|| std::env::var("USER").ok())
            .filter(|o| !o.is_empty());
        Ok(match operator {
            Some(operator) => json!({ "reason": self.reason, "operator": operator }),
            None => json!({ "reason": self.reason }),
        })
    }
}

/// Runs a `steward runs …` command.
pub async fn run(command: RunsCommand) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    match command {
        RunsCommand::List { server, filter } => list(&Client::new(&server)?, &filter).await,
        RunsCommand::Inspect { server, run, json } => {
            inspect(&Client::new(&server)?, &run, json).await
        }
        RunsCommand::Retry {
            server,
            run,
            filter,
            decision,
        } => retry(&Client::new(&server)?, run, filter, &decision).await,
        RunsCommand::Cancel {
            server,
            run,
            decision,
        } => decide(&Client::new(&server)?, &run, "cancel", &decision).await,
    }
}

/// An ops API client with the operator token, or the saved sign-in.
struct Client(ApiClient);

impl Client {
    fn new(server: &ServerArgs) -> anyhow::Result<Self> {
        let token = read_token(
            server.token_file.as_deref(),
            "STEWARD_OPS_TOKEN",
            Some(&server.url),
        )?;
        Ok(Self(ApiClient::new(&server.url, token)?))
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.0.get(path, query).await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.0.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// A time argument as the API takes it: an age (`30m`, `2h`, `7d`) becomes Unix ms before
/// now; Unix ms and RFC 3339 times are passed on as given.
fn time_arg(value: &str, now_ms: i64) -> anyhow::Result<String> {
    if value.parse::<i64>().is_ok() || OffsetDateTime::parse(value, &Rfc3339).is_ok() {
        return Ok(value.to_owned());
    }
    let age = value.char_indices().last().and_then(|(split, unit)| {
        let unit_ms: i64 = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return None,
        };
        let amount = value[..split].parse::<i64>().ok().filter(|n| *n >= 0)?;
        Some(now_ms - amount.saturating_mul(unit_ms))
    });
    match age {
        Some(ms) => Ok(ms.to_string()),
        None => bail!(
            "`{}` is not a time: use RFC 3339, Unix milliseconds, or an age such as 2h",
            clean(value)
        ),
    }
}

fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

impl FilterArgs {
    fn query(&self, default_state: Option<&str>) -> anyhow::Result<Vec<(&'static str, String)>> {
        let now = now_ms();
        let mut q = vec![("limit", self.limit.to_string())];
        if let Some(state) = self.state.as_deref().or(default_state) {
            q.push(("state", state.to_owned()));
        }
        for (name, value) in [
            ("source", &self.source),
            ("number", &self.number),
            ("tenant", &self.tenant),
        ] {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        if let Some(v) = &self.since {
            q.push(("since", time_arg(v, now)?));
        }
        if let Some(v) = &self.until {
            q.push(("until", time_arg(v, now)?));
        }
        Ok(q)
    }

    fn is_empty(&self) -> bool {
        [
            &self.state,
            &self.source,
            &self.since,
            &self.until,
            &self.number,
            &self.tenant,
        ]
        .iter()
        .all(|v| v.is_none())
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => clean(s),
        Value::Null => String::new(),
        other => clean(&other.to_string()),
    }
}

fn when(v: &Value) -> String {
    v.as_i64()
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

fn incident(v: &Value) -> String {
    match (v["by"].as_str(), v["value"].as_str()) {
        (Some(by), Some(value)) => format!("{} {}", clean(by), clean(value)),
        _ => "-".into(),
    }
}

async fn list(client: &Client, filter: &FilterArgs) -> anyhow::Result<ExitCode> {
    let page = client.get("v1/ops/runs", &filter.query(None)?).await?;
    let runs = page["runs"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<36}  {:<16}  {:<18}  {:<20}  {:<28}  last error",
        "run", "tenant", "state", "created", "incident"
    );
    for r in &runs {
        println!(
            "{:<36}  {:<16}  {:<18}  {:<20}  {:<28}  {}",
            text(&r["id"]),
            text(&r["tenant"]),
            text(&r["state"]),
            when(&r["created_at"]),
            incident(&r["incident"]),
            first_line(&text(&r["last_error"]), 80)
        );
    }
    println!("{} run(s)", runs.len());
    if !page["next"].is_null() {
        println!(
            "more runs are older; raise --limit or narrow with --until {}",
            runs.last()
                .map(|r| when(&r["created_at"]))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn first_line(s: &str, max: usize) -> String {
    let line: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        format!("{line}…")
    } else {
        line
    }
}

/// What a journal step says, in a few words.
fn step_details(body: &Value) -> String {
    let t = |k: &str| text(&body[k]);
    match body["kind"].as_str().unwrap_or_default() {
        "received" => format!("trigger names {}", incident(&body["incident"])),
        "incident_fetched" => format!("read {}", text(&body["incident"]["number"])),
        "triaged" => format!(
            "proposal from {} / {} after {} attempt(s)",
            text(&body["provenance"]["provider"]),
            text(&body["provenance"]["model_reported"]),
            t("attempts")
        ),
        "policy_decided" => format!(
            "{} change(s), approval {}",
            body["diff"]["entries"].as_array().map_or(0, Vec::len),
            if body["needs_approval"] == true {
                "needed"
            } else {
                "not needed"
            }
        ),
        "approval_requested" => format!("posted to {} at {}", t("channel"), t("ts")),
        "approval_decided" => format!("{} by {} ({})", t("verdict"), t("by_name"), t("by")),
        "approval_voted" => format!(
            "approved by {} ({}); another approver is needed",
            t("by_name"),
            t("by")
        ),
        "reproposed" => format!("the record changed; asking again: {}", t("reason")),
        "write_intended" => format!("intent recorded, marker {}", t("marker")),
        "written" => format!("written (recovered: {})", t("recovered")),
        "verified" => match body["mismatches"].as_array() {
            Some(m) if !m.is_empty() => format!("read back differs: {}", text(&json!(m))),
            _ => "read back as written".into(),
        },
        "finished" => format!("{}: {}", t("state"), t("reason")),
        "retried" => format!("retried by {}: {}", t("by"), t("reason")),
        "parked" => format!("parked until {}: {}", when(&body["until"]), t("reason")),
        "held" => match body["until"].as_i64() {
            Some(_) => format!(
                "held ({}) until {}: {}",
                t("gate"),
                when(&body["until"]),
                t("reason")
            ),
            None => format!("held ({}): {}", t("gate"), t("reason")),
        },
        _ => String::new(),
    }
}

async fn inspect(client: &Client, run: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let id = run_id(run)?;
    let data = client.get(&format!("v1/ops/runs/{id}"), &[]).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_run(&data);
    Ok(ExitCode::SUCCESS)
}

fn print_run(data: &Value) {
    let run = &data["run"];
    println!("run         {}", text(&run["id"]));
    println!("tenant      {}", text(&run["tenant"]));
    println!("state       {}", text(&run["state"]));
    println!("incident    {}", incident(&run["incident"]));
    let source = run["source"].as_str().map_or("api".to_owned(), clean);
    println!("source      {source}");
    println!("created     {}", when(&run["created_at"]));
    println!("updated     {}", when(&run["updated_at"]));
    if !run["last_error"].is_null() {
        println!("last error  {}", text(&run["last_error"]));
    }
    if let Some(e) = data["state_error"].as_str() {
        println!("journal     cannot be read: {}", clean(e));
    }
    println!("\ntimeline");
    for s in data["journal"].as_array().into_iter().flatten() {
        println!(
            "  #{:<3} {}  {:<20} {}",
            s["seq"],
            when(&s["at"]),
            text(&s["kind"]),
            step_details(&s["body"])
        );
    }
    print_crashes(data["crashes"].as_array().map_or(&[][..], Vec::as_slice));
    println!("\naudit");
    for a in data["audit"].as_array().into_iter().flatten() {
        println!(
            "  #{:<4} {}  {:<24} by {}",
            a["seq"],
            when(&a["at"]),
            text(&a["kind"]),
            text(&a["actor"])
        );
    }
}

fn print_crashes(crashes: &[Value]) {
    if crashes.is_empty() {
        println!("\ncrash snapshots: none");
        return;
    }
    println!("\ncrash snapshots ({})", crashes.len());
    for c in crashes {
        println!(
            "  crash {} at {}: attempt {}, step {}, handling {}, after {} journal step(s)",
            c["seq"],
            when(&c["at"]),
            c["attempt"],
            text(&c["step"]),
            text(&c["message"]),
            c["journal_offset"]
        );
        println!("    error: {}", text(&c["error"]));
    }
}

fn run_id(run: &str) -> anyhow::Result<steward_core::RunId> {
    steward_core::RunId::parse(run).map_err(|_| anyhow::anyhow!("`{}` is not a run id", clean(run)))
}

/// Retries or cancels one run and prints what happened; returns whether it was done.
async fn decide_one(
    client: &Client,
    run: &str,
    action: &str,
    body: &Value,
) -> anyhow::Result<bool> {
    let id = run_id(run)?;
    match client
        .post(&format!("v1/ops/runs/{id}/{action}"), body)
        .await
    {
        Ok(out) => {
            let step = out["step"]
                .as_str()
                .map(|s| format!(", going on with {}", clean(s)))
                .unwrap_or_default();
            println!(
                "{} {id}: {} -> {}{step}",
                text(&out["action"]),
                text(&out["previous_state"]),
                text(&out["state"])
            );
            Ok(true)
        }
        Err(e) => {
            println!("not {}: {id}: {e:#}", past(action));
            Ok(false)
        }
    }
}

fn past(action: &str) -> &'static str {
    if action == "retry" {
        "retried"
    } else {
        "cancelled"
    }
}

async fn decide(
    client: &Client,
    run: &str,
    action: &str,
    decision: &DecisionArgs,
) -> anyhow::Result<ExitCode> {
    let done = decide_one(client, run, action, &decision.body()?).await?;
    Ok(if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn retry(
    client: &Client,
    run: Option<String>,
    filter: FilterArgs,
    decision: &DecisionArgs,
) -> anyhow::Result<ExitCode> {
    match run {
        Some(run) if filter.is_empty() => decide(client, &run, "retry", decision).await,
        Some(_) => bail!("give either a run id or a filter, not both"),
        None if filter.is_empty() => bail!("give a run id, or a filter such as --state failed"),
        None => retry_selected(client, &filter, decision).await,
    }
}

async fn retry_selected(
    client: &Client,
    filter: &FilterArgs,
    decision: &DecisionArgs,
) -> anyhow::Result<ExitCode> {
    let body = decision.body()?;
    let mut query = filter.query(Some("failed"))?;
    let mut ids = Vec::new();
    loop {
        let page = client.get("v1/ops/runs", &query).await?;
        let runs = page["runs"].as_array().cloned().unwrap_or_default();
        ids.extend(
            runs.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned)),
        );
        match page["next"].as_str() {
            Some(next) if ids.len() < MAX_BULK && ids.len() < filter.limit as usize => {
                query.retain(|(k, _)| *k != "before");
                query.push(("before", next.to_owned()));
            }
            _ => break,
        }
    }
    ids.truncate(filter.limit as usize);
    println!("{} run(s) selected", ids.len());
    let mut failed = 0;
    for id in &ids {
        if !decide_one(client, id, "retry", &body).await? {
            failed += 1;
        }
    }
    println!("{} retried, {failed} not retried", ids.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_become_unix_millis_and_other_times_pass_through() {
        let now = 10_000_000;
        assert_eq!(time_arg("2h", now).unwrap(), (now - 7_200_000).to_string());
        assert_eq!(time_arg("30m", now).unwrap(), (now - 1_800_000).to_string());
        assert_eq!(time_arg("0d", now).unwrap(), now.to_string());
        assert_eq!(time_arg("1700000000000", now).unwrap(), "1700000000000");
        assert_eq!(
            time_arg("2023-11-14T22:13:20Z", now).unwrap(),
            "2023-11-14T22:13:20Z"
        );
        for bad in [
            "-2h",
            "soonish",
            "",
            "2é",
            "h",
            "2023-13-01T00:00:00Z",
            "1.5h",
        ] {
            assert!(time_arg(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_text_cannot_drive_the_terminal() {}

    #[test]
    fn steps_are_summarised() {
        let finished = json!({"kind": "finished", "state": "failed", "reason": "boom"});
        assert_eq!(step_details(&finished), "failed: boom");
        let retried = json!({"kind": "retried", "by": "operator:ana", "reason": "back"});
        assert_eq!(step_details(&retried), "retried by operator:ana: back");
        let voted = json!({"kind": "approval_voted", "by": "U1", "by_name": "ana"});
        assert_eq!(
            step_details(&voted),
            "approved by ana (U1); another approver is needed"
        );
        let again = json!({"kind": "reproposed", "reason": "urgency is now 2"});
        assert_eq!(
            step_details(&again),
            "the record changed; asking again: urgency is now 2"
        );
        assert_eq!(step_details(&json!({"kind": "unknown_kind"})), "");
        assert_eq!(step_details(&json!(null)), "");
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(when(&json!(1_700_000_000_123i64)), "2023-11-14T22:13:20Z");
        assert_eq!(when(&json!("x")), "-");
    }
}
