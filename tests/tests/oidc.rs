//! Operators, on-call engineers and approvers sign in as themselves through OpenID Connect:
//! the page's code flow over HTTP with cookies, ID tokens as bearer credentials on the ops
//! API, the device flow of `steward login`, the role table, and every refusal (state, code,
//! verifier, expiry, audience, issuer, algorithm, key, tampering, size, shape), against the
//! OpenID provider stand-in, which speaks the real wire formats.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use steward_api::{OidcSettings, Role};
use steward_runtime::login_cli::{Prompt, device_login, save, saved_token};
use steward_runtime::standins_oidc::{OidcStandin, OidcStandinSettings};
use steward_tests::{Harness, OPS_TOKEN, Scenario};

/// Where Steward says the provider sends the browser back; the test's "browser" follows the
/// provider's redirect to the real server with the same path and query.
const CALLBACK: &str = "http://127.0.0.1:9/ops/oidc/callback";

fn relying_party(idp: &OidcStandin) -> OidcSettings {
    let mut s = OidcSettings::new(idp.issuer(), &idp.settings().client_id, CALLBACK);
    s.allow_loopback_http = true;
    s.roles.insert("steward-operators".into(), Role::Operator);
    s.roles.insert("steward-oncall".into(), Role::Oncall);
    s.roles.insert("steward-approvers".into(), Role::Approver);
    s
}

async fn world_with(
    idp: OidcStandinSettings,
    configure: impl FnOnce(&mut OidcSettings),
) -> (Harness, OidcStandin) {
    let idp = OidcStandin::start(idp).await.expect("the stand-in starts");
    let mut rp = relying_party(&idp);
    configure(&mut rp);
    let h = Scenario::new().oidc(rp).start().await;
    (h, idp)
}

async fn world() -> (Harness, OidcStandin) {
    world_with(OidcStandinSettings::default(), |_| {}).await
}

/// A browser without redirects: cookies by hand, so each one is seen.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `name=value` of each `Set-Cookie` of an answer.
fn set_cookies(r: &reqwest::Response) -> HashMap<String, String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// One sign-in started at `/ops/oidc/start`: the pre-login cookie and the provider URL.
struct Started {
    pre_login: String,
    authorize: url::Url,
}

async fn start(h: &Harness) -> Started {
    let r = browser()
        .get(format!("{}/ops/oidc/start", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("steward_ops_login="))
        .expect("a pre-login cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let pre_login = set_cookies(&r)["steward_ops_login"].clone();
    let authorize = url::Url::parse(&location(&r)).unwrap();
    let q: HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["response_type"], "code");
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    assert!(!q["state"].is_empty() && !q["nonce"].is_empty());
    assert!(
        !q.contains_key("code_verifier"),
        "the verifier never leaves Steward"
    );
    Started {
        pre_login,
        authorize,
    }
}

/// The provider signs `login` in; the query it sends the browser back with.
async fn authorize(started: &Started, login: &str) -> String {
    let mut url = started.authorize.clone();
    url.query_pairs_mut().append_pair("login_hint", login);
    let r = browser().get(url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let back = url::Url::parse(&location(&r)).unwrap();
    assert_eq!(back.path(), "/ops/oidc/callback");
    back.query().unwrap_or_default().to_owned()
}

/// The browser comes back to Steward with `query` and the pre-login cookie `pre_login`.
async fn callback(h: &Harness, pre_login: &str, query: &str) -> reqwest::Response {
    browser()
        .get(format!("{}/ops/oidc/callback?{query}", h.url()))
        .header("cookie", format!("steward_ops_login={pre_login}"))
        .send()
        .await
        .unwrap()
}

/// A page session: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn sign_in(h: &Harness, login: &str) -> Session {
    let started = start(h).await;
    let query = authorize(&started, login).await;
    let r = callback(h, &started.pre_login, &query).await;
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    assert_eq!(location(&r), "/ops");
    let cookies = set_cookies(&r);
    assert_eq!(
        cookies["steward_ops_login"], "",
        "the pre-login cookie is cleared"
    );
    let cookie = format!("steward_ops={}", cookies["steward_ops"]);
    let page = browser()
        .get(format!("{}/ops", h.url()))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"steward-csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_owned();
    assert!(
        page.contains(&format!("{login}@example.com")),
        "the page says who"
    );
    Session { cookie, csrf }
}

async fn ops_get(h: &Harness, path: &str, auth: (&str, &str)) -> u16 {
    browser()
        .get(format!("{}{path}", h.url()))
        .header(auth.0, auth.1)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn ops_post(h: &Harness, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut request = browser().post(format!("{}{path}", h.url())).json(&body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn operator_audit(h: &Harness) -> Vec<(String, String, Value)> {
    h.server()
        .store
        .operator_audit(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.actor, serde_json::from_str(&e.detail).unwrap()))
        .collect()
}

#[tokio::test]
async fn an_operator_signs_in_on_the_page_and_pauses_writes_as_themselves() {
    let (h, _idp) = world().await;
    let login = browser()
        .get(format!("{}/ops", h.url()))
        .send()
        .await
        .unwrap();
    let text = login.text().await.unwrap();
    assert!(text.contains("Sign in with SSO") && !text.contains("Operator token"));

    let ana = sign_in(&h, "ana").await;
    assert_eq!(
        ops_get(&h, "/v1/ops/runs", ("cookie", &ana.cookie)).await,
        200
    );
    assert_eq!(
        ops_get(&h, "/v1/ops/actors", ("cookie", &ana.cookie)).await,
        200
    );
    let csrf = [
        ("cookie", ana.cookie.as_str()),
        ("x-steward-csrf", ana.csrf.as_str()),
    ];
    // The body names someone else; the audit names who signed in.
    let body = json!({"reason": "ServiceNow upgrade window", "operator": "mallory"});
    let (status, answer) = ops_post(&h, "/v1/ops/writes/pause", &csrf, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let pauses = h.server().store.all_write_pauses().await.unwrap();
    let text = serde_json::to_string(&pauses).unwrap();
    assert!(text.contains("operator:ana@example.com"), "{text}");
    assert!(!text.contains("mallory"), "{text}");
    // Without the CSRF header a session may not change anything.
    let (status, _) = ops_post(&h, "/v1/ops/writes/resume", &csrf[..1], body).await;
    assert_eq!(status, 403);
    let (status, _) = ops_post(
        &h,
        "/v1/ops/writes/resume",
        &csrf,
        json!({"reason": "done"}),
    )
    .await;
    assert_eq!(status, 200);

    let audit = operator_audit(&h).await;
    let signed_in = audit
        .iter()
        .find(|(kind, _, _)| kind == "oidc.signed_in")
        .expect("the sign-in is audited");
    assert_eq!(signed_in.1, "person:u-1001");
    assert_eq!(signed_in.2["email"], "ana@example.com");
    assert_eq!(signed_in.2["roles"], json!(["operator"]));
}

#[tokio::test]
async fn an_oncall_reads_and_cancels_as_themselves_but_cannot_pause_writes() {
    let (h, idp) = world().await;
    let omar = sign_in(&h, "omar").await;
    assert_eq!(
        ops_get(&h, "/v1/ops/runs", ("cookie", &omar.cookie)).await,
        200
    );
    let csrf = [
        ("cookie", omar.cookie.as_str()),
        ("x-steward-csrf", omar.csrf.as_str()),
    ];
    let (status, _) = ops_post(&h, "/v1/ops/writes/pause", &csrf, json!({"reason": "nope"})).await;
    assert_eq!(status, 403, "on-call may not pause writes");
    assert!(
        h.server()
            .store
            .all_write_pauses()
            .await
            .unwrap()
            .is_empty()
    );
    let tenants = ops_get(&h, "/v1/tenants", ("cookie", &omar.cookie)).await;
    assert_eq!(tenants, 403, "nor list tenants");

    // The same person with a bearer ID token cancels a waiting run; the run's audit names them.
    let run = h.trigger().await;
    h.wait_for_state(run, "awaiting_approval").await;
    let token = idp.id_token_for("omar");
    let auth = bearer(&token);
    let (status, answer) = ops_post(
        &h,
        &format!("/v1/ops/runs/{run}/cancel"),
        &[("authorization", &auth)],
        json!({"reason": "duplicate of INC0010002", "operator": "someone-else"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let audit = h.audit().await;
    let cancelled = audit
        .iter()
        .find(|e| e.kind == "run.cancelled")
        .expect("the cancel is audited");
    assert_eq!(cancelled.actor, "operator:omar@example.com");
}

#[tokio::test]
async fn an_approver_only_reads_and_a_person_without_a_role_gets_nothing() {
    let (h, idp) = world().await;
    let cai = sign_in(&h, "cai").await;
    assert_eq!(
        ops_get(&h, "/v1/ops/runs", ("cookie", &cai.cookie)).await,
        200
    );
    let csrf = [
        ("cookie", cai.cookie.as_str()),
        ("x-steward-csrf", cai.csrf.as_str()),
    ];
    let fake_run = "/v1/ops/runs/0190a000-0000-7000-8000-000000000000/cancel";
    let (status, _) = ops_post(&h, fake_run, &csrf, json!({"reason": "tidy"})).await;
    assert_eq!(status, 403, "an approver may not cancel");

    let started = start(&h).await;
    let query = authorize(&started, "nobody").await;
    let r = callback(&h, &started.pre_login, &query).await;
    assert_eq!(r.status(), 403);
    assert!(
        !set_cookies(&r).contains_key("steward_ops"),
        "no session opened"
    );
    let token = idp.id_token_for("nobody");
    assert_eq!(
        ops_get(&h, "/v1/ops/runs", ("authorization", &bearer(&token))).await,
        403
    );
    assert!(
        operator_audit(&h)
            .await
            .iter()
            .any(|(kind, _, detail)| kind == "oidc.sign_in_refused"
                && detail["reason"].as_str().unwrap_or("").contains("u-1004")),
        "the refusal is audited with the subject"
    );
}

#[tokio::test]
async fn the_callback_refuses_every_broken_or_replayed_sign_in_and_opens_nothing() {
    let (h, _idp) = world().await;
    let refused = |r: &reqwest::Response| {
        assert_eq!(r.status(), 401);
        assert!(
            !set_cookies(r).contains_key("steward_ops"),
            "no session opened"
        );
    };

    // state that does not match the pre-login.
    let s = start(&h).await;
    let query = authorize(&s, "ana").await;
    let tampered = query.replace("state=", "state=x");
    refused(&callback(&h, &s.pre_login, &tampered).await);
    // The pre-login is spent: the right state does not work after a wrong one.
    refused(&callback(&h, &s.pre_login, &query).await);

    // No pre-login cookie at all.
    let s = start(&h).await;
    let query = authorize(&s, "ana").await;
    refused(&callback(&h, "", &query).await);

    // A replayed callback, then its code with a fresh pre-login.
    let s = start(&h).await;
    let query = authorize(&s, "ana").await;
    assert_eq!(callback(&h, &s.pre_login, &query).await.status(), 303);
    refused(&callback(&h, &s.pre_login, &query).await);
    let fresh = start(&h).await;
    let fresh_state: String = fresh
        .authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let code: String = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let replayed = format!("code={code}&state={fresh_state}");
    refused(&callback(&h, &fresh.pre_login, &replayed).await);

    // A code issued for another sign-in's challenge: exchanged with this one's verifier.
    let a = start(&h).await;
    let b = start(&h).await;
    let a_state: String = a
        .authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let b_query = authorize(&b, "ana").await;
    let b_code: String = url::form_urlencoded::parse(b_query.as_bytes())
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    refused(&callback(&h, &a.pre_login, &format!("code={b_code}&state={a_state}")).await);

    // The provider's own refusal.
    let s = start(&h).await;
    let state: String = s
        .authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    refused(
        &callback(
            &h,
            &s.pre_login,
            &format!("error=access_denied&state={state}"),
        )
        .await,
    );

    let audit = operator_audit(&h).await;
    let refusals = audit
        .iter()
        .filter(|(k, _, _)| k == "oidc.sign_in_refused")
        .count();
    assert!(refusals >= 6, "{audit:?}");
}

#[tokio::test]
async fn the_stand_in_refuses_a_wrong_verifier_and_a_reused_code() {
    let idp = OidcStandin::start(OidcStandinSettings::default())
        .await
        .unwrap();
    let verifier = "v".repeat(43);
    let challenge = URL_SAFE_NO_PAD.encode(<Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    let code = |challenge: String| {
        let idp = &idp;
        async move {
            let mut url = url::Url::parse(&format!("{}/authorize", idp.issuer())).unwrap();
            url.query_pairs_mut()
                .append_pair("response_type", "code")
                .append_pair("client_id", "steward-ops")
                .append_pair("redirect_uri", CALLBACK)
                .append_pair("scope", "openid")
                .append_pair("state", "s")
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256")
                .append_pair("login_hint", "ana");
            let r = browser().get(url).send().await.unwrap();
            let back = url::Url::parse(&location(&r)).unwrap();
            back.query_pairs()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned())
                .unwrap()
        }
    };
    let exchange = |code: String, verifier: String| {
        let idp = &idp;
        async move {
            let r = browser()
                .post(format!("{}/token", idp.issuer()))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", CALLBACK),
                    ("client_id", "steward-ops"),
                    ("code_verifier", &verifier),
                ])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let c = code(challenge.clone()).await;
    let (status, body) = exchange(c, "w".repeat(43)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let c = code(challenge).await;
    let (status, body) = exchange(c.clone(), verifier.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id_token"].is_string());
    let (status, body) = exchange(c, verifier).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // `plain` PKCE is not accepted.
    let mut url = url::Url::parse(&format!("{}/authorize", idp.issuer())).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "steward-ops")
        .append_pair("redirect_uri", CALLBACK)
        .append_pair("scope", "openid")
        .append_pair("code_challenge", &"a".repeat(43))
        .append_pair("code_challenge_method", "plain")
        .append_pair("login_hint", "ana");
    let r = browser().get(url).send().await.unwrap();
    assert!(location(&r).contains("error=invalid_request"));
}

fn segment(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn bearer_id_tokens_are_refused_unless_every_check_passes() {
    let (h, idp) = world().await;
    let kid = idp.kid();
    let es256 = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ana = idp.claims_for("ana", None);
    let with = |changes: Value| {
        let mut c = ana.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = idp.sign(&es256, &ana);
    let status = |token: String| {
        let h = &h;
        async move { ops_get(h, "/v1/ops/runs", ("authorization", &bearer(&token))).await }
    };
    assert_eq!(status(good.clone()).await, 200);
    // Within the clock skew is still fine.
    assert_eq!(
        status(idp.sign(&es256, &with(json!({"exp": now - 10})))).await,
        200
    );
    // Several audiences with `azp` naming Steward.
    let multi = with(json!({"aud": ["steward-ops", "other-api"], "azp": "steward-ops"}));
    assert_eq!(status(idp.sign(&es256, &multi)).await, 200);

    let (header, payload, signature) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };
    let public_jwk = idp.public_jwk().to_string();
    let hs256 = {
        let header = segment(&json!({"alg": "HS256", "typ": "JWT", "kid": kid}));
        let input = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(public_jwk.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    };
    let tampered_payload = segment(&with(json!({"sub": "u-1002", "email": "omar@example.com"})));
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            idp.sign(&es256, &with(json!({"exp": now - 600, "iat": now - 1200}))),
        ),
        (
            "not yet valid",
            idp.sign(&es256, &with(json!({"nbf": now + 600}))),
        ),
        (
            "issued in the future",
            idp.sign(&es256, &with(json!({"iat": now + 600}))),
        ),
        (
            "wrong audience",
            idp.sign(&es256, &with(json!({"aud": "another-client"}))),
        ),
        (
            "several audiences, no azp",
            idp.sign(&es256, &{
                let mut c = with(json!({"aud": ["steward-ops", "other-api"]}));
                c.as_object_mut().unwrap().remove("azp");
                c
            }),
        ),
        (
            "azp of another client",
            idp.sign(&es256, &with(json!({"azp": "another-client"}))),
        ),
        (
            "wrong issuer",
            idp.sign(&es256, &with(json!({"iss": "http://127.0.0.1:1"}))),
        ),
        (
            "no issuer",
            idp.sign(&es256, &{
                let mut c = ana.clone();
                c.as_object_mut().unwrap().remove("iss");
                c
            }),
        ),
        (
            "alg none",
            format!(
                "{}.{payload}.",
                segment(&json!({"alg": "none", "typ": "JWT"}))
            ),
        ),
        ("HS256 keyed with the public key", hs256),
        (
            "RS512",
            idp.sign(&json!({"alg": "RS512", "kid": kid}), &ana),
        ),
        (
            "unknown kid",
            idp.sign(&json!({"alg": "ES256", "kid": "rotated-away"}), &ana),
        ),
        (
            "tampered payload",
            format!("{header}.{tampered_payload}.{signature}"),
        ),
        (
            "truncated signature",
            format!("{header}.{payload}.{}", &signature[..20]),
        ),
        ("no signature", format!("{header}.{payload}.")),
        (
            "oversized",
            format!("{header}.{}.{signature}", "A".repeat(9_000)),
        ),
        ("two segments", format!("{header}.{payload}")),
        ("not base64", format!("{header}.{payload}.%%%")),
        (
            "not JSON",
            format!("{}.{}.{signature}", URL_SAFE_NO_PAD.encode("hi"), payload),
        ),
        ("empty", String::new()),
    ];
    let jwks_before = idp.count("jwks_served");
    for (what, token) in cases {
        assert_eq!(status(token).await, 401, "{what}");
    }
    // The key set was read a moment ago: an unknown kid does not make Steward ask again yet.
    assert_eq!(idp.count("jwks_served"), jwks_before);
    // Nothing was opened or done by any of them.
    assert!(
        h.server()
            .store
            .all_write_pauses()
            .await
            .unwrap()
            .is_empty()
    );
    // The operator token does not pass the ops API when people sign in.
    assert_eq!(
        ops_get(&h, "/v1/ops/runs", ("authorization", &bearer(OPS_TOKEN))).await,
        403
    );
    let r = browser()
        .post(format!("{}/ops/login", h.url()))
        .form(&[("token", OPS_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(!set_cookies(&r).contains_key("steward_ops"));
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it_at_most_once_per_window() {
    let window = Duration::from_secs(2);
    let (h, idp) = world_with(OidcStandinSettings::default(), |s| {
        s.jwks_refetch_after = window;
    })
    .await;
    let runs = |token: String| {
        let h = &h;
        async move { ops_get(h, "/v1/ops/runs", ("authorization", &bearer(&token))).await }
    };
    let before = idp.id_token_for("ana");
    assert_eq!(runs(before.clone()).await, 200);
    assert_eq!(idp.count("jwks_served"), 1, "read with discovery");
    idp.rotate_key().unwrap();
    let after = idp.id_token_for("ana");
    assert_eq!(
        runs(after.clone()).await,
        401,
        "the set was read within the window"
    );
    assert_eq!(idp.count("jwks_served"), 1);
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    assert_eq!(runs(after.clone()).await, 200, "the new key is fetched");
    assert_eq!(idp.count("jwks_served"), 2);
    let unknown = idp.sign(
        &json!({"alg": "ES256", "kid": "never-published"}),
        &idp.claims_for("ana", None),
    );
    for _ in 0..3 {
        assert_eq!(runs(unknown.clone()).await, 401);
    }
    assert_eq!(
        idp.count("jwks_served"),
        2,
        "no refetch storm for unknown kids"
    );
    assert_eq!(runs(before).await, 401, "the old key is gone from the set");
}

#[tokio::test]
async fn the_cli_is_told_which_provider_to_use() {
    let (h, idp) = world().await;
    let r = browser()
        .get(format!("{}/v1/ops/oidc", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["issuer"], idp.issuer());
    assert_eq!(body["client_id"], "steward-ops");
    let plain = Scenario::new().start().await;
    let r = browser()
        .get(format!("{}/v1/ops/oidc", plain.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Without [oidc] the operator token works as it always has.
    assert_eq!(
        ops_get(
            &plain,
            "/v1/ops/runs",
            ("authorization", &bearer(OPS_TOKEN))
        )
        .await,
        200
    );
}

/// Runs `steward login`'s device flow against `h`; `decide` gets the user code once the
/// provider has answered at least one poll `authorization_pending`.
async fn device(
    h: &Harness,
    idp: &OidcStandin,
    decide: Option<(&'static str, &'static str)>,
) -> anyhow::Result<steward_runtime::login_cli::SavedSession> {
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let mut tx = Some(tx);
    let mut show = move |p: &Prompt| {
        assert!(p.verification_uri.ends_with("/device"));
        if let Some(tx) = tx.take() {
            let _ = tx.send(p.user_code.clone());
        }
    };
    let server = url::Url::parse(&h.url()).unwrap();
    let issuer = idp.issuer().to_owned();
    let pending_before = idp.count("device_pending");
    let person = async {
        let code = rx.await.unwrap();
        let Some((action, login)) = decide else {
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while idp.count("device_pending") == pending_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the CLI never polled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The person uses the verification page, as in a browser.
        let r = browser()
            .post(format!("{issuer}/device"))
            .form(&[
                ("user_code", code.as_str()),
                ("login_hint", login),
                ("action", action),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    let (session, ()) = tokio::join!(device_login(&server, &mut show), person);
    session
}

fn quick_device() -> OidcStandinSettings {
    OidcStandinSettings {
        device_interval_secs: 1,
        ..OidcStandinSettings::default()
    }
}

#[tokio::test]
async fn steward_login_waits_for_approval_and_its_token_works_on_the_ops_api() {
    let (h, idp) = world_with(quick_device(), |_| {}).await;
    let session = device(&h, &idp, Some(("approve", "omar"))).await.unwrap();
    assert!(idp.count("device_pending") >= 1, "it was pending first");
    assert_eq!(
        idp.count("device_slow_down"),
        0,
        "the CLI kept to the interval"
    );
    assert_eq!(session.subject, "u-1002");
    assert_eq!(session.email.as_deref(), Some("omar@example.com"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("steward").join("session.json");
    save(&session, &file).unwrap();
    let server = url::Url::parse(&h.url()).unwrap();
    let token = saved_token(Some(&file), &server)
        .unwrap()
        .expect("a saved token");
    let token = secrecy::ExposeSecret::expose_secret(&token).to_owned();
    assert_eq!(
        ops_get(&h, "/v1/ops/runs", ("authorization", &bearer(&token))).await,
        200
    );
    let (status, _) = ops_post(
        &h,
        "/v1/ops/writes/pause",
        &[("authorization", &bearer(&token))],
        json!({"reason": "not mine to pause"}),
    )
    .await;
    assert_eq!(status, 403, "omar is on call, not an operator");
}

#[tokio::test]
async fn steward_login_reports_a_refusal() {
    let (h, idp) = world_with(quick_device(), |_| {}).await;
    let error = device(&h, &idp, Some(("deny", "ana"))).await.unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
}

#[tokio::test]
async fn steward_login_reports_an_expired_code() {
    let settings = OidcStandinSettings {
        device_code_ttl: Duration::from_secs(2),
        ..quick_device()
    };
    let (h, idp) = world_with(settings, |_| {}).await;
    let error = device(&h, &idp, None).await.unwrap_err();
    assert!(error.to_string().contains("expired"), "{error}");
}

#[tokio::test]
async fn with_oidc_the_operator_token_only_opens_break_glass_grants_which_act_as_operator() {
    let (h, _idp) = world().await;
    let token_auth = bearer(OPS_TOKEN);
    let (status, opened) = ops_post(
        &h,
        "/v1/ops/break-glass",
        &[("authorization", &token_auth)],
        json!({"person": "dana.ops@example.com", "reason": "identity provider outage", "minutes": 30}),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    let grant = bearer(opened["token"].as_str().unwrap());
    assert_eq!(
        ops_get(&h, "/v1/ops/runs", ("authorization", &grant)).await,
        200
    );
    let (status, answer) = ops_post(
        &h,
        "/v1/ops/writes/pause",
        &[("authorization", &grant)],
        json!({"reason": "freeze during the outage", "operator": "mallory"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let pauses =
        serde_json::to_string(&h.server().store.all_write_pauses().await.unwrap()).unwrap();
    assert!(pauses.contains("operator:dana.ops@example.com"), "{pauses}");
    assert!(!pauses.contains("mallory"));
    // The operator token itself still does not act on the ops API.
    let (status, _) = ops_post(
        &h,
        "/v1/ops/writes/resume",
        &[("authorization", &token_auth)],
        json!({"reason": "back", "operator": "ops"}),
    )
    .await;
    assert_eq!(status, 403);
    // An unknown grant-shaped token is 401.
    let unknown = bearer(&format!("sbg_{}", "0".repeat(64)));
    assert_eq!(
        ops_get(&h, "/v1/ops/runs", ("authorization", &unknown)).await,
        401
    );
}
