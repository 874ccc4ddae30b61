//! `steward backup` and `steward restore`: whole-database backups with a manifest, and
//! restores that check the manifest, refuse a database in use and verify every tenant's audit
//! chain. Both end with a one-line JSON summary on stdout (`{"backup": …}` or
//! `{"drill":"restore", …}`) for scripts and the go/no-go checklist.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use steward_persistence::backup::{self, BackupBackend, Manifest, PgTools, RestoreReport};

use crate::config::{FileConfig, SecretRef};

/// `[backup]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Where to read the PostgreSQL backup role's URL (`postgres://steward_backup@…`): the
    /// role `pg_dump` runs as, and the one a restore reads the restored rows with.
    pub postgres_url: Option<SecretRef>,
    /// The directory holding `pg_dump` and `pg_restore`; the `PATH` when unset.
    pub pg_bin_dir: Option<PathBuf>,
}

/// `steward backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The backup file to write; its manifest is written beside it as
    /// `FILE.manifest.json`. Neither may exist yet.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, env = "STEWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL: the backup role's URL, instead of `[backup] postgres_url`. It must not
    /// carry a password (give that in PGPASSWORD or a PGPASSFILE).
    #[arg(long)]
    pub database_url: Option<String>,
    /// SQLite: the database file, instead of the config's `database`.
    #[arg(long)]
    pub database: Option<PathBuf>,
}

/// `steward restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file; its manifest must sit beside it.
    #[arg(long)]
    pub from: PathBuf,
    #[arg(long, env = "STEWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// SQLite: the database file to restore to, instead of the config's `database`.
    #[arg(long)]
    pub to: Option<PathBuf>,
    /// PostgreSQL: the schema owner's URL of the empty database to restore into, instead of
    /// `postgres_migrate_url`. No password in it (PGPASSWORD or a PGPASSFILE).
    #[arg(long)]
    pub database_url: Option<String>,
    /// PostgreSQL: the backup role's URL on the restored database, for the checks, instead
    /// of `[backup] postgres_url`. No password in it.
    #[arg(long)]
    pub verify_url: Option<String>,
}

fn config_and_base(path: Option<&Path>) -> anyhow::Result<(FileConfig, PathBuf)> {
    let config = FileConfig::load(path).map_err(anyhow::Error::msg)?;
    let base = path
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok((config, base))
}

/// A URL from the command line: refused when it carries a password, which would then be
/// readable in the process list.
fn url_from_flag(url: &str, flag: &str) -> anyhow::Result<SecretString> {
    let parsed = url::Url::parse(url).map_err(|_| anyhow::anyhow!("{flag} is not a URL"))?;
    let query_password = parsed.query_pairs().any(|(k, _)| k == "password");
    if parsed.password().is_some() || query_password {
        anyhow::bail!(
            "{flag} must not carry a password (it would show in the process list); put it in \
             PGPASSWORD or a PGPASSFILE, or use the config file's secret reference"
        );
    }
    Ok(SecretString::from(url.to_owned()))
}

fn secret(r: &SecretRef, base: &Path) -> anyhow::Result<SecretString> {
    r.read(base).map_err(anyhow::Error::msg)
}

fn tools(config: &FileConfig, base: &Path) -> PgTools {
    PgTools {
        bin_dir: config.backup.pg_bin_dir.as_ref().map(|d| {
            if d.is_absolute() {
                d.clone()
            } else {
                base.join(d)
            }
        }),
    }
}

/// Runs `steward backup`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let result = take_backup(&args).await;
    match result {
        Ok(manifest) => {
            println!("backup:   {}", args.out.display());
            println!("manifest: {}", backup::manifest_path(&args.out).display());
            println!(
                "holds:    {} rows in {} tables, {} audit chains, schema version {}",
                manifest.total_rows(),
                manifest.tables.len(),
                manifest.chains.len(),
                manifest.schema_version
            );
            println!("sha256:   {}", manifest.sha256);
            println!(
                "{}",
                json!({
                    "backup": args.out.display().to_string(),
                    "ok": true,
                    "backend": manifest.backend,
                    "schema_version": manifest.schema_version,
                    "size": manifest.size,
                    "sha256": manifest.sha256,
                    "rows": manifest.total_rows(),
                    "chains": manifest.chains.len(),
                    "seconds": seconds(started),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("result:   FAIL: {e:#}");
            println!(
                "{}",
                json!({
                    "backup": args.out.display().to_string(),
                    "ok": false,
                    "error": format!("{e:#}"),
                    "seconds": seconds(started),
                })
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Takes the backup the arguments and the config describe.
pub async fn take_backup(args: &BackupArgs) -> anyhow::Result<Manifest> {
    let (config, base) = config_and_base(args.config.as_deref())?;
    let pg_url = match (&args.database_url, &config.backup.postgres_url) {
        (Some(url), _) => Some(url_from_flag(url, "--database-url")?),
        (None, Some(r)) => Some(secret(r, &base)?),
        (None, None) if config.postgres_url.is_some() => anyhow::bail!(
            "this deployment runs on PostgreSQL: configure [backup] postgres_url (the backup \
             role) or pass --database-url"
        ),
        (None, None) => None,
    };
    let manifest = match pg_url {
        Some(url) => backup::backup_postgres(&url, &args.out, &tools(&config, &base)).await?,
        None => {
            let db = args.database.clone().unwrap_or(config.database.clone());
            backup::backup_sqlite(&db, &args.out).await?
        }
    };
    Ok(manifest)
}

/// Runs `steward restore`, printing the drill's lines and its JSON summary.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    match run_restore(&args).await {
        Ok((report, target)) => {
            print_report(&args.from, &target, &report);
            let failed = report.chains.iter().filter(|c| !c.ok).count();
            let ok = report.ok();
            println!(
                "result:   {}",
                if ok {
                    "PASS: restored, contents match the manifest, every chain verifies"
                } else {
                    "FAIL: see above"
                }
            );
            println!("{}", drill_summary(&args.from, &report, failed, started));
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            println!("result:   FAIL: {e:#}");
            println!(
                "{}",
                json!({
                    "drill": "restore",
                    "ok": false,
                    "backup": args.from.display().to_string(),
                    "error": format!("{e:#}"),
                    "seconds": seconds(started),
                })
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Restores as the arguments and the config say; the report and where it went (a file, or
/// the database named without credentials).
pub async fn run_restore(args: &RestoreArgs) -> anyhow::Result<(RestoreReport, String)> {
    let (config, base) = config_and_base(args.config.as_deref())?;
    let manifest = backup::read_manifest(&args.from)?;
    match manifest.backend {
        BackupBackend::Sqlite => {
            let target = args.to.clone().unwrap_or(config.database.clone());
            let report = backup::restore_sqlite(&args.from, &target).await?;
            Ok((report, target.display().to_string()))
        }
        BackupBackend::Postgres => {
            let owner = match (&args.database_url, &config.postgres_migrate_url) {
                (Some(url), _) => url_from_flag(url, "--database-url")?,
                (None, Some(r)) => secret(r, &base)?,
                (None, None) => anyhow::bail!(
                    "a PostgreSQL restore needs the schema owner's URL of an empty database: \
                     --database-url or postgres_migrate_url"
                ),
            };
            let verify = match (&args.verify_url, &config.backup.postgres_url) {
                (Some(url), _) => url_from_flag(url, "--verify-url")?,
                (None, Some(r)) => secret(r, &base)?,
                (None, None) => anyhow::bail!(
                    "a PostgreSQL restore reads the restored rows as the backup role: \
                     --verify-url or [backup] postgres_url"
                ),
            };
            let target = without_credentials(&owner);
            let report =
                backup::restore_postgres(&args.from, &owner, &verify, &tools(&config, &base))
                    .await?;
            Ok((report, target))
        }
    }
}

/// A PostgreSQL URL as `host:port/database`, for printing.
fn without_credentials(url: &SecretString) -> String {
    match url::Url::parse(url.expose_secret()) {
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or(""),
            u.port().unwrap_or(5432),
            u.path()
        ),
        Err(_) => "the configured database".into(),
    }
}

fn print_report(from: &Path, target: &str, report: &RestoreReport) {
    let m = &report.manifest;
    println!(
        "backup:   {} ({}, schema version {}, taken {}, {} bytes)",
        from.display(),
        m.backend.as_str(),
        m.schema_version,
        m.created_at,
        m.size
    );
    println!("sha256:   {} (matches the manifest)", m.sha256);
    println!("restored: to {target}");
    println!(
        "contents: {}: {} rows in {} tables, {} audit chains",
        if report.contents_match {
            "match the manifest"
        } else {
            "DIFFER from the manifest"
        },
        m.total_rows(),
        m.tables.len(),
        m.chains.len()
    );
    for c in &report.chains {
        match &c.problem {
            None => println!(
                "chain:    {}: PASS, {} entries, head {}",
                c.tenant, c.entries, c.head_hash
            ),
            Some(p) => println!("chain:    {}: FAIL, {p}", c.tenant),
        }
    }
}

/// The drill's one-line JSON summary.
fn drill_summary(
    from: &Path,
    report: &RestoreReport,
    failed: usize,
    started: Instant,
) -> serde_json::Value {
    let m = &report.manifest;
    json!({
        "drill": "restore",
        "ok": report.ok(),
        "backend": m.backend,
        "backup": from.display().to_string(),
        "created_at": m.created_at,
        "schema_version": m.schema_version,
        "sha256": m.sha256,
        "tables": m.tables.len(),
        "rows": m.total_rows(),
        "contents_match": report.contents_match,
        "tenants": report.chains.len(),
        "chains_ok": report.chains.len() - failed,
        "chains_failed": failed,
        "seconds": seconds(started),
        "restored_at": now_rfc3339(),
    })
}

/// The current time, RFC 3339 UTC, for a drill's record (`steward checklist` reads it).
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn seconds(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_passwords_are_refused_on_the_command_line() {
        assert!(url_from_flag("postgres://u:pw@h/d", "--database-url").is_err());
        assert!(url_from_flag("postgres://u@h/d?password=pw", "--database-url").is_err());
        assert!(url_from_flag("not a url", "--database-url").is_err());
        let ok = url_from_flag("postgres://steward_backup@127.0.0.1:5432/steward", "--x").unwrap();
        assert_eq!(
            without_credentials(&ok),
            "127.0.0.1:5432/steward",
            "printed without user or password"
        );
    }

    #[test]
    fn the_backup_section_parses_and_refuses_unknown_keys() {
        let c: FileConfig = toml::from_str(
            "[backup]\npostgres_url = { env = \"BACKUP_URL\" }\npg_bin_dir = \"/opt/pg/bin\"",
        )
        .unwrap();
        assert!(matches!(&c.backup.postgres_url, Some(SecretRef::Env(v)) if v == "BACKUP_URL"));
        assert!(toml::from_str::<FileConfig>("[backup]\nurl = \"x\"").is_err());
        assert!(
            toml::from_str::<FileConfig>("[backup]\npostgres_url = \"postgres://u:p@h/d\"")
                .is_err(),
            "a URL written in the file itself is refused"
        );
    }
}
