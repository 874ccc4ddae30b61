//! The OpenAPI document: served without a credential, a valid OpenAPI 3.1 document whose
//! schemas are valid JSON Schema, listing exactly the routes the router serves (so a route
//! added without its annotation fails here), and whose schemas hold real answers and the
//! document's own examples.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use steward_tests::{Harness, Reply, Scenario};

/// The methods an operation can have in an OpenAPI path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

async fn served_document(h: &Harness) -> (Value, String) {
    let response = client()
        .get(format!("{}/openapi.json", h.url()))
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
    assert_eq!(content_type, "application/json");
    let text = response.text().await.expect("a body");
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    (doc, text)
}

/// The documented (method, path) pairs.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("`paths`");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

/// The (method, path) pairs the router serves: each registered path, asked with a method no
/// route has, answers 405 with `Allow` naming its methods.
async fn served(h: &Harness) -> BTreeSet<(String, String)> {
    let probe = reqwest::Method::from_bytes(b"PROBE").expect("a method");
    let mut routes = BTreeSet::new();
    let paths = steward_api::route_paths();
    assert!(paths.len() > 20, "the router lists its paths: {paths:?}");
    for path in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let response = client()
            .request(probe.clone(), format!("{}{concrete}", h.url()))
            .send()
            .await
            .expect("Steward answers");
        assert_eq!(response.status(), 405, "{path} is routed");
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{path}: 405 names the allowed methods"))
            .to_owned();
        for method in allow.split(',').map(str::trim) {
            // axum answers HEAD wherever it answers GET; the document names GET.
            if !method.is_empty() && method != "HEAD" {
                routes.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

/// A validator for the schema at `pointer` in `doc`, resolving references within `doc`.
fn validator(doc: &Value, pointer: &str) -> jsonschema::Validator {
    let mut root = doc.clone();
    let fragment: String = pointer
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    root["$ref"] = json!(format!("#{fragment}"));
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{pointer}: {e}"))
}

/// Follows a `$ref` to a component, or returns `value` as it is.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> (&'a Value, String) {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#').to_owned();
            (
                doc.pointer(&pointer).expect("the reference resolves"),
                pointer,
            )
        }
        None => (value, String::new()),
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Checks `reply` against the JSON schema documented for `method path` at its status.
fn conforms(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let status = reply.status.to_string();
    let op = format!("/paths/{}/{method}", escape(path));
    let response_pointer = format!("{op}/responses/{status}");
    let response = doc
        .pointer(&response_pointer)
        .unwrap_or_else(|| panic!("{method} {path} documents {status}: {}", reply.text));
    let (response, component) = resolve(doc, response);
    let base = if component.is_empty() {
        response_pointer
    } else {
        component
    };
    assert!(
        response
            .pointer("/content/application~1json/schema")
            .is_some(),
        "{method} {path} {status} has a JSON schema"
    );
    let schema = validator(doc, &format!("{base}/content/application~1json/schema"));
    let errors: Vec<String> = schema
        .iter_errors(&reply.body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {errors:?} in {}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_openapi_3_1_and_lists_every_route() {
    let h = Scenario::new().start().await;
    let (doc, text) = served_document(&h).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(&steward_api::openapi::to_json()).expect("JSON"),
        "`steward openapi` prints what is served"
    );
    let spec = oas3::from_json(&text).expect("the document parses as OpenAPI 3.1");
    assert!(spec.openapi.starts_with("3.1"));

    let served = served(&h).await;
    let documented = documented(&doc);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes without an operation in the document (annotate the handler with \
         #[utoipa::path] and list it in openapi.rs): {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented operations the router does not serve: {unrouted:?}"
    );

    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    let mut ids = BTreeSet::new();
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        let id = op["operationId"].as_str().expect("an operation id");
        assert!(ids.insert(id.to_owned()), "operation id {id} is unique");
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{method} {path} has responses");
        for requirement in op["security"].as_array().into_iter().flatten() {
            for name in requirement.as_object().expect("a requirement").keys() {
                assert!(schemes.contains_key(name), "{method} {path}: {name}");
            }
        }
        let guarded = op["security"].as_array().is_some_and(|all| {
            all.iter()
                .all(|r| r.as_object().is_some_and(|o| !o.is_empty()))
        });
        if guarded && path.starts_with("/v1/") && !path.starts_with("/v1/webhooks") {
            assert!(
                responses.contains_key("401"),
                "{method} {path} documents 401"
            );
        }
    }
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        assert!(
            jsonschema::meta::is_valid(schema),
            "{name} is valid JSON Schema"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_examples_hold_to_their_schemas() {
    let h = Scenario::new().start().await;
    let (doc, _) = served_document(&h).await;
    let token = Some(h.tenant.api_token.as_str());

    conforms(&doc, "get", "/healthz", &h.get("/healthz", None).await);
    conforms(&doc, "get", "/readyz", &h.get("/readyz", None).await);

    let started = h
        .post_json(
            "/v1/runs",
            token,
            &json!({ "incident": { "number": steward_tests::fixtures::NUMBER } }),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.text);
    conforms(&doc, "post", "/v1/runs", &started);
    let run = started.run_id();
    conforms(
        &doc,
        "get",
        "/v1/runs/{id}",
        &h.get(&format!("/v1/runs/{run}"), token).await,
    );
    conforms(
        &doc,
        "get",
        "/v1/runs",
        &h.get("/v1/runs?limit=1", token).await,
    );

    let webhook = h.send(&h.delivery(h.incident_event())).await;
    assert_eq!(webhook.status, 202, "{}", webhook.text);
    conforms(&doc, "post", "/v1/webhooks/{tenant}/{source}", &webhook);

    // Error answers.
    let cases = [
        h.get("/v1/runs", None).await,
        h.get("/v1/runs?limit=x", token).await,
        h.get("/v1/runs/00000000-0000-7000-8000-000000000000", token)
            .await,
    ];
    for (reply, status) in cases.iter().zip([401, 400, 404]) {
        assert_eq!(reply.status, status, "{}", reply.text);
    }
    conforms(&doc, "get", "/v1/runs", &cases[0]);
    conforms(&doc, "get", "/v1/runs", &cases[1]);
    conforms(&doc, "get", "/v1/runs/{id}", &cases[2]);
    let refused = h
        .post_json("/v1/runs", token, &json!({ "incident": {} }))
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    conforms(&doc, "post", "/v1/runs", &refused);
    let unsigned = h
        .post_json(
            &format!("/v1/webhooks/{}/servicenow", h.tenant.id),
            None,
            &json!({}),
        )
        .await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.text);
    conforms(&doc, "post", "/v1/webhooks/{tenant}/{source}", &unsigned);
    let tenant_token_on_ops = h.get("/v1/ops/runs", token).await;
    assert_eq!(
        tenant_token_on_ops.status, 403,
        "{}",
        tenant_token_on_ops.text
    );
    conforms(&doc, "get", "/v1/ops/runs", &tenant_token_on_ops);

    // Every example the document gives holds to the schema beside it.
    let mut checked = 0;
    let mut stack = vec![(String::new(), &doc)];
    while let Some((pointer, value)) = stack.pop() {
        let Some(object) = value.as_object() else {
            continue;
        };
        if let (Some(example), Some(_)) = (object.get("example"), object.get("schema")) {
            let schema = validator(&doc, &format!("{pointer}/schema"));
            assert!(
                schema.is_valid(example),
                "the example at {pointer} holds to its schema"
            );
            checked += 1;
        }
        for (key, child) in object {
            stack.push((format!("{pointer}/{}", escape(key)), child));
        }
    }
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        if let Some(example) = schema.get("example") {
            let pointer = format!("/components/schemas/{name}");
            assert!(
                validator(&doc, &pointer).is_valid(example),
                "the example of {name} holds to its schema"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "the document carries examples: {checked}");
}
