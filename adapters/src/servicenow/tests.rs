use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use steward_core::FixedClock;
use wiremock::matchers::{body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::http::{HttpSettings, client};

const SYS_ID: &str = "a9e30c7dc61122760116894de7bcc7bd";
const NUMBER: &str = "INC0010001";
const GROUP: &str = "8a4dde73c6112278017a6a4baf547aa7";

fn password_auth() -> ServiceNowAuth {
    ServiceNowAuth::Password {
        client_id: "3e57bb02663102004d010ee8f561307a".into(),
        client_secret: "cl1ent-s3cret".into(),
        username: "svc.steward".into(),
        password: "p&ss=w0rd?".into(),
    }
}

fn refresh_auth() -> ServiceNowAuth {
    ServiceNowAuth::RefreshToken {
        client_id: "steward".into(),
        client_secret: "cl1ent-s3cret".into(),
        refresh_token: "rt-configured".into(),
    }
}

fn sn(server: &MockServer, auth: ServiceNowAuth, clock: &FixedClock) -> ServiceNowClient {
    let http = client(&HttpSettings::default()).unwrap();
    ServiceNowClient::with_clock(
        server.uri().parse().unwrap(),
        auth,
        http,
        Arc::new(clock.clone()),
    )
}

fn clock() -> FixedClock {
    FixedClock::at_secs(1_700_000_000)
}

/// An incident record as the Table API returns it with raw values.
fn record() -> Value {
    json!({
        "sys_id": SYS_ID, "number": NUMBER,
        "short_description": "Outlook cannot send mail",
        "description": "Since 09:00 nobody in Berlin can send mail.",
        "state": "1", "incident_state": "1", "impact": "2", "urgency": "3", "priority": "4",
        "assignment_group": GROUP, "assigned_to": "", "work_notes": "", "comments": "",
        "sys_mod_count": "4", "sys_updated_on": "2024-03-01 09:12:44"
    })
}

fn token_reply(access: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": access, "refresh_token": format!("rt-for-{access}"),
        "scope": "useraccount", "token_type": "Bearer", "expires_in": expires_in
    }))
}

fn token_endpoint() -> wiremock::MockBuilder {
    Mock::given(method("POST")).and(path("/oauth_token.do"))
}

fn incident_endpoint() -> wiremock::MockBuilder {
    Mock::given(method("GET")).and(path(format!("/api/now/table/incident/{SYS_ID}")))
}

fn found(record: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"result": record}))
}

async fn mount_token(server: &MockServer, access: &str, expect: u64) {
    token_endpoint()
        .respond_with(token_reply(access, 1799))
        .expect(expect)
        .mount(server)
        .await;
}

fn by_sys_id() -> IncidentRef {
    IncidentRef::sys_id(SYS_ID).unwrap()
}

fn form_of(request: &Request) -> HashMap<String, String> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

async fn requests_to(server: &MockServer, wanted: &str) -> Vec<Request> {
    let all = server.received_requests().await.unwrap();
    all.into_iter().filter(|r| r.url.path() == wanted).collect()
}

#[tokio::test]
async fn a_password_grant_signs_in_then_the_record_is_read_with_its_token() {
    let server = MockServer::start().await;
    token_endpoint()
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(token_reply("at-1", 1799))
        .expect(1)
        .mount(&server)
        .await;
    incident_endpoint()
        .and(header("authorization", "Bearer at-1"))
        .and(header("accept", "application/json"))
        .and(query_param("sysparm_exclude_reference_link", "true"))
        .and(query_param("sysparm_display_value", "false"))
        .respond_with(found(record()))
        .expect(1)
        .mount(&server)
        .await;

    let incident = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap();

    assert_eq!(
        (incident.sys_id.as_str(), incident.number.as_str()),
        (SYS_ID, NUMBER)
    );
    assert_eq!(incident.field("assignment_group"), GROUP);
    assert_eq!(incident.version(), "4");
    let token_request = &requests_to(&server, "/oauth_token.do").await[0];
    let form = form_of(token_request);
    let expected: HashMap<String, String> = [
        ("grant_type", "password"),
        ("client_id", "3e57bb02663102004d010ee8f561307a"),
        ("client_secret", "cl1ent-s3cret"),
        ("username", "svc.steward"),
        ("password", "p&ss=w0rd?"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(form, expected);
}

#[tokio::test]
async fn one_token_serves_many_calls() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    incident_endpoint()
        .respond_with(found(record()))
        .expect(3)
        .mount(&server)
        .await;
    let sn = sn(&server, password_auth(), &clock());
    for _ in 0..3 {
        sn.get_incident(&by_sys_id()).await.unwrap();
    }
}

#[tokio::test]
async fn the_token_is_refreshed_a_minute_ahead_of_expiry() {
    let server = MockServer::start().await;
    token_endpoint()
        .and(body_string_contains("grant_type=password"))
        .respond_with(token_reply("at-1", 1799))
        .expect(1)
        .mount(&server)
        .await;
    token_endpoint()
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=rt-for-at-1"))
        .respond_with(token_reply("at-2", 1799))
        .expect(1)
        .mount(&server)
        .await;
    incident_endpoint()
        .and(header("authorization", "Bearer at-1"))
        .respond_with(found(record()))
        .expect(2)
        .mount(&server)
        .await;
    incident_endpoint()
        .and(header("authorization", "Bearer at-2"))
        .respond_with(found(record()))
        .expect(1)
        .mount(&server)
        .await;
    let clock = clock();
    let sn = sn(&server, password_auth(), &clock);

    sn.get_incident(&by_sys_id()).await.unwrap();
    clock.advance_millis(1_700_000); // 99 s left: still good
    sn.get_incident(&by_sys_id()).await.unwrap();
    clock.advance_millis(40_000); // 59 s left: refresh first
    sn.get_incident(&by_sys_id()).await.unwrap();
}

#[tokio::test]
async fn concurrent_calls_after_expiry_share_one_token_request() {
    let server = MockServer::start().await;
    token_endpoint()
        .respond_with(token_reply("at-1", 1799).set_delay(Duration::from_millis(200)))
        .expect(2)
        .mount(&server)
        .await;
    incident_endpoint()
        .respond_with(found(record()))
        .expect(5)
        .mount(&server)
        .await;
    let clock = clock();
    let sn = sn(&server, password_auth(), &clock);
    sn.get_incident(&by_sys_id()).await.unwrap();

    clock.advance_millis(1_800_000);
    let r = by_sys_id();
    let results = tokio::join!(
        sn.get_incident(&r),
        sn.get_incident(&r),
        sn.get_incident(&r),
        sn.get_incident(&r)
    );
    for result in [results.0, results.1, results.2, results.3] {
        result.unwrap();
    }
}

#[tokio::test]
async fn a_401_drops_the_token_and_retries_once_with_a_new_one() {
    let server = MockServer::start().await;
    token_endpoint()
        .respond_with(token_reply("at-1", 1799))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    token_endpoint()
        .respond_with(token_reply("at-2", 1799))
        .expect(1)
        .mount(&server)
        .await;
    incident_endpoint()
        .and(header("authorization", "Bearer at-1"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    incident_endpoint()
        .and(header("authorization", "Bearer at-2"))
        .respond_with(found(record()))
        .expect(1)
        .mount(&server)
        .await;

    let incident = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await;
    assert_eq!(incident.unwrap().number, NUMBER);
}

#[tokio::test]
async fn a_second_401_is_unauthorized_with_no_further_attempt() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 2).await;
    let body = json!({"error": {"message": "User Not Authenticated",
                                "detail": "Required to provide Auth information"},
                      "status": "failure"});
    incident_endpoint()
        .respond_with(ResponseTemplate::new(401).set_body_json(body))
        .expect(2)
        .mount(&server)
        .await;

    let err = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServiceNowError::Unauthorized { message }
        if message == "User Not Authenticated"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn concurrent_401s_cause_one_refresh() {
    let server = MockServer::start().await;
    token_endpoint()
        .and(body_string_contains("grant_type=password"))
        .respond_with(token_reply("at-1", 1799))
        .expect(1)
        .mount(&server)
        .await;
    token_endpoint()
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(token_reply("at-2", 1799).set_delay(Duration::from_millis(100)))
        .expect(1)
        .mount(&server)
        .await;
    incident_endpoint()
        .and(header("authorization", "Bearer at-1"))
        .respond_with(ResponseTemplate::new(401).set_delay(Duration::from_millis(50)))
        .mount(&server)
        .await;
    incident_endpoint()
        .and(header("authorization", "Bearer at-2"))
        .respond_with(found(record()))
        .mount(&server)
        .await;
    let sn = sn(&server, password_auth(), &clock());
    let r = by_sys_id();

    let (a, b, c) = tokio::join!(
        sn.get_incident(&r),
        sn.get_incident(&r),
        sn.get_incident(&r)
    );
    for result in [a, b, c] {
        result.unwrap();
    }
}

#[tokio::test]
async fn invalid_grant_needs_a_reconnect_and_makes_no_loop() {
    let server = MockServer::start().await;
    token_endpoint()
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=rt-configured"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    incident_endpoint()
        .respond_with(found(record()))
        .expect(0)
        .mount(&server)
        .await;

    let err = sn(&server, refresh_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServiceNowError::OAuth { error, reconnect_needed: true, .. }
        if error == "invalid_grant"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(err.reason_code(), "servicenow_reconnect_needed");
    assert!(err.to_string().contains("reconnected"), "{err}");
}

#[tokio::test]
async fn a_refused_password_needs_a_reconnect_after_one_request() {
    let server = MockServer::start().await;
    token_endpoint()
        .respond_with(
            ResponseTemplate::new(401).set_body_json(
                json!({"error_description": "access_denied", "error": "server_error"}),
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServiceNowError::OAuth {
                reconnect_needed: true,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refused_refresh_token_falls_back_to_the_password_once() {
    let server = MockServer::start().await;
    token_endpoint()
        .and(body_string_contains("grant_type=password"))
        .respond_with(token_reply("at-1", 1799))
        .expect(2)
        .mount(&server)
        .await;
    token_endpoint()
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "invalid_grant", "error_description": "refresh token expired"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    incident_endpoint()
        .respond_with(found(record()))
        .expect(2)
        .mount(&server)
        .await;
    let clock = clock();
    let sn = sn(&server, password_auth(), &clock);

    sn.get_incident(&by_sys_id()).await.unwrap();
    clock.advance_millis(1_800_000);
    sn.get_incident(&by_sys_id()).await.unwrap();
}

#[tokio::test]
async fn a_refresh_token_signs_in_and_a_rotated_one_is_announced() {
    let server = MockServer::start().await;
    token_endpoint()
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(token_reply("at-1", 1799))
        .expect(1)
        .mount(&server)
        .await;
    incident_endpoint()
        .respond_with(found(record()))
        .mount(&server)
        .await;
    let sn = sn(&server, refresh_auth(), &clock());
    let rotated = sn.rotated_refresh_token();
    assert!(rotated.borrow().is_none());

    sn.get_incident(&by_sys_id()).await.unwrap();

    let form = form_of(&requests_to(&server, "/oauth_token.do").await[0]);
    assert_eq!(form["client_id"], "steward");
    assert_eq!(form["refresh_token"], "rt-configured");
    let announced = rotated
        .borrow()
        .as_ref()
        .map(|t| t.expose_secret().to_owned());
    assert_eq!(announced.as_deref(), Some("rt-for-at-1"));
}

#[tokio::test]
async fn client_credentials_send_only_the_client() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    incident_endpoint()
        .respond_with(found(record()))
        .mount(&server)
        .await;
    let auth = ServiceNowAuth::ClientCredentials {
        client_id: "steward".into(),
        client_secret: "cl1ent-s3cret".into(),
    };
    sn(&server, auth, &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap();
    let form = form_of(&requests_to(&server, "/oauth_token.do").await[0]);
    assert_eq!(form.len(), 3);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_secret"], "cl1ent-s3cret");
}

#[tokio::test]
async fn a_failing_token_endpoint_is_retryable() {
    let server = MockServer::start().await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let err = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceNowError::Server { status: 503, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn an_incident_is_found_by_number() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/incident"))
        .and(query_param("sysparm_query", format!("number={NUMBER}")))
        .and(query_param("sysparm_limit", "1"))
        .and(query_param("sysparm_exclude_reference_link", "true"))
        .and(query_param("sysparm_display_value", "false"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": [record()]})))
        .expect(1)
        .mount(&server)
        .await;
    let r = IncidentRef::number(NUMBER).unwrap();
    let incident = sn(&server, password_auth(), &clock())
        .get_incident(&r)
        .await
        .unwrap();
    assert_eq!(incident.sys_id, SYS_ID);
    let query = requests_to(&server, "/api/now/table/incident").await[0]
        .url
        .query()
        .unwrap()
        .to_owned();
    assert!(
        query.contains("sysparm_query=number%3DINC0010001"),
        "{query}"
    );
}

#[tokio::test]
async fn an_unknown_number_is_not_found() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/incident"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": []})))
        .mount(&server)
        .await;
    let r = IncidentRef::number("INC0999999").unwrap();
    let err = sn(&server, password_auth(), &clock())
        .get_incident(&r)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceNowError::NotFound), "{err:?}");
}

#[tokio::test]
async fn refs_built_around_validation_are_refused_before_sending() {
    let server = MockServer::start().await;
    let sn = sn(&server, password_auth(), &clock());
    for r in [
        IncidentRef::Number("INC001^ORactive=true".into()),
        IncidentRef::SysId("../../sys_user".into()),
        IncidentRef::SysId(SYS_ID.to_uppercase()),
    ] {
        let err = sn.get_incident(&r).await.unwrap_err();
        assert!(matches!(err, ServiceNowError::BadRequest { .. }), "{err:?}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn reference_fields_in_every_shape_and_unknown_states_are_read() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    let link = format!("https://acme.service-now.com/api/now/table/sys_user_group/{GROUP}");
    let mut rec = record();
    rec["assignment_group"] = json!({"link": link, "value": GROUP});
    rec["caller_id"] = json!({"display_value": "Abel Tuter", "link": link, "value": "62826bf0"});
    rec["assigned_to"] = json!({"display_value": "Beth Anglin", "link": link});
    rec["state"] = json!("-2");
    rec["reassignment_count"] = json!(2);
    incident_endpoint()
        .respond_with(found(rec))
        .mount(&server)
        .await;

    let incident = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap();
    assert_eq!(incident.field("assignment_group"), GROUP);
    assert_eq!(incident.field("caller_id"), "62826bf0");
    assert_eq!(incident.field("assigned_to"), "");
    assert_eq!(incident.field("state"), "-2");
    assert_eq!(incident.field("reassignment_count"), "2");
}

#[tokio::test]
async fn a_record_without_number_or_with_another_sys_id_is_refused() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    let mut other = record();
    other["sys_id"] = json!("0".repeat(32));
    incident_endpoint()
        .respond_with(found(other))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let mut nameless = record();
    nameless.as_object_mut().unwrap().remove("number");
    incident_endpoint()
        .respond_with(found(nameless))
        .mount(&server)
        .await;
    let sn = sn(&server, password_auth(), &clock());

    let err = sn.get_incident(&by_sys_id()).await.unwrap_err();
    assert!(
        matches!(&err, ServiceNowError::Decode(m) if m.contains("asked for")),
        "{err:?}"
    );
    let err = sn.get_incident(&by_sys_id()).await.unwrap_err();
    assert!(
        matches!(&err, ServiceNowError::Decode(m) if m.contains("no number")),
        "{err:?}"
    );
}

#[tokio::test]
async fn error_envelopes_map_to_their_errors() {
    let envelope = |message: &str, detail: &str| json!({"error": {"message": message, "detail": detail}, "status": "failure"});
    let cases = [
        (
            404,
            envelope(
                "No Record found",
                "Record doesn't exist or ACL restricts the record retrieval",
            ),
        ),
        (
            403,
            envelope(
                "Operation Failed",
                "ACL Exception Update Failed due to security constraints",
            ),
        ),
        (400, envelope("Invalid query", "number=")),
        (500, envelope("Internal error", "")),
    ];
    for (status, body) in cases {
        let server = MockServer::start().await;
        mount_token(&server, "at-1", 1).await;
        incident_endpoint()
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&server)
            .await;
        let err = sn(&server, password_auth(), &clock())
            .get_incident(&by_sys_id())
            .await
            .unwrap_err();
        let ok = match status {
            404 => matches!(err, ServiceNowError::NotFound),
            403 => {
                matches!(&err, ServiceNowError::Forbidden { message } if message == "Operation Failed")
            }
            400 => matches!(&err, ServiceNowError::BadRequest { message, detail }
                if message == "Invalid query" && detail == "number="),
            _ => {
                matches!(&err, ServiceNowError::Server { status: 500, message } if message == "Internal error")
            }
        };
        assert!(ok, "{status}: {err:?}");
        assert_eq!(err.is_retryable(), status == 500);
    }
}

#[tokio::test]
async fn a_rate_limit_reports_its_window() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    let body = json!({"error": {"message": "Rate limit exceeded",
                                "detail": "Rate limit of 10 requests per hour for Table API exceeded"},
                      "status": "failure"});
    incident_endpoint()
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_json(body)
                .insert_header("X-RateLimit-Limit", "10")
                .insert_header("X-RateLimit-Reset", "1700002400")
                .insert_header("X-RateLimit-Rule", "d6e2f1a0c0a8016500b5e1c96f1ea2f1")
                .insert_header("Retry-After", "2400"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap_err();
    let ServiceNowError::RateLimited {
        reset_at_secs,
        retry_after_secs,
        limit,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*reset_at_secs, Some(1_700_002_400));
    assert_eq!(*retry_after_secs, Some(2400));
    assert_eq!(limit.as_deref(), Some("10"));
    assert!(err.is_retryable());
    assert!(
        err.to_string().contains("resets at unix time 1700002400"),
        "{err}"
    );
}

#[tokio::test]
async fn a_patch_sends_exactly_the_given_fields() {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    let mut updated = record();
    updated["urgency"] = json!("1");
    updated["sys_mod_count"] = json!("5");
    Mock::given(method("PATCH"))
        .and(path(format!("/api/now/table/incident/{SYS_ID}")))
        .and(header("authorization", "Bearer at-1"))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/json"))
        .and(query_param("sysparm_exclude_reference_link", "true"))
        .and(query_param("sysparm_display_value", "false"))
        .respond_with(found(updated))
        .expect(1)
        .mount(&server)
        .await;
    let mut fields = Map::new();
    fields.insert("urgency".into(), json!("1"));
    fields.insert(
        "work_notes".into(),
        json!("Steward: urgency 3 → 1, approved by @oncall [run 42]"),
    );

    let incident = sn(&server, password_auth(), &clock())
        .patch_incident(SYS_ID, &fields)
        .await
        .unwrap();

    assert_eq!(incident.field("urgency"), "1");
    assert_eq!(incident.version(), "5");
    let sent = &requests_to(&server, &format!("/api/now/table/incident/{SYS_ID}")).await[0];
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body, Value::Object(fields));
}

#[tokio::test]
async fn a_patch_of_a_bad_sys_id_is_refused_before_sending() {
    let server = MockServer::start().await;
    let err = sn(&server, password_auth(), &clock())
        .patch_incident("a9e30c7d?sysparm_x=1", &Map::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceNowError::BadRequest { .. }), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

async fn journal_server(rows: Value) -> MockServer {
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sys_journal_field"))
        .and(query_param(
            "sysparm_query",
            format!("element_id={SYS_ID}^element=work_notes^valueLIKE[steward run 42]"),
        ))
        .and(query_param("sysparm_fields", "sys_id,value"))
        .and(query_param("sysparm_limit", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": rows})))
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn the_journal_is_asked_for_the_marker() {
    let rows = json!([{"sys_id": "b1", "value": "urgency 3 → 1 [steward run 42]"}]);
    let server = journal_server(rows).await;
    let found = sn(&server, password_auth(), &clock())
        .journal_contains(SYS_ID, "work_notes", "[steward run 42]")
        .await
        .unwrap();
    assert!(found);
}

#[tokio::test]
async fn the_journal_answer_is_checked_client_side() {
    for rows in [
        json!([]),
        json!([{"sys_id": "b1", "value": "[STEWARD RUN 42]"}]),
        json!([{"sys_id": "b1"}]),
    ] {
        let server = journal_server(rows.clone()).await;
        let found = sn(&server, password_auth(), &clock())
            .journal_contains(SYS_ID, "work_notes", "[steward run 42]")
            .await
            .unwrap();
        assert!(!found, "{rows}");
    }
}

#[tokio::test]
async fn journal_inputs_that_could_change_the_query_are_refused() {
    let server = MockServer::start().await;
    let sn = sn(&server, password_auth(), &clock());
    let cases = [
        (SYS_ID, "work_notes", "run 42^ORsys_id!=x"),
        (SYS_ID, "work_notes", "run 42\nmore"),
        (SYS_ID, "work_notes", "run\r42"),
        (SYS_ID, "work_notes", " "),
        (SYS_ID, "work_notes^ORelement=comments", "run 42"),
        (SYS_ID, "", "run 42"),
        ("not-a-sys-id", "work_notes", "run 42"),
    ];
    for (sys_id, element, marker) in cases {
        let err = sn
            .journal_contains(sys_id, element, marker)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ServiceNowError::BadRequest { .. }),
            "{element} {marker:?}: {err:?}"
        );
    }
    let long = "m".repeat(201);
    assert!(
        sn.journal_contains(SYS_ID, "work_notes", &long)
            .await
            .is_err()
    );
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn garbage_bodies_are_decode_errors() {
    for body in [
        "<html><body>Your instance is hibernating</body></html>",
        "",
        "{\"result\": 3}",
        "[]",
    ] {
        let server = MockServer::start().await;
        mount_token(&server, "at-1", 1).await;
        incident_endpoint()
            .respond_with(ResponseTemplate::new(200).set_body_string(body))
            .mount(&server)
            .await;
        let err = sn(&server, password_auth(), &clock())
            .get_incident(&by_sys_id())
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceNowError::Decode(_)), "{body}: {err:?}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn oversized_bodies_are_not_read() {
    let huge = format!(
        "{{\"result\": {{\"description\": \"{}\"}}}}",
        "x".repeat(wire::MAX_BODY_BYTES)
    );
    let server = MockServer::start().await;
    mount_token(&server, "at-1", 1).await;
    incident_endpoint()
        .respond_with(ResponseTemplate::new(200).set_body_string(huge.clone()))
        .mount(&server)
        .await;
    let err = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServiceNowError::Decode(m) if m.contains("larger than")),
        "{err:?}"
    );

    let server = MockServer::start().await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(200).set_body_string(huge))
        .mount(&server)
        .await;
    let err = sn(&server, password_auth(), &clock())
        .get_incident(&by_sys_id())
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceNowError::Decode(_)), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_instance_is_a_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = client(&HttpSettings::default()).unwrap();
    let url = format!("http://127.0.0.1:{port}").parse().unwrap();
    let sn = ServiceNowClient::new(url, password_auth(), http);
    let err = sn.get_incident(&by_sys_id()).await.unwrap_err();
    assert!(matches!(err, ServiceNowError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[test]
fn record_urls_encode_the_inner_uri() {
    let sn = ServiceNowClient::new(
        "https://acme.service-now.com/".parse().unwrap(),
        password_auth(),
        reqwest::Client::new(),
    );
    assert_eq!(
        sn.record_url("incident", SYS_ID),
        format!("https://acme.service-now.com/nav_to.do?uri=incident.do%3Fsys_id%3D{SYS_ID}")
    );
    assert_eq!(
        sn.record_url("incident", "x&y=z #"),
        "https://acme.service-now.com/nav_to.do?uri=incident.do%3Fsys_id%3Dx%26y%3Dz+%23"
    );
}

#[test]
fn the_client_debug_shows_no_secret() {
    let sn = ServiceNowClient::new(
        "https://acme.service-now.com".parse().unwrap(),
        password_auth(),
        reqwest::Client::new(),
    );
    let shown = format!("{sn:?}");
    assert!(shown.contains("acme.service-now.com"), "{shown}");
    assert!(
        !shown.contains("cl1ent-s3cret") && !shown.contains("p&ss=w0rd?"),
        "{shown}"
    );
    let secret = SecretString::from("unused");
    assert!(!format!("{secret:?}").contains("unused"));
}

#[test]
fn errors_name_themselves() {
    let limited = ServiceNowError::RateLimited {
        reset_at_secs: None,
        retry_after_secs: None,
        limit: None,
    };
    assert_eq!(limited.reason_code(), "servicenow_rate_limited");
    assert_eq!(limited.to_string(), "servicenow rate limit reached");
    let oauth = ServiceNowError::OAuth {
        error: "server_error".into(),
        description: "temporarily down".into(),
        reconnect_needed: false,
    };
    assert_eq!(oauth.reason_code(), "servicenow_oauth_error");
    assert!(!oauth.to_string().contains("reconnected"));
    assert!(!ServiceNowError::Decode(String::new()).is_retryable());
}
