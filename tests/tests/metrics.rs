//! `GET /metrics`: after a run end to end and a refused delivery, the scrape is well-formed
//! exposition text whose counters moved, it carries no secret and no incident text, and every
//! metric the alert rules in `deploy/prometheus/alerts.yml` use is in it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;
use steward_tests::fixtures::{self, MODEL_NOTE};
use steward_tests::harness::OPS_TOKEN;
use steward_tests::{APPROVER, Delivery, Harness, Scenario, llm, servicenow, slack};

/// One sample line: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: the declared families (name to type) and the samples.
#[derive(Debug, Default)]
struct Exposition {
    families: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include every pair of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Every name a sample of a declared family may have.
    fn sample_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (family, kind) in &self.families {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        }
        names
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    is_metric_name(name) && !name.contains(':')
}

/// Parses `{k="v",...}` from the start of `text`; returns the labels and the rest.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("labels open with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("a label has =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("a label value is quoted".into());
        }
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape in a label value".into()),
                },
                Some((i, '"')) => break eq + 1 + i + 1,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = &rest[end..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        other => other
            .parse()
            .map_err(|e| format!("bad value {other:?}: {e}")),
    }
}

/// Parses exposition text strictly: every line is a HELP, TYPE or UNIT line, the closing
/// `# EOF`, or a sample of a declared family.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut saw_eof = false;
    for line in text.lines() {
        let fail = |why: String| format!("{why} in line {line:?}");
        if saw_eof {
            return Err(fail("a line after # EOF".into()));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let rest = parts.next().unwrap_or("");
            if !is_metric_name(name) {
                return Err(fail("a bad metric name".into()));
            }
            match keyword {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "unknown",
                        "info",
                    ];
                    if !known.contains(&rest) {
                        return Err(fail(format!("unknown type {rest:?}")));
                    }
                    out.families.insert(name.to_owned(), rest.to_owned());
                }
                _ => return Err(fail("an unknown comment".into())),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| fail("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(fail("a bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(fail)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no space before the value".into()))?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(fail)?;
        if let Some(timestamp) = fields.next() {
            parse_value(timestamp).map_err(fail)?;
        }
        if fields.next().is_some() {
            return Err(fail("trailing text".into()));
        }
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !saw_eof {
        return Err("no # EOF".into());
    }
    let names = out.sample_names();
    if let Some(stray) = out.samples.iter().find(|s| !names.contains(&s.name)) {
        return Err(format!("{} belongs to no declared family", stray.name));
    }
    Ok(out)
}

/// Scrapes `/metrics` without a credential; returns the content type and the text.
async fn scrape(h: &Harness) -> (String, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let response = client
        .get(format!("{}/metrics", h.url()))
        .send()
        .await
        .expect("Steward answers");
    assert_eq!(response.status(), 200, "served without a credential");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (content_type, response.text().await.expect("a body"))
}

async fn scraped(h: &Harness) -> Exposition {
    let (content_type, text) = scrape(h).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_and_a_refused_delivery_move_the_counters_and_the_scrape_stays_clean() {
    let h = Scenario::new().start().await;
    let tenant = h.tenant.id.to_string();

    // A delivery signed with another tenant's secret, and one to a source that does not exist.
    let forged = Delivery::new(&h.other.whsec, h.now_secs(), h.incident_event());
    let refused = h.send(&forged).await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.error_code(), "signature_mismatch");
    let unknown = h.send_to(&tenant, "no-such-source", &forged).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);

    // A run that waits for its approver shows in the gauges read at scrape.
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    let waiting = scraped(&h).await;
    let awaiting = [
        ("tenant", tenant.as_str()),
        ("state", states::AWAITING_APPROVAL),
    ];
    assert_eq!(waiting.value("steward_runs", &awaiting), Some(1.0));
    let age = waiting.value(
        "steward_approval_oldest_pending_age_seconds",
        &[("tenant", &tenant)],
    );
    assert!(age.is_some_and(|a| a >= 0.0), "{age:?}");

    // Approved, written, confirmed: the run finishes completed.
    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
    let finished = h.finished(run).await;
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );

    let (_, text) = scrape(&h).await;
    let m = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let completed = [("tenant", tenant.as_str()), ("state", states::COMPLETED)];
    assert_eq!(
        m.value("steward_runs_finished_total", &completed),
        Some(1.0)
    );
    let now_waiting = m.value("steward_runs", &awaiting);
    assert_eq!(now_waiting, Some(0.0), "no run waits now");
    let age = m.value(
        "steward_approval_oldest_pending_age_seconds",
        &[("tenant", &tenant)],
    );
    assert_eq!(age, Some(0.0), "no approval is pending now");
    let rejected = |reason| m.value("steward_webhook_rejections_total", &[("reason", reason)]);
    assert_eq!(rejected("signature_mismatch"), Some(1.0));
    assert_eq!(rejected("not_found"), Some(1.0));
    for step in [
        "fetch",
        "triage",
        "decide",
        "request_approval",
        "write",
        "confirm",
        "verify",
    ] {
        let count = m.value("steward_step_duration_seconds_count", &[("step", step)]);
        assert!(count.is_some_and(|n| n >= 1.0), "{step}: {count:?}");
        let bucket = [("step", step), ("le", "+Inf")];
        let all = m.value("steward_step_duration_seconds_bucket", &bucket);
        assert_eq!(all, count, "{step}: the +Inf bucket holds every sample");
    }
    for adapter in ["llm", "servicenow", "slack"] {
        let labels = [
            ("tenant", tenant.as_str()),
            ("adapter", adapter),
            ("outcome", "ok"),
        ];
        let calls = m.value("steward_adapter_calls_total", &labels);
        assert!(calls.is_some_and(|n| n >= 1.0), "{adapter}: {calls:?}");
    }
    for query in [
        "append_step",
        "run_state_counts",
        "oldest_pending_approvals",
    ] {
        let timed = m.value(
            "steward_db_query_duration_seconds_count",
            &[("query", query)],
        );
        assert!(timed.is_some_and(|n| n >= 1.0), "{query}: {timed:?}");
    }
    let expiry = m.value("steward_tls_certificate_expiry_timestamp_seconds", &[]);
    assert_eq!(expiry, Some(0.0), "no server TLS, so no expiry");

    // Nothing secret, nothing from the incident, no run id.
    let run_id = run.to_string();
    let mut never = vec![
        OPS_TOKEN,
        llm::API_KEY,
        servicenow::CLIENT_SECRET,
        servicenow::PASSWORD,
        servicenow::REFRESH_TOKEN,
        servicenow::ACCESS_TOKEN,
        slack::BOT_TOKEN,
        fixtures::SYS_ID,
        fixtures::NUMBER,
        MODEL_NOTE,
        "Checkout fails",
        "Customers cannot pay",
        run_id.as_str(),
    ];
    for t in [&h.tenant, &h.other] {
        never.extend([
            t.whsec.as_str(),
            t.signing_secret.as_str(),
            t.api_token.as_str(),
        ]);
    }
    for word in never {
        assert!(!text.contains(word), "the scrape carries {word:?}");
    }
    h.shutdown().await;
}

/// The metric names an alert expression uses: `steward_…` words.
fn alert_metric_names(rules: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("steward_") {
            let word: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + word.len()..];
            names.insert(word);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alert_rules_use_is_exposed() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/alerts.yml"
    ))
    .expect("the alert rules");
    let used = alert_metric_names(&rules);
    assert!(used.len() >= 7, "{used:?}");
    let h = Scenario::new().start().await;
    let exposed = scraped(&h).await.sample_names();
    let missing: Vec<_> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "not exposed: {missing:?} of {exposed:?}"
    );
    h.shutdown().await;
}

#[test]
fn the_parser_refuses_what_is_not_exposition_text() {
    let good = "# HELP a_b An a.\n# TYPE a_b counter\na_b_total{x=\"1\\\"\"} 2\n# EOF\n";
    let parsed = parse(good).expect("valid");
    assert_eq!(parsed.value("a_b_total", &[("x", "1\"")]), Some(2.0));
    for bad in [
        "a_b 1\n# EOF\n",
        "# TYPE a_b counter\na_b_total 1\n",
        "# TYPE a_b counter\na_b_total{x=1} 1\n# EOF\n",
        "# TYPE a_b gauge\na_b one\n# EOF\n",
        "# TYPE a_b gauge\nfree text\n# EOF\n",
        "# TYPE a_b gauge\n# EOF\na_b 1\n",
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}
