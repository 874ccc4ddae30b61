//! A server that accepts connections and never answers, so that calls to it stay open: pointed
//! at as a tenant's LLM, it keeps every run actor alive, waiting for its triage.

use anyhow::Context as _;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A running hold server; dropping it closes every connection.
pub(crate) struct Hold {
    url: String,
    task: JoinHandle<()>,
}

impl Hold {
    /// Starts on a free loopback port.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the hold server")?;
        let url = format!("http://{}/v1/", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let mut held = JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                held.spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        Ok(Self { url, task })
    }

    /// Its base URL, `http://127.0.0.1:PORT/v1/`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.task.abort();
    }
}
