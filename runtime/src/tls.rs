//! Server TLS: the certificate chain and private key Steward serves, read from PEM files, and
//! swapped in without a restart. The files are read again every `reload_every` (and on
//! `SIGHUP`); when their bytes changed, the new pair is loaded and checked (PEM that parses, a
//! key that matches the first certificate) and replaces the served one atomically: handshakes
//! already under way finish with the pair they started with. A new pair that does not load is
//! logged once and the pair in use stays. TLS 1.2 and 1.3 only; ALPN offers `http/1.1`, the
//! only protocol the server speaks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use steward_actors::Metrics;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

/// The largest certificate or key file read, in bytes; a larger file is refused.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Where the served pair is read from, and the timings of the TLS listener.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The PEM certificate chain, the server's own certificate first.
    pub cert_file: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key_file: PathBuf,
    /// How often the files are read to notice a new pair.
    pub reload_every: Duration,
    /// How long a client may take from connecting to finishing its handshake; then the
    /// connection is closed.
    pub handshake_timeout: Duration,
}

impl TlsOptions {
    /// Defaults for a pair of files: read every 5 s, 10 s for a handshake.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            reload_every: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A certificate chain and key that loaded, with what the logs and metrics need of it.
#[derive(Debug, Clone)]
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    /// The first certificate's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The first certificate's subject and serial number, for the logs.
    pub subject: String,
    pub serial: String,
    /// SHA-256 over both files' bytes: what the reloader compares.
    digest: [u8; 32],
}

/// Reads a file of at most [`MAX_PEM_BYTES`].
fn read_bounded(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "the TLS {what} {} is larger than {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((cert.len() as u64).to_be_bytes());
    hash.update(cert);
    hash.update(key);
    hash.finalize().into()
}

/// Parses a PEM chain and key and checks that they belong together. Errors name the file and
/// what is wrong with it, never key material.
pub fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<LoadedPair, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate file {cert_name} is not valid PEM: {e}"))?;
    let Some(first) = chain.first() else {
        return Err(format!(
            "the TLS certificate file {cert_name} holds no CERTIFICATE block"
        ));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(first).map_err(|e| {
        format!("the first certificate in {cert_name} is not an X.509 certificate: {e}")
    })?;
    let not_after = parsed.validity().not_after.timestamp();
    let subject = parsed.subject().to_string();
    let serial = parsed.raw_serial_as_string();
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        format!("the TLS key file {key_name} holds no usable private key in PEM: {e}")
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("the TLS key in {key_name} does not fit {cert_name}: {e}"))?;
    Ok(LoadedPair {
        key: Arc::new(certified),
        not_after,
        subject,
        serial,
        digest: digest(cert_pem, key_pem),
    })
}

/// Reads and checks the pair `options` names.
pub fn load_pair(options: &TlsOptions) -> Result<LoadedPair, String> {
    let cert = read_bounded(&options.cert_file, "certificate file")?;
    let key = read_bounded(&options.key_file, "key file")?;
    parse_pair(
        &cert,
        &key,
        &options.cert_file.display().to_string(),
        &options.key_file.display().to_string(),
    )
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The served pair, swapped whole; every handshake reads the one current at its start.
#[derive(Debug)]
pub struct ServedCert {
    current: RwLock<LoadedPair>,
}

impl ServedCert {
    pub fn new(pair: LoadedPair) -> Self {
        Self {
            current: RwLock::new(pair),
        }
    }

    /// The pair handshakes get now.
    pub fn current(&self) -> LoadedPair {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, pair: LoadedPair) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = pair;
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key
                .clone(),
        )
    }
}

/// What one look at the files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files hold the pair already served (or the one refused last time).
    Unchanged,
    /// A new pair is served; its `notAfter`.
    Swapped { not_after: i64 },
    /// The files changed but do not load; the served pair stays.
    Refused(String),
}

/// The accept loop's part of server TLS.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: TlsAcceptor,
    /// How long a client may take from connecting to finishing its handshake.
    pub handshake_timeout: Duration,
}

/// Server TLS: the acceptor over the served pair, and what reloads that pair.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    served: Arc<ServedCert>,
    options: TlsOptions,
    metrics: Option<Metrics>,
    /// The digest of the files last looked at, loaded or refused: a broken pair is reported
    /// once, not at every poll.
    last_seen: [u8; 32],
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the pair `options` names (an error names the file and the problem) and builds the
    /// server configuration over it.
    pub fn new(options: TlsOptions) -> Result<Self, String> {
        let pair = load_pair(&options)?;
        let last_seen = pair.digest;
        log_served(&pair, "Serving TLS.");
        let served = Arc::new(ServedCert::new(pair));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("building the TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(served.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            served,
            options,
            metrics: None,
            last_seen,
        })
    }

    /// Reports the served certificate's `notAfter` in `metrics`, now and at each swap.
    pub fn report_to(&mut self, metrics: Metrics) {
        metrics.set_tls_expiry(self.served.current().not_after);
        self.metrics = Some(metrics);
    }

    /// What the accept loop needs: the acceptor over the served pair and the handshake timeout.
    pub fn listener(&self) -> TlsListener {
        TlsListener {
            acceptor: self.acceptor.clone(),
            handshake_timeout: self.options.handshake_timeout,
        }
    }

    /// The served pair.
    pub fn served(&self) -> Arc<ServedCert> {
        self.served.clone()
    }

    /// Reads the files; serves the pair they hold if it changed and loads. `forced` (a
    /// `SIGHUP`) reports a broken pair again even if it was reported before.
    pub fn poll(&mut self, forced: bool) -> Reload {
        let files = read_bounded(&self.options.cert_file, "certificate file").and_then(|cert| {
            read_bounded(&self.options.key_file, "key file").map(|key| (cert, key))
        });
        let (cert, key) = match files {
            Ok(files) => files,
            Err(why) => {
                // A file being replaced can be missing for a moment; report it once.
                let seen = digest(why.as_bytes(), b"unreadable");
                if forced || seen != self.last_seen {
                    self.last_seen = seen;
                    error!(reason = %why, "The new TLS certificate was refused; the served one stays.");
                    return Reload::Refused(why);
                }
                return Reload::Unchanged;
            }
        };
        let seen = digest(&cert, &key);
        if seen == self.served.current().digest || (!forced && seen == self.last_seen) {
            self.last_seen = seen;
            return Reload::Unchanged;
        }
        self.last_seen = seen;
        let cert_name = self.options.cert_file.display().to_string();
        let key_name = self.options.key_file.display().to_string();
        match parse_pair(&cert, &key, &cert_name, &key_name) {
            Ok(pair) => {
                let not_after = pair.not_after;
                log_served(&pair, "Serving a new TLS certificate.");
                self.served.replace(pair);
                if let Some(metrics) = &self.metrics {
                    metrics.set_tls_expiry(not_after);
                }
                Reload::Swapped { not_after }
            }
            Err(why) => {
                error!(reason = %why, "The new TLS certificate was refused; the served one stays.");
                Reload::Refused(why)
            }
        }
    }
}

fn log_served(pair: &LoadedPair, message: &'static str) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if pair.not_after <= now {
        warn!(subject = %pair.subject, serial = %pair.serial, not_after = pair.not_after,
            "The served TLS certificate has expired.");
    }
    info!(subject = %pair.subject, serial = %pair.serial, not_after = pair.not_after, "{message}");
}

/// Looks at the files every `reload_every` and on each `SIGHUP`, until aborted. The signal is
/// watched from before this returns, so a `SIGHUP` sent once the server is up never takes the
/// default action (ending the process).
pub fn spawn_reloader(mut tls: ServerTls) -> JoinHandle<()> {
    let mut hangup = hangups();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(tls.options.reload_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = next_hangup(&mut hangup) => true,
            };
            if forced {
                info!("SIGHUP: reading the TLS certificate files again.");
            }
            tls.poll(forced);
        }
    })
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            warn!(error = %e, "SIGHUP cannot be watched; TLS files are still polled.");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {
    None
}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangups) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_hangup: &mut Hangups) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn pair(cn: &str, serial: u64) -> Pair {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn write(dir: &tempfile::TempDir, p: &Pair) -> TlsOptions {
        let options = TlsOptions::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&options.cert_file, &p.cert).unwrap();
        std::fs::write(&options.key_file, &p.key).unwrap();
        options
    }

    fn install() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    #[test]
    fn a_good_pair_loads_with_its_expiry_and_subject() {
        let p = pair("steward-one", 7);
        let loaded = parse_pair(p.cert.as_bytes(), p.key.as_bytes(), "c", "k").unwrap();
        assert!(loaded.subject.contains("steward-one"), "{}", loaded.subject);
        assert_eq!(loaded.serial, "07");
        // rcgen's default validity ends in 4096.
        assert!(loaded.not_after > 4_000_000_000, "{}", loaded.not_after);
    }

    #[test]
    fn broken_pairs_are_refused_with_the_file_and_the_reason() {
        let p = pair("a", 1);
        let other = pair("b", 2);
        let cases: [(&[u8], &[u8], &str); 6] = [
            (b"", p.key.as_bytes(), "holds no CERTIFICATE"),
            (
                b"garbage \x00\xff",
                p.key.as_bytes(),
                "holds no CERTIFICATE",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                p.key.as_bytes(),
                "not an X.509 certificate",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                p.key.as_bytes(),
                "not valid PEM",
            ),
            (p.cert.as_bytes(), b"", "no usable private key"),
            (p.cert.as_bytes(), other.key.as_bytes(), "does not fit"),
        ];
        for (cert, key, want) in cases {
            let err = parse_pair(cert, key, "cert.pem", "key.pem").unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains("PRIVATE KEY-----"), "{err}");
        }
    }

    #[test]
    fn oversized_and_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM_BYTES as usize + 1]).unwrap();
        let err = read_bounded(&big, "certificate file").unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let err = read_bounded(&dir.path().join("none"), "key file").unwrap_err();
        assert!(err.contains("cannot read the TLS key file"), "{err}");
    }

    #[tokio::test]
    async fn polling_swaps_a_new_pair_and_keeps_the_old_one_over_a_broken_one() {
        install();
        let dir = tempfile::tempdir().unwrap();
        let first = pair("first", 1);
        let options = write(&dir, &first);
        let mut tls = ServerTls::new(options.clone()).unwrap();
        tls.report_to(Metrics::new());
        let served = tls.served();
        assert_eq!(tls.poll(false), Reload::Unchanged);
        assert_eq!(served.current().serial, "01");

        let second = pair("second", 2);
        write(&dir, &second);
        let Reload::Swapped { not_after } = tls.poll(false) else {
            panic!("the new pair is served");
        };
        assert_eq!(served.current().serial, "02");
        assert!(served.current().subject.contains("second"));
        assert_eq!(not_after, served.current().not_after);
        assert_eq!(tls.poll(false), Reload::Unchanged);

        // A certificate without its key (half of a replacement) and garbage: refused once each.
        std::fs::write(&options.cert_file, pair("third", 3).cert).unwrap();
        assert!(matches!(tls.poll(false), Reload::Refused(why) if why.contains("does not fit")));
        assert_eq!(tls.poll(false), Reload::Unchanged);
        std::fs::write(&options.cert_file, b"not a certificate").unwrap();
        assert!(matches!(tls.poll(false), Reload::Refused(_)));
        assert_eq!(tls.poll(false), Reload::Unchanged);
        assert!(
            matches!(tls.poll(true), Reload::Refused(_)),
            "SIGHUP reports it again"
        );
        std::fs::remove_file(&options.key_file).unwrap();
        assert!(matches!(tls.poll(false), Reload::Refused(why) if why.contains("cannot read")));
        assert_eq!(served.current().serial, "02");

        // Putting the served pair back changes nothing; a good new one is taken.
        write(&dir, &second);
        assert_eq!(tls.poll(false), Reload::Unchanged);
        write(&dir, &first);
        assert!(matches!(tls.poll(false), Reload::Swapped { .. }));
        assert_eq!(served.current().serial, "01");
    }

    #[test]
    fn a_server_without_a_loadable_pair_does_not_start() {
        install();
        let dir = tempfile::tempdir().unwrap();
        let options = TlsOptions::new(dir.path().join("none.crt"), dir.path().join("none.key"));
        let err = ServerTls::new(options).unwrap_err();
        assert!(err.contains("none.crt"), "{err}");
    }
}
