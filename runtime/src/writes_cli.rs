//! `steward writes pause|resume|status [--tenant T]`: the kill switch, through a running
//! server's API. Without `--tenant` it acts on the whole platform and presents the operator
//! token (`--token-file` or `STEWARD_OPS_TOKEN`); with `--tenant` it acts on that tenant and
//! presents the tenant's admin token (`--token-file` or `STEWARD_TOKEN`). Every change is
//! audited with who and why. Text from the server is printed with control characters escaped.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use url::Url;

use crate::api_client::{ApiClient, clean, read_token};

/// `steward writes …`.
#[derive(Debug, Subcommand)]
pub enum WritesCommand {
    /// Stop every write to ServiceNow at once: runs that reach their write wait, parked.
    Pause {
        #[command(flatten)]
        target: Target,
        /// Why (1 to 1000 characters); audited.
        #[arg(long)]
        reason: String,
        /// Your name, for the platform switch; defaults to STEWARD_OPERATOR, then USER.
        #[arg(long)]
        operator: Option<String>,
    },
    /// Let writes go on; the runs held at their write resume.
    Resume {
        #[command(flatten)]
        target: Target,
        /// Why (1 to 1000 characters); audited.
        #[arg(long)]
        reason: String,
        /// Your name, for the platform switch; defaults to STEWARD_OPERATOR, then USER.
        #[arg(long)]
        operator: Option<String>,
    },
    /// Show the pauses in force.
    Status {
        #[command(flatten)]
        target: Target,
    },
}

/// Where the server is, which switch, and how to prove the right to it.
#[derive(Debug, Args)]
pub struct Target {
    /// The server's base URL.
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    url: Url,
    /// The tenant whose switch to use (with its admin token); without it, the platform's
    /// (with the operator token).
    #[arg(long)]
    tenant: Option<String>,
    /// A file holding the token; without it, STEWARD_OPS_TOKEN (platform) or STEWARD_TOKEN
    /// (tenant) is read.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Target {
    /// A client with the tenant's admin token (`--tenant`) or the operator's; the
    /// platform's switch also takes the sign-in `steward login` saved.
    fn client(&self) -> anyhow::Result<ApiClient> {
        let token = match &self.tenant {
            Some(_) => read_token(self.token_file.as_deref(), "STEWARD_TOKEN", None)?,
            None => read_token(
                self.token_file.as_deref(),
                "STEWARD_OPS_TOKEN",
                Some(&self.url),
            )?,
        };
        ApiClient::new(&self.url, token)
    }

    fn path(&self, action: Option<&str>) -> String {
        let base = if self.tenant.is_some() {
            "v1/tenant/writes"
        } else {
            "v1/ops/writes"
        };
        match action {
            Some(a) => format!("{base}/{a}"),
            None => base.to_owned(),
        }
    }

    fn body(&self, reason: &str, operator: Option<&str>) -> anyhow::Result<Value> {
        if let Some(tenant) = &self.tenant {
            return Ok(json!({ "reason": reason, "tenant": tenant }));
        }
        // Without a name the body has no `operator`: a signed-in person is audited as who
        // they signed in as, and the operator token is refused without one.
        let operator = operator
            .map(str::to_owned)
            .or_else(|| std::env::var("STEWARD_OPERATOR").ok())
            .or_else(|| std::env::var("USER").ok())
            .filter(|o| !o.is_empty());
        Ok(match operator {
            Some(operator) => json!({ "reason": reason, "operator": operator }),
            None => json!({ "reason": reason }),
        })
    }
}

/// Runs a `steward writes …` command.
pub async fn run(command: WritesCommand) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    match command {
        WritesCommand::Pause {
            target,
            reason,
            operator,
        } => change(&target, "pause", &reason, operator.as_deref()).await,
        WritesCommand::Resume {
            target,
            reason,
            operator,
        } => change(&target, "resume", &reason, operator.as_deref()).await,
        WritesCommand::Status { target } => status(&target).await,
    }
}

async fn change(
    target: &Target,
    action: &str,
    reason: &str,
    operator: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let body = target.body(reason, operator)?;
    let answer = target
        .client()?
        .call(Method::POST, &target.path(Some(action)), Some(&body))
        .await?;
    let scope = clean(answer["scope"].as_str().unwrap_or("?"));
    if answer["paused"] == true {
        println!("writes are paused for {scope}");
    } else {
        println!("writes are no longer paused for {scope}");
    }
    if let Some(woken) = answer["woken"].as_u64() {
        println!("parked runs woken: {woken}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(target: &Target) -> anyhow::Result<ExitCode> {
    let answer = target.client()?.get(&target.path(None), &[]).await?;
    let pauses = answer["pauses"].as_array().cloned().unwrap_or_default();
    if pauses.is_empty() {
        println!("writes are not paused");
    }
    for p in &pauses {
        let place = match p["tenant"].as_str() {
            Some(t) => format!("tenant {}", clean(t)),
            None => "the platform".into(),
        };
        println!(
            "paused for {place} by {}: {}",
            clean(p["actor"].as_str().unwrap_or("?")),
            clean(p["reason"].as_str().unwrap_or(""))
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(tenant: Option<&str>) -> Target {
        Target {
            url: Url::parse("http://127.0.0.1:8080").unwrap(),
            tenant: tenant.map(str::to_owned),
            token_file: None,
        }
    }

    #[test]
    fn the_tenant_switch_uses_the_tenant_routes_and_names_the_tenant() {
        let t = target(Some("us-acme"));
        assert_eq!(t.path(Some("pause")), "v1/tenant/writes/pause");
        assert_eq!(
            t.body("freeze", None).unwrap(),
            json!({"reason": "freeze", "tenant": "us-acme"})
        );
        let p = target(None);
        assert_eq!(p.path(None), "v1/ops/writes");
        assert_eq!(
            p.body("upgrade", Some("ana")).unwrap(),
            json!({"reason": "upgrade", "operator": "ana"})
        );
    }
}
