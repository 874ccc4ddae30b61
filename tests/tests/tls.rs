//! Encryption in transit. Steward serving TLS from PEM files: HTTPS with a trusted root, plain
//! HTTP to the TLS port refused, a new pair served without a restart (polled, and on `SIGHUP`),
//! a broken pair leaving the served one in place, the expiry gauge following the served
//! certificate, the page cookie `Secure` over Steward's own TLS, and clients that send garbage
//! or stall in the handshake closed without holding anything up. And the outbound side: where
//! plain HTTP is refused (production), an `http://` connector URL is 422 when set, refused at
//! startup when declared, and refused again before a run calls it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::egress::Egress;
use steward_core::{RunId, TenantId};
use steward_persistence::{Authenticator, MasterKey, TenantScope};
use steward_runtime::boot::{self, ServeOptions, Server};
use steward_runtime::tls::TlsOptions;
use steward_tests::fixtures;
use steward_tests::harness::{self, eventually};
use steward_tests::llm::{self, LlmMock};
use steward_tests::servicenow::{self, ServiceNowMock};
use steward_tests::slack::{self, APPROVER, SlackMock};
use steward_tests::webhook::{self, Delivery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPS_TOKEN: &str = "ops-platform-token-tls-0123456789abcd";

/// A self-signed certificate for `localhost` and `127.0.0.1`, with its key.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    not_after: i64,
}

fn pair(cn: &str, serial: u64, not_after_year: i32) -> Pair {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after_year, 6, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
        not_after: params.not_after.unix_timestamp(),
    }
}

fn write_pair(dir: &Path, p: &Pair) {
    std::fs::write(dir.join("tls.crt"), &p.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &p.key_pem).unwrap();
}

fn tls_options(dir: &Path, reload_every: Duration, handshake_timeout: Duration) -> TlsOptions {
    let mut options = TlsOptions::new(dir.join("tls.crt"), dir.join("tls.key"));
    options.reload_every = reload_every;
    options.handshake_timeout = handshake_timeout;
    options
}

async fn start_tls(dir: &tempfile::TempDir, tls: TlsOptions) -> Server {
    let mut opts = ServeOptions::new(dir.path().join("steward.db"), MasterKey::generate());
    opts.ops_token = Some(SecretString::from(OPS_TOKEN));
    opts.tls = Some(tls);
    boot::start(opts).await.expect("Steward boots with TLS")
}

/// A client trusting only `roots`.
fn https_client(roots: &[&Pair]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    for root in roots {
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_pem(root.cert_pem.as_bytes()).unwrap(),
        );
    }
    builder.build().unwrap()
}

/// Connects with rustls, trusting `roots` and offering `alpn`; the handshake's outcome.
async fn handshake(
    server: &Server,
    roots: &[&Pair],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    boot::install_crypto_provider();
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(root.der.clone()))
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// The DER of the certificate the server presents now.
async fn served_der(server: &Server, roots: &[&Pair]) -> Vec<u8> {
    let tls = handshake(server, roots, &[b"http/1.1"])
        .await
        .expect("handshake");
    let (_, connection) = tls.get_ref();
    connection.peer_certificates().unwrap()[0].to_vec()
}

/// The expiry gauge's value in `/metrics`.
async fn expiry_gauge(server: &Server, client: &reqwest::Client) -> i64 {
    let text = client
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("steward_tls_certificate_expiry_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn https_is_served_with_a_trusted_root_and_plain_http_to_the_tls_port_fails() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair("steward-first", 1, 2031);
    write_pair(dir.path(), &first);
    let server = start_tls(
        &dir,
        tls_options(dir.path(), Duration::from_secs(5), Duration::from_secs(10)),
    )
    .await;
    assert!(
        server.url().starts_with("https://127.0.0.1:"),
        "{}",
        server.url()
    );

    let client = https_client(&[&first]);
    let health = client
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .expect("HTTPS with the trusted root");
    assert_eq!(health.status(), 200);

    // Plain HTTP to the same port gets no answer; neither does a client that trusts another
    // root.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let refused = plain
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await;
    assert!(refused.is_err(), "plain HTTP was answered: {refused:?}");
    let stranger = https_client(&[&pair("someone-else", 9, 2031)]);
    assert!(
        stranger
            .get(format!("{}/healthz", server.url()))
            .send()
            .await
            .is_err()
    );

    // ALPN: http/1.1 is agreed; a client that only speaks h2 is refused.
    let tls = handshake(&server, &[&first], &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(handshake(&server, &[&first], &[b"h2"]).await.is_err());

    // TLS 1.2 is accepted as the minimum.
    let mut store = rustls::RootCertStore::empty();
    store
        .add(rustls::pki_types::CertificateDer::from(first.der.clone()))
        .unwrap();
    let tls12 = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect(name, tcp)
        .await
        .expect("a TLS 1.2 handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // The gauge reports the served certificate's notAfter; what is left is in the future.
    let gauge = expiry_gauge(&server, &client).await;
    assert_eq!(gauge, first.not_after);
    assert!(gauge - now_secs() > 0, "{gauge}");

    // The page cookie is Secure when Steward ends TLS itself, whatever the client claims.
    let login = client
        .post(format!("{}/ops/login", server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-proto", "http")
        .body(format!("token={OPS_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Secure"), "{cookie}");
    server.shutdown().await;

    // Over plain HTTP (TLS ended elsewhere, no forwarded header) it is not.
    let plain_dir = tempfile::tempdir().unwrap();
    let mut opts = ServeOptions::new(plain_dir.path().join("steward.db"), MasterKey::generate());
    opts.ops_token = Some(SecretString::from(OPS_TOKEN));
    let plain_server = boot::start(opts).await.unwrap();
    assert!(plain_server.url().starts_with("http://"));
    let login = plain
        .post(format!("{}/ops/login", plain_server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={OPS_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert_eq!(expiry_gauge(&plain_server, &plain).await, 0);
    plain_server.shutdown().await;
}

#[tokio::test]
async fn a_new_pair_is_served_within_the_interval_and_a_broken_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair("steward-first", 1, 2031);
    let second = pair("steward-second", 2, 2033);
    write_pair(dir.path(), &first);
    let interval = Duration::from_millis(300);
    let server = start_tls(
        &dir,
        tls_options(dir.path(), interval, Duration::from_secs(10)),
    )
    .await;
    let roots = [&first, &second];
    let client = https_client(&roots);
    let addr = server.addr;
    assert_eq!(served_der(&server, &roots).await, first.der);
    assert_eq!(expiry_gauge(&server, &client).await, first.not_after);

    // A held-open connection keeps working across the swap.
    let held = client
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);

    let replaced = Instant::now();
    write_pair(dir.path(), &second);
    let deadline = replaced + interval * 10;
    loop {
        if served_der(&server, &roots).await == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = replaced.elapsed();
    assert!(took <= interval * 4, "took {took:?}");
    assert_eq!(server.addr, addr, "the same listener, no restart");
    let gauge = expiry_gauge(&server, &client).await;
    assert_eq!(gauge, second.not_after);
    let left = gauge - now_secs();
    assert!(
        left > 0 && left <= second.not_after - now_secs() + 1,
        "{left} seconds left"
    );
    let again = client
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);

    // Garbage in both files: logged, and the second pair stays served.
    std::fs::write(
        dir.path().join("tls.crt"),
        b"-----BEGIN CERTIFICATE-----\ngarbage",
    )
    .unwrap();
    std::fs::write(dir.path().join("tls.key"), b"\x00\x01 not a key").unwrap();
    tokio::time::sleep(interval * 4).await;
    assert_eq!(served_der(&server, &roots).await, second.der);
    assert_eq!(expiry_gauge(&server, &client).await, second.not_after);
    // A certificate with another pair's key is refused as well.
    std::fs::write(dir.path().join("tls.crt"), &first.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &second.key_pem).unwrap();
    tokio::time::sleep(interval * 4).await;
    assert_eq!(served_der(&server, &roots).await, second.der);

    // Fixed files are picked up again.
    write_pair(dir.path(), &first);
    eventually("the first certificate to be served again", || async {
        (served_der(&server, &roots).await == first.der).then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_pair_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair("hup-first", 11, 2031);
    let second = pair("hup-second", 12, 2032);
    write_pair(dir.path(), &first);
    // Polling once an hour: only the signal can explain a prompt swap.
    let server = start_tls(
        &dir,
        tls_options(
            dir.path(),
            Duration::from_secs(3600),
            Duration::from_secs(10),
        ),
    )
    .await;
    let roots = [&first, &second];
    assert_eq!(served_der(&server, &roots).await, first.der);
    write_pair(dir.path(), &second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(served_der(&server, &roots).await, first.der, "no poll yet");
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    eventually("the signal to swap the certificate", || async {
        (served_der(&server, &roots).await == second.der).then_some(())
    })
    .await;
    server.shutdown().await;
}

/// Reads until the server closes the connection; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open past {limit:?}"
    );
    started.elapsed()
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_are_closed_and_hold_up_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair("hostile", 21, 2031);
    write_pair(dir.path(), &first);
    let server = start_tls(
        &dir,
        tls_options(dir.path(), Duration::from_secs(5), Duration::from_secs(1)),
    )
    .await;
    let client = https_client(&[&first]);

    // Garbage instead of a ClientHello: closed at once.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    let noise: Vec<u8> = (0..2048u32).map(|i| (i * 7919 % 251) as u8).collect();
    garbage.write_all(&noise).await.unwrap();
    let took = closed_within(&mut garbage, Duration::from_secs(3)).await;
    assert!(took < Duration::from_millis(900), "garbage took {took:?}");
    // A record header that promises a huge ClientHello, then nothing.
    let mut oversized = TcpStream::connect(server.addr).await.unwrap();
    oversized
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff])
        .await
        .unwrap();

    // Stalled clients: some send nothing, some half a ClientHello.
    let mut stalled = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01])
                .await
                .unwrap();
        }
        stalled.push(s);
    }
    // Others are served meanwhile.
    let started = Instant::now();
    let health = client
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Every stalled handshake is closed after the handshake timeout (1 s).
    let took = closed_within(&mut oversized, Duration::from_secs(4)).await;
    assert!(took < Duration::from_secs(4), "{took:?}");
    for s in &mut stalled {
        closed_within(s, Duration::from_secs(4)).await;
    }
    let health = client
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.shutdown().await;

    // Shutdown does not wait out a handshake under way.
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &first);
    let server = start_tls(
        &dir,
        tls_options(dir.path(), Duration::from_secs(5), Duration::from_secs(60)),
    )
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown ends with a handshake under way");
    assert!(stopping.elapsed() < Duration::from_secs(5));
    closed_within(&mut slow, Duration::from_secs(2)).await;
}

/// Runs `steward serve` in this process with the config `text`; its error.
async fn serve_error(dir: &Path, text: &str) -> String {
    let path = dir.join("steward.toml");
    std::fs::write(&path, text).unwrap();
    let cli = steward_runtime::cli::Cli {
        command: steward_runtime::cli::Command::Serve { config: Some(path) },
    };
    let result = steward_runtime::cli::run(cli).await;
    format!("{:#}", result.expect_err("serve refuses to start"))
}

#[tokio::test]
async fn production_refuses_to_start_without_tls_or_with_plain_http_connectors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("master.key"), "5a".repeat(32)).unwrap();
    let head = format!(
        "profile = \"production\"\nlisten = \"127.0.0.1:0\"\ndatabase = {:?}\n\
         master_key = {{ file = \"master.key\" }}\n",
        d.join("steward.db")
    );
    let err = serve_error(d, &head).await;
    assert!(
        err.contains("profile Production needs TLS")
            && err.contains("[tls] cert_file and key_file")
            && err.contains("[tls] terminates_at_proxy = true"),
        "{err}"
    );
    let err = serve_error(
        d,
        &format!("{head}[tls]\ncert_file = \"missing.crt\"\nkey_file = \"missing.key\"\n"),
    )
    .await;
    assert!(err.contains("missing.crt"), "{err}");

    // A declared tenant whose LLM URL is plain HTTP: refused at startup, with the reason.
    for (name, value) in [
        ("sn_secret", "s"),
        ("sn_password", "p"),
        ("bot", "xoxb-1-2-3"),
        ("signing", "signing-secret"),
        ("llm_key", "sk-1"),
    ] {
        std::fs::write(d.join(name), value).unwrap();
    }
    let tenant = |llm_url: &str| {
        format!(
            "{head}[tls]\nterminates_at_proxy = true\n\
             [egress.us]\nllm = [\"llm.example\"]\nservicenow = [\"acme.service-now.example\"]\n\
             [[tenants]]\nid = \"us-acme\"\nname = \"Acme\"\n\
             servicenow = {{ instance_url = \"https://acme.service-now.example\", grant = \"password\", client_id = \"c\", username = \"u\", client_secret = {{ file = \"sn_secret\" }}, password = {{ file = \"sn_password\" }} }}\n\
             slack = {{ approval_channel = \"C0TLS000001\", approvers = [\"U0TLS000001\"], bot_token = {{ file = \"bot\" }}, signing_secret = {{ file = \"signing\" }} }}\n\
             llm = {{ provider = \"openai\", base_url = \"{llm_url}\", model = \"m\", api_key = {{ file = \"llm_key\" }} }}\n"
        )
    };
    let err = serve_error(d, &tenant("http://llm.example/v1/")).await;
    assert!(
        err.contains("tenant us-acme") && err.contains("the llm endpoint URL must be https://"),
        "{err}"
    );
}

// The outbound side, with the settings `steward serve` uses in production (`https_only`).

struct World {
    server: Server,
    http: reqwest::Client,
}

async fn start_plain(dir: &tempfile::TempDir, key: &MasterKey, https_only: bool) -> World {
    let mut opts = ServeOptions::new(dir.path().join("steward.db"), key.clone());
    opts.ops_token = Some(SecretString::from(OPS_TOKEN));
    opts.http.timeout = Duration::from_secs(10);
    opts.http.egress = Egress::default().with_loopback();
    opts.http.https_only = https_only;
    let server = boot::start(opts).await.expect("Steward boots");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    World { server, http }
}

impl World {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server.url()))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("Steward answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn connector_bodies(sn: &str, slack_api: &str, llm_url: &str) -> [(&'static str, Value); 3] {
    [
        (
            "servicenow",
            json!({
                "instance_url": sn, "grant": "password",
                "client_id": servicenow::CLIENT_ID, "username": servicenow::USERNAME,
                "client_secret": servicenow::CLIENT_SECRET, "password": servicenow::PASSWORD,
            }),
        ),
        (
            "slack",
            json!({
                "api_base": slack_api, "approval_channel": "C0TLS000002", "approvers": [APPROVER.id],
                "bot_token": slack::BOT_TOKEN, "signing_secret": "tls-e2e-slack-signing-secret",
            }),
        ),
        (
            "llm",
            json!({ "provider": "openai", "model": llm::MODEL, "base_url": llm_url, "api_key": llm::API_KEY }),
        ),
    ]
}

#[tokio::test]
async fn plain_http_connector_urls_are_422_when_set_and_refused_before_a_run_calls_them() {
    let servicenow = ServiceNowMock::start(fixtures::incident()).await;
    let slack = SlackMock::start().await;
    let llm_mock = LlmMock::start(llm::answering(&fixtures::triage().to_string())).await;
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();

    // Where plain HTTP is refused, setting an http:// URL is 422 with the reason; https:// to
    // the same host is accepted (setting a connector sends no request).
    let w = start_plain(&dir, &key, true).await;
    let (status, body) = w
        .call(
            "POST",
            "/v1/tenants",
            OPS_TOKEN,
            Some(json!({ "id": "us-acme", "name": "Acme" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let admin = body["admin_token"]["value"].as_str().unwrap().to_owned();
    for (path, body) in connector_bodies(&servicenow.uri(), &slack.api_base(), &llm_mock.base_url())
    {
        let (status, answer) = w
            .call(
                "PUT",
                &format!("/v1/tenant/connectors/{path}"),
                &admin,
                Some(body),
            )
            .await;
        assert_eq!(status, 422, "{path}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("the {path} endpoint URL must be https://"))
                && message.contains("plain HTTP is allowed only in the dev profile"),
            "{message}"
        );
    }
    let (status, answer) = w
        .call(
            "PUT",
            "/v1/tenant/connectors/llm",
            &admin,
            Some(
                connector_bodies("", "", "https://127.0.0.1:9/v1")[2]
                    .1
                    .clone(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    w.server.shutdown().await;

    // Stored while plain HTTP was allowed (a dev setup), then served where it is not: the
    // check and the run give the reason, and no request reaches a connector.
    let w = start_plain(&dir, &key, false).await;
    for (path, body) in connector_bodies(&servicenow.uri(), &slack.api_base(), &llm_mock.base_url())
    {
        let (status, answer) = w
            .call(
                "PUT",
                &format!("/v1/tenant/connectors/{path}"),
                &admin,
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let source = json!({
        "name": harness::SOURCE, "sys_id_pointers": ["/incident/sys_id"],
        "number_pointers": ["/incident/number"],
    });
    let (status, answer) = w
        .call("POST", "/v1/tenant/sources", &admin, Some(source))
        .await;
    assert_eq!(status, 201, "{answer}");
    let whsec = answer["secret"].as_str().unwrap().to_owned();
    w.server.shutdown().await;

    let w = start_plain(&dir, &key, true).await;
    let reason = "the llm endpoint URL must be https://";
    let (status, check) = w.call("POST", "/v1/tenant/check", &admin, None).await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["ok"], false, "{check}");
    for kind in ["llm", "servicenow", "slack"] {
        let problem = check[kind]["problem"].as_str().unwrap_or_default();
        assert!(
            problem.contains(&format!("the {kind} endpoint URL must be https://")),
            "{check}"
        );
    }

    let now = steward_core::Clock::now_secs(&steward_core::SystemClock);
    let body = webhook::incident_event(fixtures::SYS_ID, fixtures::NUMBER, "Checkout fails");
    let d = Delivery::new(&whsec, now, body);
    let response = w
        .http
        .post(format!(
            "{}/v1/webhooks/us-acme/{}",
            w.server.url(),
            harness::SOURCE
        ))
        .header("content-type", "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", &d.timestamp)
        .header("webhook-signature", &d.signature)
        .body(d.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await.unwrap();
    let run = RunId::parse(answer["run_id"].as_str().unwrap()).unwrap();
    let scope = TenantScope::assume(TenantId::parse("us-acme").unwrap(), Authenticator::Operator);
    let record = eventually("the run to fail", || async {
        w.server
            .store
            .run(&scope, run)
            .await
            .unwrap()
            .filter(|r| r.state == states::FAILED)
    })
    .await;
    let why = record.last_error.unwrap_or_default();
    assert!(why.contains(reason), "{why}");
    assert!(
        llm_mock.requests().await.is_empty(),
        "a request reached the LLM"
    );
    assert!(
        servicenow.requests().await.is_empty(),
        "a request reached ServiceNow"
    );
    assert!(slack.requests().await.is_empty(), "a request reached Slack");
    w.server.shutdown().await;

    // A declared tenant with a plain-HTTP ServiceNow URL is refused at boot.
    let other = tempfile::tempdir().unwrap();
    let mut opts = ServeOptions::new(other.path().join("steward.db"), MasterKey::generate());
    opts.http.https_only = true;
    opts.tenants = vec![declared("us-globex", &servicenow.uri())];
    let err = boot::start(opts)
        .await
        .err()
        .expect("boot refuses the tenant");
    let text = format!("{err:#}");
    assert!(
        text.contains("tenant us-globex")
            && text.contains("the servicenow endpoint URL must be https://"),
        "{text}"
    );
}

fn declared(id: &str, servicenow_url: &str) -> boot::TenantSpec {
    use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings, TenantSettings};
    boot::TenantSpec {
        id: TenantId::parse(id).unwrap(),
        name: "Globex".into(),
        settings: TenantSettings {
            servicenow: ServiceNowSettings {
                instance_url: servicenow_url.to_owned(),
                grant: "password".into(),
                client_id: servicenow::CLIENT_ID.into(),
                username: Some(servicenow::USERNAME.into()),
            },
            slack: SlackSettings::new(
                "https://slack.com/api/".into(),
                "C0TLS000003".into(),
                vec![],
            ),
            llm: LlmConfig {
                provider: "openai".into(),
                base_url: "https://api.openai.com/v1/".into(),
                model: llm::MODEL.into(),
                temperature: 0.0,
                max_tokens: 256,
            },
            policy: None,
        },
        secrets: vec![],
        sources: vec![],
        api_token: None,
    }
}
