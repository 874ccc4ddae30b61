//! TLS on both sides of a test setup with a private CA: the stand-ins serving HTTPS with a leaf
//! certificate of that CA (`Standins::start_with`, `steward standins --tls-cert`), and outbound
//! clients that trust the CA only when told to (`HttpSettings::extra_roots`, read from
//! `[http] outbound_ca_file`), with a bad CA file stopping `steward serve` at startup.

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use steward_adapters::http::{HttpSettings, client, read_ca_file};
use steward_runtime::standins::{StandinTls, Standins};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

/// A CA, and a leaf for 127.0.0.1 it issued, written as `ca.pem`, `leaf.pem` and `leaf.key`.
/// Returns the CA file.
fn write_ca_and_leaf(dir: &Path, name: &str) -> PathBuf {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "stand-ins");
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&leaf_key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

async fn start_https(dir: &Path) -> Standins {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let tls = StandinTls {
        cert_file: dir.join("leaf.pem"),
        key_file: dir.join("leaf.key"),
        click_roots: Vec::new(),
    };
    Standins::start_with(Default::default(), any, any, any, Some(&tls))
        .await
        .unwrap()
}

/// One GET through an outbound client built from `settings`: the status, or the error chain.
async fn get(settings: &HttpSettings, url: &str) -> Result<u16, String> {
    let http = client(settings).unwrap();
    match http.get(url).send().await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) => Err(steward_adapters::http::error_chain(&e)),
    }
}

#[tokio::test]
async fn a_test_ca_is_trusted_outbound_only_when_configured() {
    steward_runtime::boot::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca_and_leaf(dir.path(), "exit gate");
    let standins = start_https(dir.path()).await;
    for url in [
        standins.servicenow_url(),
        standins.slack_api_url(),
        standins.llm_base_url(),
    ] {
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    }
    let models = format!("{}models", standins.llm_base_url());

    // The web roots alone do not know the test CA.
    let refused = get(&HttpSettings::default(), &models).await.unwrap_err();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");

    // Another CA's certificate does not help.
    let other = tempfile::tempdir().unwrap();
    let other_ca = write_ca_and_leaf(other.path(), "other");
    let settings = HttpSettings {
        extra_roots: read_ca_file(&other_ca).unwrap(),
        ..HttpSettings::default()
    };
    assert!(get(&settings, &models).await.is_err());

    // The CA that issued the stand-ins' certificate does; the stand-in answers (401: no key).
    let settings = HttpSettings {
        extra_roots: read_ca_file(&ca).unwrap(),
        ..HttpSettings::default()
    };
    assert_eq!(get(&settings, &models).await, Ok(401));

    // Plain HTTP to an HTTPS stand-in gets no answer.
    let plain = models.replace("https://", "http://");
    assert!(get(&HttpSettings::default(), &plain).await.is_err());
}

#[test]
fn steward_standins_serves_https_with_a_given_pair_and_announces_https_urls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca_and_leaf(dir.path(), "cli");
    let mut child = Command::new(STEWARD)
        .args([
            "standins",
            "--servicenow",
            "127.0.0.1:0",
            "--slack",
            "127.0.0.1:0",
        ])
        .args([
            "--llm",
            "127.0.0.1:0",
            "--tls-cert",
            "leaf.pem",
            "--tls-key",
            "leaf.key",
        ])
        .args(["--ca-file", ca.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let urls: serde_json::Value = serde_json::from_str(&line).unwrap();
    for key in ["servicenow", "slack_api", "llm"] {
        let url = urls[key].as_str().unwrap();
        assert!(url.starts_with("https://127.0.0.1:"), "{key}: {line}");
    }

    // --tls-cert without --tls-key is refused before anything is served.
    let out = Command::new(STEWARD)
        .args(["standins", "--tls-cert", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pair that does not load is named.
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let out = Command::new(STEWARD)
        .args([
            "standins",
            "--servicenow",
            "127.0.0.1:0",
            "--slack",
            "127.0.0.1:0",
        ])
        .args([
            "--llm",
            "127.0.0.1:0",
            "--tls-cert",
            "empty.pem",
            "--tls-key",
            "leaf.key",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty.pem"), "{err}");
}

#[test]
fn a_bad_outbound_ca_file_stops_serve_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.path().join("ca.pem"), "no certificate here").unwrap();
    let config = format!(
        "profile = \"dev\"\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"steward.db\"\n\
         [http]\noutbound_ca_file = \"ca.pem\"\n"
    );
    std::fs::write(dir.path().join("steward.toml"), config).unwrap();
    let mut child = Command::new(STEWARD)
        .args(["serve", "--config", "steward.toml"])
        .current_dir(dir.path())
        .env_remove("STEWARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("steward serve started with a CA file holding no certificate");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("http.outbound_ca_file") && err.contains("no PEM CERTIFICATE block"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_trust_the_ca_of_steward_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca_and_leaf(dir.path(), "operator");
    let standins = start_https(dir.path()).await;
    std::fs::write(
        dir.path().join("whsec"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .unwrap();
    std::fs::write(dir.path().join("body.json"), "{\"sys_id\": \"x\"}").unwrap();
    let send = |ca_file: Option<&Path>| {
        let mut command = Command::new(STEWARD);
        command
            .args(["webhooks", "send", "--url", &standins.servicenow_url()])
            .args([
                "--tenant",
                "us-ca",
                "--secret-file",
                "whsec",
                "--body-file",
                "body.json",
            ])
            .current_dir(dir.path())
            .env_remove("STEWARD_CA_FILE");
        if let Some(path) = ca_file {
            command.env("STEWARD_CA_FILE", path);
        }
        async move {
            tokio::task::spawn_blocking(move || command.output().unwrap())
                .await
                .unwrap()
        }
    };
    // Without the CA the handshake fails: nothing is answered.
    let out = send(None).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("reaching Steward"),
        "{err}"
    );
    // With it, the ServiceNow stand-in answers (400: it has no such resource), and the status
    // is printed.
    let out = send(Some(&ca)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("400 "),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A variable naming a file without certificates is refused by name.
    std::fs::write(dir.path().join("bad.pem"), "nothing").unwrap();
    let out = send(Some(&dir.path().join("bad.pem"))).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("STEWARD_CA_FILE") && err.contains("bad.pem"),
        "{err}"
    );
}
