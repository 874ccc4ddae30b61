//! Steward in a child process: this same binary's hidden `serve` subcommand boots the real
//! server (`boot::start`) with the benchmark's tenants and prints one `ready` line. The parent
//! drives it over loopback, reads its resident memory from `/proc`, and ends it either cleanly
//! (closing its standard input) or with SIGKILL. The child also ends when its standard input
//! closes because the parent died, so it never outlives a benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::machine::resident_bytes;
use crate::tenants::{self, Endpoints};

/// How long a child may take to boot.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// The longest a child serves, whatever its parent does.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// How to start a child server.
#[derive(Debug, Clone)]
pub(crate) struct ChildPlan {
    pub(crate) database: PathBuf,
    pub(crate) tenants: usize,
    pub(crate) endpoints: Endpoints,
    pub(crate) synchronous_full: bool,
    /// Overrides how long one outside call may take (for holding calls open on purpose).
    pub(crate) call_timeout: Option<Duration>,
    /// Overrides the cap on live run actors.
    pub(crate) max_live_actors: Option<usize>,
}

/// A running child server.
pub(crate) struct ChildServer {
    process: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    addr: SocketAddr,
    ready_after: Duration,
    boot: Duration,
}

impl ChildServer {
    /// Starts a child and waits for its `ready` line.
    pub(crate) async fn spawn(plan: &ChildPlan) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this benchmark's binary")?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg("--database")
            .arg(&plan.database)
            .args(["--tenants", &plan.tenants.to_string()])
            .args(["--servicenow", &plan.endpoints.servicenow])
            .args(["--slack-api", &plan.endpoints.slack_api])
            .args(["--llm", &plan.endpoints.llm])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if !plan.synchronous_full {
            command.arg("--synchronous-normal");
        }
        if let Some(t) = plan.call_timeout {
            command.args(["--call-timeout-secs", &t.as_secs().to_string()]);
        }
        if let Some(max) = plan.max_live_actors.or(crate::tenants::max_live_actors()) {
            command.args(["--max-live-actors", &max.to_string()]);
        }
        let started = Instant::now();
        let mut process = command.spawn().context("starting the child server")?;
        let pid = process.id().context("the child has no pid")?;
        let stdout = process.stdout.take().context("the child has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(BOOT_LIMIT, lines.next_line())
            .await
            .context("the child did not boot in time")??
            .context("the child ended before it was ready")?;
        let (addr, boot) = parse_ready(&line)?;
        Ok(Self {
            stdin: process.stdin.take(),
            process,
            pid,
            addr,
            ready_after: started.elapsed(),
            boot,
        })
    }

    /// The child's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From spawning the process to its `ready` line.
    pub(crate) fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The child's own time from its start to `boot::start` returning (resume included).
    pub(crate) fn boot(&self) -> Duration {
        self.boot
    }

    /// The child's resident memory in bytes.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        resident_bytes(self.pid)
    }

    /// The child's peak resident set since it started.
    pub(crate) fn peak_rss(&self) -> anyhow::Result<u64> {
        crate::machine::peak_resident_bytes(self.pid)
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Ends the child with SIGKILL, as a crash would, and reaps it.
    pub(crate) async fn kill(mut self) -> anyhow::Result<()> {
        self.process
            .kill()
            .await
            .context("killing the child server")
    }

    /// Asks the child to shut down (its standard input closes) and waits; kills it if it
    /// takes longer than 30 s.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.shutdown().await;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.process.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => self.kill().await,
        }
    }
}

/// Reads `ready addr=127.0.0.1:PORT boot_ms=12.3`.
fn parse_ready(line: &str) -> anyhow::Result<(SocketAddr, Duration)> {
    let mut words = line.split_whitespace();
    if words.next() != Some("ready") {
        bail!("the child said {line:?} instead of its ready line");
    }
    let mut addr = None;
    let mut boot = None;
    for word in words {
        match word.split_once('=') {
            Some(("addr", v)) => addr = v.parse::<SocketAddr>().ok(),
            Some(("boot_ms", v)) => {
                boot = v
                    .parse::<f64>()
                    .ok()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e9)
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0));
            }
            _ => {}
        }
    }
    match (addr, boot) {
        (Some(addr), Some(boot)) => Ok((addr, boot)),
        _ => bail!("the child's ready line {line:?} lacks a valid addr or boot_ms"),
    }
}

/// What the hidden `serve` subcommand is given.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeArgs {
    /// The SQLite file.
    #[arg(long)]
    pub(crate) database: PathBuf,
    /// How many benchmark tenants to declare.
    #[arg(long)]
    pub(crate) tenants: usize,
    /// ServiceNow base URL.
    #[arg(long)]
    pub(crate) servicenow: String,
    /// Slack Web API base URL.
    #[arg(long)]
    pub(crate) slack_api: String,
    /// LLM base URL.
    #[arg(long)]
    pub(crate) llm: String,
    /// SQLite synchronous=NORMAL instead of FULL.
    #[arg(long)]
    pub(crate) synchronous_normal: bool,
    /// How long one outside call may take, in seconds.
    #[arg(long)]
    pub(crate) call_timeout_secs: Option<u64>,
}

/// The child's side: boot, say `ready`, serve until standard input closes.
pub(crate) async fn serve(args: ServeArgs, started: Instant) -> anyhow::Result<()> {
    let endpoints = Endpoints {
        servicenow: args.servicenow,
        slack_api: args.slack_api,
        llm: args.llm,
    };
    let mut opts = tenants::serve_options(
        args.database,
        args.tenants,
        &endpoints,
        !args.synchronous_normal,
    )?;
    if let Some(secs) = args.call_timeout_secs {
        let timeout = Duration::from_secs(secs);
        opts.http.timeout = timeout;
        opts.actors.retry.call_timeout = timeout;
    }
    let server = steward_runtime::boot::start(opts).await?;
    println!(
        "ready addr={} boot_ms={:.1}",
        server.addr,
        started.elapsed().as_secs_f64() * 1000.0
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let _ = tokio::time::timeout(MAX_LIFETIME, wait_for_eof()).await;
    server.shutdown().await;
    Ok(())
}

async fn wait_for_eof() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_line_gives_the_address_and_boot_time() {
        let (addr, boot) = parse_ready("ready addr=127.0.0.1:4242 boot_ms=12.5").unwrap();
        assert_eq!(addr.port(), 4242);
        assert_eq!(boot, Duration::from_micros(12_500));
    }

    #[test]
    fn malformed_ready_lines_are_refused() {
        for line in [
            "",
            "steady addr=127.0.0.1:1 boot_ms=1",
            "ready",
            "ready addr=nowhere boot_ms=1",
            "ready addr=127.0.0.1:1 boot_ms=-3",
            "ready addr=127.0.0.1:1 boot_ms=NaN",
            "ready addr=127.0.0.1:1 boot_ms=1e300",
            "ready addr=127.0.0.1:1",
        ] {
            assert!(parse_ready(line).is_err(), "{line:?} was accepted");
        }
        assert!(parse_ready(&format!("ready {}", "x=".repeat(100_000))).is_err());
    }
}
