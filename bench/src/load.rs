//! An HTTP/1.1 keep-alive load generator: a pool of connections, each carrying one request at
//! a time, paced either open-loop (request `i` is due at `start + i / rate`, and its latency is
//! counted from that due time, so a slow server cannot hide its queue by slowing the sender) or
//! closed-loop (each connection sends its next request as soon as the last one is answered).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::latency::Latency;

/// The request body type the generator sends.
pub(crate) type Body = Full<Bytes>;

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a load run sends and how it hears the answers.
pub(crate) trait Workload: Send + Sync + 'static {
    /// The `i`-th request of the run (origin-form URI, `host` header set).
    fn request(&self, i: u64) -> Request<Body>;

    /// Called with each answer as it arrives.
    fn answered(&self, _i: u64, _status: StatusCode, _body: &[u8], _at: Instant) {}
}

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// A fixed rate per second, whatever the answers do.
    Open { rate: f64 },
    /// As fast as the connections are answered.
    Closed,
}

/// One load run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The server.
    pub(crate) addr: SocketAddr,
    /// Connections in the pool.
    pub(crate) connections: usize,
    /// How long requests are sent.
    pub(crate) window: Duration,
    /// Pacing.
    pub(crate) pace: Pace,
    /// Stop after this many requests even if the window is still open.
    pub(crate) max_requests: Option<u64>,
}

/// What a load run saw.
pub(crate) struct Report {
    /// Requests answered, by status.
    pub(crate) statuses: BTreeMap<u16, u64>,
    /// Requests that failed at the transport (connection reset, timeout).
    pub(crate) errors: u64,
    /// Open loop: requests still waiting for a free connection when the window closed.
    pub(crate) unsent: u64,
    /// From the due time to the answer (open loop); the same as `service` when closed.
    pub(crate) from_due: Latency,
    /// From the moment the request was written to the answer.
    pub(crate) service: Latency,
    /// From the start of the run to the last answer.
    pub(crate) elapsed: Duration,
}

impl Report {
    /// Answers with status `status`.
    pub(crate) fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Successful (2xx) answers per second of the run.
    pub(crate) fn throughput(&self) -> f64 {
        let ok: u64 = self.statuses.range(200..300).map(|(_, n)| n).sum();
        ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        writeln!(
            f,
            "  answered {{{}}}, transport errors {}, unsent at window end {}, over {:.2} s",
            statuses.join(", "),
            self.errors,
            self.unsent,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  throughput: {:.0} accepted/s", self.throughput())?;
        writeln!(f, "  latency from due time: {}", self.from_due)?;
        write!(f, "  latency from send:     {}", self.service)
    }
}

/// Runs `plan` with `workload` and waits for every request sent to be answered.
pub(crate) async fn run(plan: &Plan, workload: Arc<dyn Workload>) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        start: Instant::now(),
        plan: plan.clone(),
        workload,
    });
    let mut tasks = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections.max(1) {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move { worker(&shared).await }));
    }
    let mut total = WorkerStats::new();
    for task in tasks {
        total.merge(task.await.context("a load worker panicked")??);
    }
    Ok(Report {
        statuses: total.statuses,
        errors: total.errors,
        unsent: total.unsent,
        from_due: total.from_due,
        service: total.service,
        elapsed: total.last_answer.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(shared.start)
        }),
    })
}

struct Shared {
    next: AtomicU64,
    start: Instant,
    plan: Plan,
    workload: Arc<dyn Workload>,
}

impl Shared {
    /// The index and due time of the next request, or None when the run is over.
    fn claim(&self) -> Option<(u64, Instant)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if self.plan.max_requests.is_some_and(|max| i >= max) {
            return None;
        }
        let end = self.start + self.plan.window;
        match self.plan.pace {
            Pace::Open { rate } => {
                let due = self.start + Duration::from_secs_f64(i as f64 / rate);
                (due < end).then_some((i, due))
            }
            Pace::Closed => {
                let now = Instant::now();
                (now < end).then_some((i, now))
            }
        }
    }
}

struct WorkerStats {
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    unsent: u64,
    from_due: Latency,
    service: Latency,
    last_answer: Option<Instant>,
}

impl WorkerStats {
    fn new() -> Self {
        Self {
            statuses: BTreeMap::new(),
            errors: 0,
            unsent: 0,
            from_due: Latency::new(),
            service: Latency::new(),
            last_answer: None,
        }
    }

    fn merge(&mut self, other: WorkerStats) {
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        self.unsent += other.unsent;
        self.from_due.merge(&other.from_due);
        self.service.merge(&other.service);
        self.last_answer = self.last_answer.max(other.last_answer);
    }
}

/// One connection's loop: claim a request, wait for its due time, send, record.
async fn worker(shared: &Shared) -> anyhow::Result<WorkerStats> {
    let mut stats = WorkerStats::new();
    let mut conn: Option<SendRequest<Body>> = None;
    let end = shared.start + shared.plan.window;
    while let Some((i, due)) = shared.claim() {
        if Instant::now() >= end {
            // Due inside the window but never sent: the server held every connection. Its
            // wait so far is a lower bound of the latency it would have seen.
            stats.unsent += 1;
            stats.from_due.record(end.saturating_duration_since(due));
            continue;
        }
        tokio::time::sleep_until(due.into()).await;
        let sender = match conn.as_mut() {
            Some(sender) => sender,
            None => conn.insert(connect(shared.plan.addr).await?),
        };
        let sent = Instant::now();
        let request = shared.workload.request(i);
        match tokio::time::timeout(REQUEST_TIMEOUT, send(sender, request)).await {
            Ok(Ok((status, body))) => {
                let at = Instant::now();
                shared.workload.answered(i, status, &body, at);
                *stats.statuses.entry(status.as_u16()).or_default() += 1;
                stats.service.record(at - sent);
                stats.from_due.record(at.saturating_duration_since(due));
                stats.last_answer = Some(at);
            }
            Ok(Err(_)) | Err(_) => {
                stats.errors += 1;
                conn = None;
            }
        }
    }
    Ok(stats)
}

/// A new keep-alive HTTP/1.1 connection.
async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Body>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the server or the generator closes the connection.
        let _ = connection.await;
    });
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Body>,
    request: Request<Body>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
