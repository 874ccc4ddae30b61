//! The checks behind Steward's fuzz targets, one function per parser of outside input. Each
//! takes raw bytes, feeds them to the parser's public entry point, and asserts the parser's own
//! invariants: it never panics, what it accepts round-trips or respects its size bounds, and
//! what it refuses is said in a bounded message. A violated invariant panics, which the fuzzer
//! reports as a crash.
//!
//! The same functions run on stable in the adapters crate's `fuzz_regressions` test, over every
//! committed corpus and regression file, so a minimized crash becomes a regression test.
//!
//! Inputs that stand for several values (headers and a body) are split at their first newlines;
//! a missing part is a missing header.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use steward_adapters::http::{CappedReply, HttpSettings, client};
use steward_adapters::llm::{
    Anthropic, LlmError, LlmSettings, OpenAiCompatible, TriageReply, parse_proposal,
};
use steward_adapters::servicenow::{
    ServiceNowError, parse_incident_reply, parse_record_list_reply, table_error,
};
use steward_adapters::slack::{
    BlockAction, InteractionError, MAX_INTERACTION_BODY_BYTES, parse_block_actions, sign_slack,
    verify_slack_signature,
};
use steward_adapters::webhook::stripe::{sign_stripe, verify_stripe_any};
use steward_adapters::webhook::{
    SignatureError, TOLERANCE_SECS, WebhookSecret, incident_at, sign_standard, verify_standard_any,
};
use steward_core::IncidentRef;

/// A target's check: panics when the input breaks one of the parser's invariants.
pub type Check = fn(&[u8]);

/// Every fuzz target: its name (the folder under `corpus/` and `regressions/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("webhook_signature", webhook_signature),
    ("webhook_intake", webhook_intake),
    ("slack_signature", slack_signature),
    ("stripe_signature", stripe_signature),
    ("slack_interaction", slack_interaction),
    ("llm_openai", llm_openai),
    ("llm_anthropic", llm_anthropic),
    ("llm_proposal", llm_proposal),
    ("servicenow_record", servicenow_record),
    ("servicenow_error", servicenow_error),
];

/// Standard Webhooks test vector A: its secret, and its timestamp, used as the receiver's clock.
const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const WEBHOOK_NOW: i64 = 1_649_367_553;

/// Slack's worked example: its signing secret, and its timestamp, used as the receiver's clock.
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_NOW: i64 = 1_531_420_618;

/// The key the LLM clients are built with; no error may quote it.
const API_KEY: &str = "sk-fuzz-4f9a2c61b7d0e8";

/// Pointers a source might name, in the shapes the configuration examples use.
const SYS_ID_POINTERS: [&str; 4] = ["/incident/sys_id", "/sys_id", "/data/0/sys_id", ""];
const NUMBER_POINTERS: [&str; 3] = ["/incident/number", "/number", ""];

/// The longest an error's text may be: provider and instance text is clipped to 300 characters
/// before it enters an error, and the fixed wording around it is short.
const MAX_ERROR_CHARS: usize = 512;

/// Replies longer than this are refused by the proposal parser before parsing.
const MAX_PROPOSAL_BYTES: usize = 64 * 1024;

/// Splits `data` at its first `n - 1` newlines into `n` parts; missing parts are `None`.
fn split_parts(data: &[u8], n: usize) -> Vec<Option<&[u8]>> {
    let mut parts: Vec<Option<&[u8]>> = data.splitn(n, |b| *b == b'\n').map(Some).collect();
    parts.resize(n, None);
    parts
}

/// A header value as a handler sees it: absent, or present only when it is valid UTF-8.
fn header(part: Option<&[u8]>) -> Option<&str> {
    part.and_then(|p| std::str::from_utf8(p).ok())
}

fn assert_short(text: &str, what: &str) {
    let chars = text.chars().count();
    assert!(
        chars <= MAX_ERROR_CHARS,
        "{what} error is {chars} characters"
    );
}

/// `webhook-id`, `webhook-timestamp`, `webhook-signature` and the body, one per line, verified
/// against vector A's secret at vector A's time; then the same id and body signed and verified,
/// which must pass exactly when the id and body are usable. The signature line is also parsed
/// as a `whsec_` secret.
pub fn webhook_signature(data: &[u8]) {
    let parts = split_parts(data, 4);
    let (id, timestamp, signature) = (header(parts[0]), header(parts[1]), header(parts[2]));
    let body = parts[3].unwrap_or_default();
    let secret = WebhookSecret::parse(WEBHOOK_SECRET).expect("vector A secret parses");
    let other = WebhookSecret::parse(&WebhookSecret::generate()).expect("generated secret parses");

    match verify_standard_any(
        std::slice::from_ref(&secret),
        id,
        timestamp,
        signature,
        body,
        WEBHOOK_NOW,
    ) {
        Ok(delivery) => {
            assert_eq!(Some(delivery.id.as_str()), id);
            assert!((WEBHOOK_NOW - delivery.timestamp).abs() <= TOLERANCE_SECS);
            assert_eq!(timestamp, Some(delivery.timestamp.to_string().as_str()));
            assert!(!body.is_empty());
            let res = verify_standard_any(&[other], id, timestamp, signature, body, WEBHOOK_NOW);
            assert_eq!(res, Err(SignatureError::NoMatchingSignature));
        }
        Err(e) => assert_short(&e.to_string(), "webhook signature"),
    }

    if let Some(id) = id {
        let signed = sign_standard(&secret, id, WEBHOOK_NOW, body);
        let now = WEBHOOK_NOW.to_string();
        let res = verify_standard_any(
            std::slice::from_ref(&secret),
            Some(id),
            Some(&now),
            Some(&signed),
            body,
            WEBHOOK_NOW,
        );
        let usable_id =
            !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic());
        assert_eq!(res.is_ok(), usable_id && !body.is_empty(), "{res:?}");
    }

    if let Some(candidate) = signature {
        match WebhookSecret::parse(candidate) {
            Ok(parsed) => {
                assert!(candidate.starts_with("whsec_"));
                let signed = sign_standard(&parsed, "msg_fuzz", WEBHOOK_NOW, b"{}");
                let now = WEBHOOK_NOW.to_string();
                let res = verify_standard_any(
                    &[parsed],
                    Some("msg_fuzz"),
                    Some(&now),
                    Some(&signed),
                    b"{}",
                    WEBHOOK_NOW,
                );
                assert!(res.is_ok(), "{res:?}");
            }
            Err(e) => assert_short(&e.to_string(), "webhook secret"),
        }
    }
}

/// A verified delivery's body, parsed as intake parses it and searched for the incident at a
/// set of source pointers. The answer must be the first valid sys_id, else the first valid
/// number, found at those pointers, and a valid reference in either case.
pub fn webhook_intake(data: &[u8]) {
    let Ok(payload) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let sys_ids: Vec<String> = SYS_ID_POINTERS.iter().map(|p| p.to_string()).collect();
    let numbers: Vec<String> = NUMBER_POINTERS.iter().map(|p| p.to_string()).collect();
    let found = incident_at(&payload, &sys_ids, &numbers);

    let values = |pointers: &[String]| -> Vec<String> {
        pointers
            .iter()
            .filter_map(|p| payload.pointer(p).and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    };
    let expected = values(&sys_ids)
        .iter()
        .find_map(|v| IncidentRef::sys_id(v))
        .or_else(|| values(&numbers).iter().find_map(|v| IncidentRef::number(v)));
    assert_eq!(found, expected);
    match &found {
        Some(IncidentRef::SysId(s)) => assert_eq!(IncidentRef::sys_id(s), found),
        Some(IncidentRef::Number(n)) => assert_eq!(IncidentRef::number(n), found),
        None => {}
    }
    assert_eq!(incident_at(&payload, &[], &[]), None);
}

/// `X-Slack-Request-Timestamp`, `X-Slack-Signature` and the body, one per line, verified with
/// Slack's example secret at its example time; then the body signed and verified, which must
/// pass exactly when the body is not empty, and fail under another secret.
pub fn slack_signature(data: &[u8]) {
    let parts = split_parts(data, 3);
    let (timestamp, signature) = (header(parts[0]), header(parts[1]));
    let body = parts[2].unwrap_or_default();
    let secret = SecretString::from(SLACK_SECRET);
    let other = SecretString::from("another-signing-secret");

    match verify_slack_signature(&secret, timestamp, signature, body, SLACK_NOW) {
        Ok(()) => {
            let ts: i64 = timestamp.and_then(|t| t.parse().ok()).expect("verified ts");
            assert!((SLACK_NOW - ts).abs() <= TOLERANCE_SECS);
            let expected = sign_slack(SLACK_SECRET, ts, body);
            assert_eq!(signature.map(str::to_ascii_lowercase), Some(expected));
            let res = verify_slack_signature(&other, timestamp, signature, body, SLACK_NOW);
            assert_eq!(res, Err(SignatureError::NoMatchingSignature));
        }
        Err(e) => assert_short(&e.to_string(), "slack signature"),
    }

    let now = SLACK_NOW.to_string();
    let signed = sign_slack(SLACK_SECRET, SLACK_NOW, body);
    let res = verify_slack_signature(&secret, Some(&now), Some(&signed), body, SLACK_NOW);
    assert_eq!(res.is_ok(), !body.is_empty(), "{res:?}");
    if !body.is_empty() {
        let res = verify_slack_signature(&other, Some(&now), Some(&signed), body, SLACK_NOW);
        assert_eq!(res, Err(SignatureError::NoMatchingSignature));
    }
}

/// The secret of the Stripe-style vector (self-derived from Stripe's published algorithm), and
/// a receiver clock near its timestamp.
const STRIPE_SECRET: &str = "whsec_test_secret";
const STRIPE_NOW: i64 = 1_700_000_000;

/// `Stripe-Signature` and the body, one per line, verified with the vector's secret; an
/// accepted header carries a `v1` that matches the body under that secret at a timestamp within
/// the tolerance, and never under another secret. Then the body signed and verified, which must
/// pass exactly when the body is not empty.
pub fn stripe_signature(data: &[u8]) {
    let parts = split_parts(data, 2);
    let signature = header(parts[0]);
    let body = parts[1].unwrap_or_default();
    let secret = [SecretString::from(STRIPE_SECRET)];
    let other = [SecretString::from("whsec_another_secret")];
    match verify_stripe_any(&secret, signature, body, STRIPE_NOW) {
        Ok(ts) => {
            assert!((STRIPE_NOW - ts).abs() <= TOLERANCE_SECS);
            let expected = sign_stripe(STRIPE_SECRET, ts, body);
            let v1 = expected.split(",v1=").nth(1).expect("a v1 part");
            let header = signature.expect("verified").to_ascii_lowercase();
            assert!(header.contains(v1), "the matching v1 is in the header");
            let res = verify_stripe_any(&other, signature, body, STRIPE_NOW);
            assert_eq!(res, Err(SignatureError::NoMatchingSignature));
        }
        Err(e) => assert_short(&e.to_string(), "stripe signature"),
    }
    let signed = sign_stripe(STRIPE_SECRET, STRIPE_NOW, body);
    let res = verify_stripe_any(&secret, Some(&signed), body, STRIPE_NOW);
    assert_eq!(res.is_ok(), !body.is_empty(), "{res:?}");
}

/// A `block_actions` form body. An accepted click has its required fields, and the same click
/// written out again as a form parses to the same action.
pub fn slack_interaction(data: &[u8]) {
    match parse_block_actions(data) {
        Ok(action) => {
            assert!(data.len() <= MAX_INTERACTION_BODY_BYTES);
            assert!(!action.user_id.is_empty());
            assert!(!action.action_id.is_empty());
            let again = block_actions_form(&action);
            if again.len() <= MAX_INTERACTION_BODY_BYTES {
                assert_eq!(parse_block_actions(&again), Ok(action));
            }
        }
        Err(InteractionError::NotBlockActions(shown)) => assert!(shown.chars().count() <= 40),
        Err(e) => assert_short(&e.to_string(), "slack interaction"),
    }
}

/// The form body Slack would post for `action`.
fn block_actions_form(action: &BlockAction) -> Vec<u8> {
    let mut root = Map::new();
    root.insert("type".into(), json!("block_actions"));
    root.insert(
        "user".into(),
        json!({"id": action.user_id, "username": action.user_name}),
    );
    root.insert(
        "actions".into(),
        json!([{"action_id": action.action_id, "value": action.value}]),
    );
    if let Some(team) = &action.team_id {
        root.insert("team".into(), json!({"id": team}));
    }
    if let Some(channel) = &action.channel_id {
        root.insert("channel".into(), json!({"id": channel}));
    }
    if let Some(ts) = &action.message_ts {
        root.insert("container".into(), json!({"message_ts": ts}));
    }
    if let Some(url) = &action.response_url {
        root.insert("response_url".into(), json!(url));
    }
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &Value::Object(root).to_string())
        .finish()
        .into_bytes()
}

/// The clients are built once: building one loads TLS roots, which would dwarf the parsing.
static OPENAI: LazyLock<OpenAiCompatible> = LazyLock::new(|| {
    let http = client(&HttpSettings::default()).expect("an http client builds");
    OpenAiCompatible::new(llm_settings(), http)
});
static ANTHROPIC: LazyLock<Anthropic> = LazyLock::new(|| {
    let http = client(&HttpSettings::default()).expect("an http client builds");
    Anthropic::new(llm_settings(), http)
});

/// Settings pointing at a closed loopback port; nothing is ever sent.
fn llm_settings() -> LlmSettings {
    LlmSettings {
        base_url: "http://127.0.0.1:9/v1/".parse().expect("valid url"),
        model: "fuzz-model".into(),
        api_key: SecretString::from(API_KEY),
        temperature: 0.2,
        max_tokens: 1024,
    }
}

/// Checks an LLM error: bounded, and never quoting the key.
fn check_llm_error(error: &LlmError) {
    let text = error.to_string();
    assert_short(&text, "llm");
    assert!(!text.contains(API_KEY), "llm error quotes the api key");
}

/// Statuses a provider answers with when it fails, each read as an error reply.
const FAILED_STATUSES: [u16; 7] = [400, 401, 404, 408, 429, 500, 529];

/// Reads `body` as a failed reply under each of [`FAILED_STATUSES`], with and without a
/// `retry-after` header.
fn failed_replies(body: &[u8]) -> impl Iterator<Item = CappedReply> + '_ {
    FAILED_STATUSES.into_iter().flat_map(move |status| {
        [None, Some("7")].into_iter().map(move |retry_after| {
            let mut headers = HeaderMap::new();
            if let Some(v) = retry_after {
                headers.insert("retry-after", HeaderValue::from_static(v));
            }
            CappedReply {
                status: StatusCode::from_u16(status).expect("valid status"),
                headers,
                body: Some(body.to_vec()),
            }
        })
    })
}

/// A triage reply must carry a proposal that survives being written and parsed again, and the
/// provenance of the client that read it.
fn check_triage(reply: &TriageReply, provider: &str) {
    check_proposal_round_trip(&reply.proposal);
    assert_eq!(reply.provenance.provider, provider);
    assert_eq!(reply.provenance.model_requested, "fuzz-model");
    assert_eq!(reply.provenance.max_tokens, 1024);
}

/// A Chat Completions body, read as a successful reply and as the error body of failed ones.
pub fn llm_openai(data: &[u8]) {
    let client = &*OPENAI;
    match client.read_reply(data) {
        Ok(reply) => check_triage(&reply, "openai"),
        Err(e) => check_llm_error(&e),
    }
    for reply in failed_replies(data) {
        let error = client.read_error(&reply);
        check_llm_error(&error);
        if reply.status == StatusCode::TOO_MANY_REQUESTS
            && reply.headers.contains_key("retry-after")
        {
            let waits = matches!(error, LlmError::RateLimited { .. });
            if waits {
                assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
            }
        }
    }
}

/// A Messages body, read as a successful reply and as the error body of failed ones.
pub fn llm_anthropic(data: &[u8]) {
    let client = &*ANTHROPIC;
    match client.read_reply(data) {
        Ok(reply) => check_triage(&reply, "anthropic"),
        Err(e) => check_llm_error(&e),
    }
    for reply in failed_replies(data) {
        let error = client.read_error(&reply);
        check_llm_error(&error);
        if reply.status.as_u16() == 529 {
            assert!(matches!(error, LlmError::Overloaded { .. }), "{error:?}");
        }
    }
}

/// A model's text reply, parsed as a proposal: an accepted one keeps every limit of the schema
/// and round-trips.
pub fn llm_proposal(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_proposal(text) {
        Ok(proposal) => {
            assert!(text.len() <= MAX_PROPOSAL_BYTES);
            assert!(!proposal.summary.trim().is_empty());
            assert!(proposal.summary.chars().count() <= 2000);
            assert!(proposal.category.chars().count() <= 100);
            assert!(proposal.changes.len() <= 20);
            let mut fields = std::collections::HashSet::new();
            for change in &proposal.changes {
                assert!(is_field_name(&change.field), "{:?}", change.field);
                assert!(change.value.chars().count() <= 4000);
                assert!(fields.insert(change.field.as_str()), "{}", change.field);
            }
            check_proposal_round_trip(&proposal);
        }
        Err(e) => {
            assert!(matches!(e, LlmError::InvalidReply(_)), "{e:?}");
            // The parser knows no key: the providers scrub its reasons (see `llm_openai`).
            assert_short(&e.to_string(), "proposal");
        }
    }
}

fn check_proposal_round_trip(proposal: &steward_core::Proposal) {
    let written = serde_json::to_string(proposal).expect("a proposal serializes");
    if written.len() <= MAX_PROPOSAL_BYTES {
        assert_eq!(parse_proposal(&written).as_ref().ok(), Some(proposal));
    }
}

/// `^[a-z_][a-z0-9_]{0,79}$`, written out again here as the oracle.
fn is_field_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok
        && name.len() <= 80
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A Table API body, read as a single-record and as a list reply. An accepted record has its
/// `sys_id` and `number`; accepted records written out again as raw strings read back the same.
pub fn servicenow_record(data: &[u8]) {
    match parse_incident_reply(data) {
        Ok(incident) => {
            assert!(!incident.sys_id.is_empty() && !incident.number.is_empty());
            assert_eq!(incident.fields.get("sys_id"), Some(&incident.sys_id));
            assert_eq!(incident.fields.get("number"), Some(&incident.number));
            let again = json!({ "result": incident.fields }).to_string();
            assert_eq!(parse_incident_reply(again.as_bytes()).ok(), Some(incident));
        }
        Err(e) => check_servicenow_error(&e),
    }
    match parse_record_list_reply(data) {
        Ok(records) => {
            let again = json!({ "result": records }).to_string();
            let reread: Option<Vec<BTreeMap<String, String>>> =
                parse_record_list_reply(again.as_bytes()).ok();
            assert_eq!(reread, Some(records));
        }
        Err(e) => check_servicenow_error(&e),
    }
}

fn check_servicenow_error(error: &ServiceNowError) {
    assert_short(&error.to_string(), "servicenow");
}

/// A failed Table API reply: a status (the first two bytes, folded into 400 to 599), the
/// `X-RateLimit-Reset`, `Retry-After` and `X-RateLimit-Limit` headers (the next three lines,
/// where they are valid header values) and the body (the rest).
pub fn servicenow_error(data: &[u8]) {
    let (status, rest) = match data {
        [a, b, rest @ ..] => (400 + u16::from_be_bytes([*a, *b]) % 200, rest),
        _ => (500, data),
    };
    let parts = split_parts(rest, 4);
    let mut headers = HeaderMap::new();
    let names = ["x-ratelimit-reset", "retry-after", "x-ratelimit-limit"];
    for (name, part) in names.into_iter().zip(&parts) {
        if let Some(value) = part.and_then(|p| HeaderValue::from_bytes(p).ok()) {
            headers.insert(name, value);
        }
    }
    let reply = CappedReply {
        status: StatusCode::from_u16(status).expect("400 to 599 are statuses"),
        headers,
        body: Some(parts[3].unwrap_or_default().to_vec()),
    };
    let error = table_error(&reply);
    check_servicenow_error(&error);
    match status {
        404 => assert!(matches!(error, ServiceNowError::NotFound), "{error:?}"),
        429 => assert!(
            matches!(error, ServiceNowError::RateLimited { .. }),
            "{error:?}"
        ),
        500.. => assert!(matches!(error, ServiceNowError::Server { .. }), "{error:?}"),
        _ => assert!(!error.is_retryable(), "{error:?}"),
    }
}
