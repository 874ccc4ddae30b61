//! Steward's real server (`boot::start`) in this process, on a Tokio runtime of its own so that
//! its worker threads are apart from the load generator's and show up under their own name.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use steward_persistence::Store;
use steward_runtime::boot::{self, ServeOptions, Server};
use tokio::runtime::Runtime;

/// The name of the server runtime's threads.
pub(crate) const THREAD_NAME: &str = "steward-srv";

/// A running Steward server and the runtime it runs on.
pub(crate) struct Hosted {
    runtime: Option<Runtime>,
    server: Option<Server>,
    addr: SocketAddr,
    store: Store,
}

impl Hosted {
    /// Boots Steward with `opts` on a runtime of `threads` worker threads.
    pub(crate) async fn start(opts: ServeOptions, threads: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()
            .context("building the server runtime")?;
        // The boot future is built and driven on a thread of its own inside the server's
        // runtime, so it never has to move between threads.
        let handle = runtime.handle().clone();
        let server = tokio::task::spawn_blocking(move || handle.block_on(boot::start(opts)))
            .await
            .context("the boot thread panicked")??;
        Ok(Self {
            addr: server.addr,
            store: server.store.clone(),
            server: Some(server),
            runtime: Some(runtime),
        })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `fut` on the server's runtime (store calls belong there) and returns its output.
    pub(crate) async fn on_server<T, F>(&self, fut: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().context("the server is stopped")?;
        runtime
            .spawn(fut)
            .await
            .context("a task on the server runtime panicked")
    }

    /// A handle to the server's runtime.
    pub(crate) fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }

    /// The server's store.
    pub(crate) fn store(&self) -> Store {
        self.store.clone()
    }

    /// Stops accepting, finishes in-flight requests, stops the actor system and the runtime.
    pub(crate) async fn stop(mut self) {
        if let (Some(runtime), Some(server)) = (self.runtime.as_ref(), self.server.take()) {
            let handle = runtime.handle().clone();
            let _ = tokio::task::spawn_blocking(move || handle.block_on(server.shutdown())).await;
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Hosted {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
