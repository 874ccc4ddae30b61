//! The accept loop: every connection is served by hyper's HTTP/1 connection builder, with the
//! limits `axum::serve` does not expose (how long the request head may take, how large it may be,
//! how many header fields it may carry), and with its peer address for the rate limits. With TLS
//! ([`serve_tls`]) each connection first completes its handshake, in its own task and within the
//! handshake timeout, so a client that sends garbage or stalls holds up no other; a request that
//! arrived over that TLS carries `X-Forwarded-Proto: https` (whatever the client sent), which is
//! what the rest of the server reads to know its client used TLS. Shutdown stops accepting,
//! drops handshakes under way, lets in-flight requests finish and closes idle connections.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::HeaderValue;
use axum::http::header::HeaderName;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use steward_api::ServerLimits;
use tokio::net::{TcpListener, TcpStream};
use tower::Layer as _;
use tracing::{debug, error};

use crate::tls::TlsListener;

/// The connection builder for `limits`.
fn builder(limits: &ServerLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
}

/// Serves `app` over plain HTTP on `listener` until `shutdown` completes, then waits for open
/// connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run(listener, app, limits, None, shutdown).await
}

/// Serves `app` over TLS on `listener` with the pair `tls` serves (and swaps) until `shutdown`
/// completes, then waits for open connections.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    tls: &TlsListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run(listener, app, limits, Some(tls), shutdown).await
}

async fn run(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    tls: Option<&TlsListener>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = builder(limits);
    let graceful = GracefulShutdown::new();
    // Tells handshakes under way that the server is shutting down.
    let (closing, _) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    error!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(axum::Extension(ConnectInfo(peer)).layer(app.clone()));
        let Some(tls) = tls else {
            let connection =
                graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(%peer, error = %e, "A connection ended with an error.");
                }
            });
            continue;
        };
        let handshake = Handshake {
            acceptor: tls.acceptor.clone(),
            timeout: tls.handshake_timeout,
            closing: closing.subscribe(),
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let Some(stream) = handshake.run(stream, peer).await else {
                return;
            };
            let service = hyper::service::service_fn(move |mut request| {
                request
                    .headers_mut()
                    .insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
                hyper::service::Service::call(&service, request)
            });
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "A TLS connection ended with an error.");
            }
        });
    }
    drop(listener);
    drop(closing);
    graceful.shutdown().await;
    Ok(())
}

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// One connection's TLS handshake, bounded in time and dropped at shutdown.
struct Handshake {
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    closing: tokio::sync::watch::Receiver<()>,
}

impl Handshake {
    async fn run(
        mut self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let accept = tokio::time::timeout(self.timeout, self.acceptor.accept(stream));
        tokio::select! {
            accepted = accept => match accepted {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "A TLS handshake failed.");
                    None
                }
                Err(_) => {
                    debug!(%peer, "A TLS handshake took too long; the connection is closed.");
                    None
                }
            },
            _ = self.closing.changed() => None,
        }
    }
}

/// Errors of one connection that the listener survives.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    async fn start(limits: ServerLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            serve(listener, app, &limits, async move {
                let _ = rx.await;
            })
            .await
        });
        (addr, tx)
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server answers and closes")
            .ok();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address_and_heads_over_the_limits_are_431() {
        let limits = ServerLimits {
            max_header_bytes: 2048,
            max_headers: 8,
            ..ServerLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let ok = exchange(
            addr,
            b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("127.0.0.1"), "{ok}");

        let big = format!(
            "GET /peer HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(4096)
        );
        let refused = exchange(addr, big.as_bytes()).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");

        let mut many = String::from("GET /peer HTTP/1.1\r\nhost: x\r\n");
        for i in 0..20 {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let refused = exchange(addr, many.as_bytes()).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    }

    /// A TLS server over a fresh self-signed pair for `localhost`, and a client trusting it.
    async fn start_tls(
        limits: ServerLimits,
    ) -> (SocketAddr, tokio_rustls::TlsConnector, tempfile::TempDir) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = crate::tls::TlsOptions::new(dir.path().join("c"), dir.path().join("k"));
        std::fs::write(&options.cert_file, cert.pem()).unwrap();
        std::fs::write(&options.key_file, key.serialize_pem()).unwrap();
        let tls = crate::tls::ServerTls::new(options).unwrap().listener();
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/proto",
            get(|headers: axum::http::HeaderMap| async move {
                let values: Vec<String> = headers
                    .get_all("x-forwarded-proto")
                    .iter()
                    .map(|v| v.to_str().unwrap_or("?").to_owned())
                    .collect();
                values.join(",")
            }),
        );
        tokio::spawn(async move {
            serve_tls(listener, app, &limits, &tls, std::future::pending()).await
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            addr,
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            dir,
        )
    }

    async fn exchange_tls(
        addr: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
        request: &[u8],
    ) -> String {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server answers and closes")
            .ok();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn over_tls_the_forwarded_proto_is_https_and_the_head_limits_hold() {
        let limits = ServerLimits {
            max_header_bytes: 2048,
            ..ServerLimits::default()
        };
        let (addr, connector, _dir) = start_tls(limits).await;
        let claimed = exchange_tls(
            addr,
            &connector,
            b"GET /proto HTTP/1.1\r\nhost: x\r\nx-forwarded-proto: http\r\n\
              x-forwarded-proto: ftp\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(claimed.starts_with("HTTP/1.1 200"), "{claimed}");
        assert!(claimed.ends_with("\r\n\r\nhttps"), "{claimed}");
        let big = format!(
            "GET /proto HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(4096)
        );
        let refused = exchange_tls(addr, &connector, big.as_bytes()).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_ends_the_loop() {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let task = tokio::spawn(async move {
            serve(listener, app, &ServerLimits::default(), async move {
                let _ = rx.await;
            })
            .await
        });
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        idle.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("shutdown does not wait for an idle keep-alive connection")
            .unwrap()
            .unwrap();
    }
}
