//! The accept loop: every connection is served by hyper's HTTP/1 connection builder, with the
//! limits `axum::serve` does not expose (how long the request head may take, how large it may be,
//! how many header fields it may carry), and with its peer address for the rate limits. Shutdown
//! stops accepting, lets in-flight requests finish and closes idle connections.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use steward_api::ServerLimits;
use tokio::net::TcpListener;
use tower::Layer as _;
use tracing::{debug, error};

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

/// Serves `app` on `listener` until `shutdown` completes, then waits for open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = builder(limits);
    let graceful = GracefulShutdown::new();
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
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "A connection ended with an error.");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
