//! The two kinds of child process a scenario starts: the stand-ins (`steward standins`), which
//! live for the whole scenario, and Steward itself (`steward serve`), which the scenario kills
//! with SIGKILL and starts again on the same database. Each child is stopped by its own handle,
//! by pid, when the handle is dropped.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::binary::steward_binary;

/// How long a child may take to come up.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The stand-in URLs `steward standins` prints on its first line.
#[derive(Debug, Clone)]
pub struct StandinUrls {
    /// ServiceNow instance base, `http://127.0.0.1:PORT`.
    pub servicenow: String,
    /// Slack Web API base, `http://127.0.0.1:PORT/api/`.
    pub slack_api: String,
    /// OpenAI-compatible base, `http://127.0.0.1:PORT/v1/`.
    pub llm: String,
}

impl StandinUrls {
    /// The server root of the Slack stand-in (its API base without `/api/`).
    pub fn slack_root(&self) -> &str {
        self.slack_api
            .trim_end_matches('/')
            .trim_end_matches("/api")
    }

    /// The server root of the LLM stand-in (its base without `/v1/`).
    pub fn llm_root(&self) -> &str {
        self.llm.trim_end_matches('/').trim_end_matches("/v1")
    }
}

/// A running `steward standins` process on free loopback ports.
#[derive(Debug)]
pub struct StandinsProcess {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    /// Where its servers listen.
    pub urls: StandinUrls,
}

impl StandinsProcess {
    /// Starts the stand-ins, logging to `log`, and reads their URLs.
    pub fn start(log: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(steward_binary()?)
            .args(["standins", "--servicenow", "127.0.0.1:0"])
            .args(["--slack", "127.0.0.1:0", "--llm", "127.0.0.1:0"])
            .env("STEWARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(log)?)
            .spawn()
            .context("could not start steward standins")?;
        let stdout = child
            .stdout
            .take()
            .context("the stand-ins have no stdout")?;
        match read_urls(stdout) {
            Ok((urls, stdout)) => Ok(Self {
                child,
                _stdout: stdout,
                urls,
            }),
            Err(error) => {
                stop(&mut child);
                Err(error)
            }
        }
    }
}

impl Drop for StandinsProcess {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Reads the first stdout line within [`START_PATIENCE`], on a helper thread so a silent
/// child cannot hang the test.
fn read_urls(stdout: ChildStdout) -> anyhow::Result<(StandinUrls, BufReader<ChildStdout>)> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line).map(|_| line);
        let _ = send.send((read, reader));
    });
    let (line, reader) = receive
        .recv_timeout(START_PATIENCE)
        .context("the stand-ins printed no URL line in time")?;
    let line = line.context("could not read the stand-ins' URL line")?;
    let value: Value = serde_json::from_str(line.trim())
        .with_context(|| format!("the stand-ins' URL line is not JSON: {line:?}"))?;
    let field = |name: &str| {
        value[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the URL line has no {name}: {line:?}"))
    };
    let urls = StandinUrls {
        servicenow: field("servicenow")?,
        slack_api: field("slack_api")?,
        llm: field("llm")?,
    };
    Ok((urls, reader))
}

/// A running `steward serve`.
#[derive(Debug)]
pub struct StewardProcess {
    child: Child,
}

impl StewardProcess {
    /// Starts `steward serve --config <config>` in the config's folder, logging to `log`,
    /// and waits until `url` answers `/readyz` with 200.
    pub async fn start(config: &Path, log: &Path, url: &str) -> anyhow::Result<Self> {
        let folder = config.parent().context("the config file has no folder")?;
        let child = Command::new(steward_binary()?)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(folder)
            .env("STEWARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(log)?)
            .spawn()
            .context("could not start steward serve")?;
        let mut process = Self { child };
        process.wait_ready(url).await?;
        Ok(process)
    }

    async fn wait_ready(&mut self, url: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START_PATIENCE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("steward serve exited before it was ready: {status}");
            }
            let ready = http.get(format!("{url}/readyz")).send().await;
            if ready.is_ok_and(|response| response.status() == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("steward serve was not ready within {START_PATIENCE:?}")
    }

    /// Sends SIGKILL to this process (by its pid) and reaps it.
    pub fn kill(mut self) {
        stop(&mut self.child);
    }

    /// Sends SIGTERM to this process (by its pid), as an orchestrator does to stop a pod, and
    /// waits up to `patience` for it to exit; SIGKILL after that. Returns whether it exited
    /// by itself, successfully.
    pub fn terminate(mut self, patience: Duration) -> anyhow::Result<bool> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("could not run kill")?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop(&mut self.child);
        Ok(false)
    }
}

impl Drop for StewardProcess {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGKILLs a child by its pid (what `Child::kill` sends on Unix) and reaps it.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn log_file(path: &Path) -> anyhow::Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("could not open the log {}", path.display()))
}
