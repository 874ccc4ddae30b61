//! The ServiceNow stand-in over real HTTP: OAuth grants, Table API reads, queries and writes,
//! journal semantics and ServiceNow's error envelopes.

use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::standins::{StandinSettings, Standins};

const GROUP: &str = "8a4dde73c6112278017a6a4baf547aa7";

async fn start() -> Standins {
    Standins::start(StandinSettings::default()).await.unwrap()
}

async fn start_with(settings: StandinSettings) -> Standins {
    Standins::start(settings).await.unwrap()
}

fn unauthenticated() -> Value {
    json!({"error": {"message": "User Not Authenticated",
                     "detail": "Required to provide Auth information"},
           "status": "failure"})
}

fn no_record() -> Value {
    json!({"error": {"message": "No Record found",
                     "detail": "Record doesn't exist or ACL restricts the record retrieval"},
           "status": "failure"})
}

fn password_form(settings: &StandinSettings) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "password".into()),
        ("client_id", settings.oauth_client_id.clone()),
        ("client_secret", settings.oauth_client_secret.clone()),
        ("username", settings.sn_username.clone()),
        ("password", settings.sn_password.clone()),
    ]
}

async fn token_request(standins: &Standins, form: &[(&str, String)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/oauth_token.do", standins.servicenow_url()))
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn access_token(standins: &Standins) -> String {
    let (status, body) = token_request(standins, &password_form(&StandinSettings::default())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// An authenticated JSON client for the Table API.
struct Table {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Table {
    async fn new(standins: &Standins) -> Self {
        Self {
            base: standins.servicenow_url(),
            token: access_token(standins).await,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        (self.http.get(format!("{}{path_and_query}", self.base)))
            .bearer_auth(&self.token)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
    }

    async fn patch(&self, path_and_query: &str, body: &Value) -> reqwest::Response {
        (self.http.patch(format!("{}{path_and_query}", self.base)))
            .bearer_auth(&self.token)
            .header("Accept", "application/json")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn patch_raw(
        &self,
        sys_id: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        (self
            .http
            .patch(format!("{}/api/now/table/incident/{sys_id}", self.base)))
        .bearer_auth(&self.token)
        .header("Accept", "application/json")
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
    }
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    (response.status(), response.json().await.unwrap())
}

fn seed_checkout(standins: &Standins) -> String {
    let record = json!({
        "short_description": "Checkout returns 502",
        "assignment_group": GROUP,
        "caller_id": "",
        "impact": "2",
        "urgency": "2",
    });
    standins.seed_incident(record.as_object().unwrap().clone())
}

fn is_servicenow_time(value: &Value) -> bool {
    let text = value.as_str().unwrap_or_default();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    text.len() == 19
        && digits.iter().all(|&i| text.as_bytes()[i].is_ascii_digit())
        && &text[4..5] == "-"
        && &text[10..11] == " "
        && &text[13..14] == ":"
}

#[tokio::test]
async fn password_grant_returns_servicenow_token_shape() {
    let standins = start().await;
    let (status, body) =
        token_request(&standins, &password_form(&StandinSettings::default())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["scope"], "useraccount");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 1799);
    assert!(body["access_token"].as_str().unwrap().len() >= 32);
    assert!(body["refresh_token"].as_str().unwrap().len() >= 32);
    assert_ne!(body["access_token"], body["refresh_token"]);
    assert_eq!(standins.counts().oauth, 1);
}

#[tokio::test]
async fn token_endpoint_refuses_json_bodies() {
    let standins = start().await;
    let settings = StandinSettings::default();
    let form: serde_json::Map<String, Value> = password_form(&settings)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect();
    let response = reqwest::Client::new()
        .post(format!("{}/oauth_token.do", standins.servicenow_url()))
        .json(&form)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");
    assert!(body.get("access_token").is_none());
}

#[tokio::test]
async fn wrong_user_or_client_credentials_are_denied() {
    let standins = start().await;
    let settings = StandinSettings::default();
    let denied = json!({"error_description": "access_denied", "error": "server_error"});
    for (field, wrong) in [
        ("password", "nope"),
        ("username", "admin"),
        ("client_secret", "x"),
    ] {
        let mut form = password_form(&settings);
        form.iter_mut()
            .filter(|(name, _)| *name == field)
            .for_each(|(_, value)| *value = wrong.into());
        let (status, body) = token_request(&standins, &form).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{field}");
        assert_eq!(body, denied, "{field}");
    }
}

#[tokio::test]
async fn refresh_grant_issues_a_new_access_token() {
    let standins = start().await;
    let settings = StandinSettings::default();
    let (_, first) = token_request(&standins, &password_form(&settings)).await;
    let refresh = first["refresh_token"].as_str().unwrap().to_owned();
    let form = |token: &str| {
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("client_id", settings.oauth_client_id.clone()),
            ("client_secret", settings.oauth_client_secret.clone()),
            ("refresh_token", token.to_owned()),
        ]
    };
    let (status, second) = token_request(&standins, &form(&refresh)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(second["token_type"], "Bearer");

    let (status, refused) = token_request(&standins, &form("not-a-refresh-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["error"], "invalid_grant");
    assert!(refused["error_description"].is_string());
}

#[tokio::test]
async fn client_credentials_grant_issues_no_refresh_token() {
    let standins = start().await;
    let settings = StandinSettings::default();
    let form = [
        ("grant_type", "client_credentials".to_owned()),
        ("client_id", settings.oauth_client_id.clone()),
        ("client_secret", settings.oauth_client_secret.clone()),
    ];
    let (status, body) = token_request(&standins, &form).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["access_token"].is_string());
    assert!(body.get("refresh_token").is_none());
}

#[tokio::test]
async fn unknown_grant_types_and_oversized_token_requests_are_refused() {
    let standins = start().await;
    let settings = StandinSettings::default();
    let mut form = password_form(&settings);
    form[0].1 = "authorization_code".into();
    let (status, body) = token_request(&standins, &form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");

    let huge = format!("grant_type=password&junk={}", "a".repeat(BODY_LIMIT + 1));
    let response = reqwest::Client::new()
        .post(format!("{}/oauth_token.do", standins.servicenow_url()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn expired_tokens_are_not_authenticated() {
    let standins = start_with(StandinSettings {
        token_lifetime_secs: 0,
        ..StandinSettings::default()
    })
    .await;
    let sys_id = seed_checkout(&standins);
    let table = Table::new(&standins).await;
    let (status, body) = json_of(
        table
            .get(&format!("/api/now/table/incident/{sys_id}"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, unauthenticated());
}

#[tokio::test]
async fn missing_or_bad_credentials_get_the_401_envelope() {
    let standins = start().await;
    let sys_id = seed_checkout(&standins);
    let url = format!(
        "{}/api/now/table/incident/{sys_id}",
        standins.servicenow_url()
    );
    let http = reqwest::Client::new();
    let requests = [
        http.get(&url),
        http.get(&url).bearer_auth("forged"),
        http.get(&url)
            .basic_auth("steward.integration", Some("wrong")),
        http.get(&url)
            .header("Authorization", "Basic !!!not-base64"),
    ];
    for request in requests {
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, unauthenticated());
    }
    assert_eq!(standins.counts().table_gets, 0);
}

#[tokio::test]
async fn basic_auth_of_the_integration_user_is_accepted() {
    let standins = start().await;
    let settings = StandinSettings::default();
    let sys_id = seed_checkout(&standins);
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/now/table/incident/{sys_id}",
            standins.servicenow_url()
        ))
        .basic_auth(&settings.sn_username, Some(&settings.sn_password))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn reads_render_reference_links_unless_excluded() {
    let standins = start().await;
    let sys_id = seed_checkout(&standins);
    let table = Table::new(&standins).await;
    let (status, body) = json_of(
        table
            .get(&format!("/api/now/table/incident/{sys_id}"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record = &body["result"];
    let link = format!(
        "{}/api/now/table/sys_user_group/{GROUP}",
        standins.servicenow_url()
    );
    assert_eq!(
        record["assignment_group"],
        json!({"link": link, "value": GROUP})
    );
    assert_eq!(record["caller_id"], "");
    assert_eq!(record["sys_id"], sys_id);
    assert_eq!(record["number"], "INC0010001");
    assert_eq!(record["sys_mod_count"], "0");
    assert_eq!(record["priority"], "3");
    assert_eq!(record["work_notes"], "");
    assert!(is_servicenow_time(&record["sys_updated_on"]));
    let strings_or_links = record.as_object().unwrap().values().all(|value| {
        value.is_string() || (value["link"].is_string() && value["value"].is_string())
    });
    assert!(strings_or_links, "{record}");

    let path = format!("/api/now/table/incident/{sys_id}?sysparm_exclude_reference_link=true");
    let (_, body) = json_of(table.get(&path).await).await;
    assert_eq!(body["result"]["assignment_group"], GROUP);
    assert!(
        body["result"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string)
    );
    assert_eq!(standins.incident(&sys_id).unwrap(), body["result"]);
}

#[tokio::test]
async fn unknown_records_get_the_404_envelope() {
    let standins = start().await;
    let table = Table::new(&standins).await;
    let path = format!("/api/now/table/incident/{}", "0".repeat(32));
    let (status, body) = json_of(table.get(&path).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, no_record());
    let (status, body) = json_of(table.patch(&path, &json!({"urgency": "1"})).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, no_record());
    assert_eq!(standins.patches().len(), 1);
    assert_eq!(standins.patches()[0].sys_id, "0".repeat(32));
}

#[tokio::test]
async fn queries_by_number_and_sys_id_return_a_list_envelope() {
    let standins = start().await;
    let first = seed_checkout(&standins);
    let second = seed_checkout(&standins);
    let table = Table::new(&standins).await;

    let response = table
        .get("/api/now/table/incident?sysparm_query=number%3DINC0010002&sysparm_limit=1")
        .await;
    assert_eq!(response.headers()["x-total-count"], "1");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    let result = body["result"].as_array().unwrap();
    assert_eq!(result.len(), 1);
    assert_eq!(result[0]["sys_id"], second);

    let path = format!("/api/now/v2/table/incident?sysparm_query=sys_id={first}");
    let (_, body) = json_of(table.get(&path).await).await;
    assert_eq!(body["result"][0]["number"], "INC0010001");

    let response = table
        .get("/api/now/table/incident?sysparm_query=number=INC9")
        .await;
    assert_eq!(response.headers()["x-total-count"], "0");
    assert_eq!(json_of(response).await.1, json!({"result": []}));

    let response = table.get("/api/now/table/incident?sysparm_limit=1").await;
    assert_eq!(response.headers()["x-total-count"], "2");
    assert_eq!(
        json_of(response).await.1["result"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(standins.counts().table_gets, 4);
}

#[tokio::test]
async fn malformed_queries_and_tables_are_refused() {
    let standins = start().await;
    let table = Table::new(&standins).await;
    for path in [
        "/api/now/table/incident?sysparm_query=number=1%5EORnumber=2",
        "/api/now/table/incident?sysparm_query=numberIN1,2",
        "/api/now/table/incident?sysparm_limit=ten",
        "/api/now/table/incident?sysparm_offset=-1",
        "/api/now/table/sys_user?sysparm_query=name=x",
    ] {
        let (status, body) = json_of(table.get(path).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["status"], "failure", "{path}");
        assert!(body["error"]["message"].is_string(), "{path}");
    }
}

#[tokio::test]
async fn field_lists_limit_the_returned_fields() {
    let standins = start().await;
    let sys_id = seed_checkout(&standins);
    let table = Table::new(&standins).await;
    let path = format!("/api/now/table/incident/{sys_id}?sysparm_fields=number,sys_mod_count,nope");
    let (_, body) = json_of(table.get(&path).await).await;
    assert_eq!(
        body,
        json!({"result": {"number": "INC0010001", "sys_mod_count": "0"}})
    );
}

#[tokio::test]
async fn patches_apply_values_and_bump_the_version() {
    let standins = start().await;
    let sys_id = seed_checkout(&standins);
    let table = Table::new(&standins).await;
    let path = format!("/api/now/table/incident/{sys_id}?sysparm_exclude_reference_link=true");
    let changes =
        json!({"urgency": "1", "state": 2, "assignment_group": GROUP, "u_nonexistent": "x"});
    let (status, body) = json_of(table.patch(&path, &changes).await).await;
    assert_eq!(status, StatusCode::OK);
    let record = &body["result"];
    assert_eq!(record["urgency"], "1");
    assert_eq!(record["state"], "2");
    assert_eq!(
        record["incident_state"], "1",
        "no business rule mirrors state"
    );
    assert_eq!(
        record["priority"], "3",
        "no business rule re-derives priority"
    );
    assert_eq!(record["assignment_group"], GROUP);
    assert_eq!(record["sys_mod_count"], "1");
    assert_eq!(record["sys_updated_by"], "steward.integration");
    assert!(is_servicenow_time(&record["sys_updated_on"]));
    assert!(record.get("u_nonexistent").is_none());
    assert_eq!(standins.incident(&sys_id).unwrap(), *record);
    assert_eq!(standins.patches()[0].body, changes);
    assert_eq!(standins.counts().patches, 1);

    let linked = format!("/api/now/table/incident/{sys_id}");
    let (_, body) = json_of(table.patch(&linked, &json!({"urgency": "1"})).await).await;
    assert_eq!(body["result"]["assignment_group"]["value"], GROUP);
    assert_eq!(
        body["result"]["sys_mod_count"], "1",
        "an unchanged write is no update"
    );
}

#[tokio::test]
async fn journal_writes_read_back_empty_and_are_found_in_the_journal_table() {
    let standins = start().await;
    let sys_id = seed_checkout(&standins);
    let table = Table::new(&standins).await;
    let path = format!("/api/now/table/incident/{sys_id}");
    let note = json!({"work_notes": "Triage [steward:run-42] suggests a rollback"});
    let (status, body) = json_of(table.patch(&path, &note).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["work_notes"], "");
    assert_eq!(body["result"]["sys_mod_count"], "1");
    table
        .patch(&path, &json!({"comments": "We are on it"}))
        .await;

    let journal = standins.journal(&sys_id);
    assert_eq!(journal.len(), 2);
    assert_eq!(journal[0].element, "work_notes");
    assert_eq!(journal[0].value, note["work_notes"]);
    assert!(is_servicenow_time(&json!(journal[0].sys_created_on)));

    let query = format!(
        "/api/now/table/sys_journal_field?sysparm_query=element_id={sys_id}\
         %5Eelement=work_notes%5EvalueLIKE[steward:run-42]"
    );
    let response = table.get(&query).await;
    assert_eq!(response.headers()["x-total-count"], "1");
    let (_, body) = json_of(response).await;
    let entry = &body["result"][0];
    assert_eq!(entry["element_id"], sys_id);
    assert_eq!(entry["name"], "incident");
    assert_eq!(entry["value"], note["work_notes"]);
    assert_eq!(entry["sys_created_by"], "steward.integration");
    assert_eq!(entry["sys_id"].as_str().unwrap().len(), 32);

    let miss = format!(
        "/api/now/table/sys_journal_field?sysparm_query=element_id={sys_id}%5EvalueLIKEother-run"
    );
    assert_eq!(
        json_of(table.get(&miss).await).await.1,
        json!({"result": []})
    );
}

#[tokio::test]
async fn the_journal_table_is_read_only() {
    let standins = start().await;
    let table = Table::new(&standins).await;
    let path = format!("/api/now/table/sys_journal_field/{}", "1".repeat(32));
    let (status, body) = json_of(table.patch(&path, &json!({"value": "x"})).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["status"], "failure");
}

#[tokio::test]
async fn malformed_patch_bodies_get_servicenow_errors_and_change_nothing() {
    let standins = start().await;
    let sys_id = seed_checkout(&standins);
    let table = Table::new(&standins).await;
    let before = standins.incident(&sys_id).unwrap();
    let cases: [(&str, Vec<u8>, StatusCode); 6] = [
        (
            "application/json",
            b"{\"urgency\":".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/json",
            b"[\"urgency\"]".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/json",
            b"{\"urgency\":{\"value\":\"1\"}}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/json",
            vec![0xff, 0xfe, 0x00],
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            b"{\"urgency\":\"1\"}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "application/json",
            vec![b' '; BODY_LIMIT + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (content_type, body, expected) in cases {
        let (status, reply) = json_of(table.patch_raw(&sys_id, content_type, body).await).await;
        assert_eq!(status, expected, "{reply}");
        assert_eq!(reply["status"], "failure");
        assert!(reply["error"]["message"].is_string());
    }
    assert_eq!(standins.incident(&sys_id).unwrap(), before);
    assert_eq!(
        standins.patches().len(),
        1,
        "only the well-formed object with a bad value"
    );
}

#[tokio::test]
async fn writes_require_a_json_accept_header() {
    let standins = start().await;
    let sys_id = seed_checkout(&standins);
    let table = Table::new(&standins).await;
    let response = (table.http)
        .patch(format!("{}/api/now/table/incident/{sys_id}", table.base))
        .bearer_auth(&table.token)
        .header("Accept", "application/xml")
        .json(&json!({"urgency": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_ACCEPTABLE);

    let mut headers = HeaderMap::new();
    assert_eq!(
        check_accept(&headers, true),
        Err(TableError::MissingHeader("Accept"))
    );
    assert_eq!(check_accept(&headers, false), Ok(()));
    headers.insert(
        header::ACCEPT,
        "text/html, application/json;q=0.9".parse().unwrap(),
    );
    assert_eq!(check_accept(&headers, true), Ok(()));
    assert_eq!(
        check_content_type(&HeaderMap::new()),
        Err(TableError::MissingHeader("Content-Type"))
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_get_envelopes() {
    let standins = start().await;
    let http = reqwest::Client::new();
    let base = standins.servicenow_url();
    let (status, body) = json_of(
        http.get(format!("{base}/api/now/nothing"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["message"],
        "Requested URI does not represent any resource"
    );
    let response = http
        .delete(format!("{base}/api/now/table/incident/x"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["status"], "failure");
}

#[tokio::test]
async fn the_control_surface_seeds_incidents_and_reports_state() {
    let standins = start().await;
    let http = reqwest::Client::new();
    let base = standins.servicenow_url();
    let response = http
        .post(format!("{base}/_standin/incidents"))
        .json(&json!({"short_description": "Disk full", "number": "INC0099999"}))
        .send()
        .await
        .unwrap();
    let (status, seeded) = json_of(response).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(seeded["number"], "INC0099999");
    let sys_id = seeded["sys_id"].as_str().unwrap();
    assert_eq!(
        standins.incident(sys_id).unwrap()["short_description"],
        "Disk full"
    );

    let response = http
        .post(format!("{base}/_standin/incidents"))
        .header("Content-Type", "application/json")
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let (_, state) = json_of(
        http.get(format!("{base}/_standin/state"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(state["incidents"][0]["sys_id"], sys_id);
    assert_eq!(state["patches"], json!([]));
    assert_eq!(state["counts"]["oauth"], 0);
}

#[tokio::test]
async fn an_incident_seeded_again_replaces_the_first_and_is_listed_last() {
    let standins = start().await;
    let first = seed_checkout(&standins);
    let second = seed_checkout(&standins);
    let third = seed_checkout(&standins);
    let again = json!({"sys_id": first, "short_description": "Seeded again", "urgency": "1"});
    assert_eq!(
        standins.seed_incident(again.as_object().unwrap().clone()),
        first
    );
    let table = Table::new(&standins).await;

    let (_, body) = json_of(table.get("/api/now/table/incident").await).await;
    let order: Vec<&str> = body["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["sys_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, [&second, &third, &first]);

    let path = format!("/api/now/table/incident/{first}");
    let (status, body) = json_of(table.get(&path).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["short_description"], "Seeded again");
    for sys_id in [&second, &third, &first] {
        let path = format!("/api/now/table/incident/{sys_id}");
        let (status, body) = json_of(table.patch(&path, &json!({"urgency": "3"})).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["result"]["sys_id"], sys_id.as_str());
        assert_eq!(body["result"]["urgency"], "3");
    }
    assert_eq!(
        standins.incident(&third).unwrap()["short_description"],
        "Checkout returns 502"
    );
}
