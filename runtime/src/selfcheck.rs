//! `steward selfcheck`: checks the environment the binary runs in (the container image above
//! all) and prints `pass` or `FAIL` for each check:
//!
//! - `ca-roots`: the TLS trust anchors load. They are compiled into the binary (webpki-roots,
//!   for the HTTP clients and for sqlx's PostgreSQL TLS), so no CA bundle is read from disk;
//!   the check counts them, builds a rustls client configuration from them, and builds the
//!   connectors' HTTP client.
//! - `resolve`: `localhost` and every `--resolve` name resolve, through the same resolver the
//!   HTTP clients and the PostgreSQL driver use (the C library's `getaddrinfo`, which in the
//!   static binary reads `/etc/hosts` and `/etc/resolv.conf` itself).
//! - `user`: the process runs neither as uid 0 nor as gid 0.
//! - `data-dir`: the data directory (default: the working directory) is writable, or with
//!   `--expect-data-dir read-only`, is not.
//! - `root-fs`: with `--expect-read-only`, `/` is mounted read-only; without it the state is
//!   only reported.
//!
//! It needs no configuration and opens no database. A name that resolves only through DNS
//! makes a DNS query to the resolvers in `/etc/resolv.conf`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The longest name `--resolve` accepts (the DNS limit for a name written out).
pub const MAX_NAME_LEN: usize = 253;

/// How long one name's resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The selfcheck's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct SelfcheckArgs {
    /// Also resolve this name (repeat for several); `localhost` is always resolved.
    #[arg(long = "resolve", value_name = "NAME")]
    pub resolve: Vec<String>,
    /// The data directory to check (where the default SQLite file lives).
    #[arg(long, default_value = ".")]
    pub data_dir: PathBuf,
    /// Whether the data directory should be writable.
    #[arg(long, value_enum, default_value_t = Access::Writable)]
    pub expect_data_dir: Access,
    /// Fail unless the root filesystem is mounted read-only.
    #[arg(long)]
    pub expect_read_only: bool,
}

/// Whether a directory should take writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Access {
    Writable,
    ReadOnly,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Outcome {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// Runs every check, prints one line each and a summary; fails when any check failed.
pub async fn run(args: SelfcheckArgs) -> anyhow::Result<ExitCode> {
    let outcomes = checks(&args).await;
    for o in &outcomes {
        println!(
            "{}  {:<9} {}",
            if o.ok { "pass" } else { "FAIL" },
            o.name,
            o.detail
        );
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    println!(
        "selfcheck: {} passed, {failed} failed",
        outcomes.len() - failed
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every check, in the order they are printed.
pub async fn checks(args: &SelfcheckArgs) -> Vec<Outcome> {
    let mut out = vec![ca_roots()];
    let mut names = vec!["localhost".to_owned()];
    names.extend(args.resolve.iter().cloned());
    for name in &names {
        out.push(resolve(name).await);
    }
    out.push(user(
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    ));
    out.push(data_dir(&args.data_dir, args.expect_data_dir));
    out.push(root_fs(Path::new("/"), args.expect_read_only));
    out
}

/// The compiled-in trust anchors: counted, made into a rustls client configuration, and used
/// by the connectors' HTTP client.
pub fn ca_roots() -> Outcome {
    const NAME: &str = "ca-roots";
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if roots.is_empty() {
        return Outcome::new(NAME, false, "no trust anchor is compiled in");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    if let Err(e) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    {
        return Outcome::new(NAME, false, format!("no TLS client configuration: {e}"));
    }
    if let Err(e) = steward_adapters::http::client(&steward_adapters::http::HttpSettings::default())
    {
        return Outcome::new(
            NAME,
            false,
            format!(
                "the HTTP client does not build: {}",
                steward_adapters::http::error_chain(&e)
            ),
        );
    }
    Outcome::new(
        NAME,
        true,
        format!(
            "{} trust anchors compiled in (webpki-roots); TLS client configuration and HTTP client build",
            roots.len()
        ),
    )
}

/// Checks that a name is one `getaddrinfo` can be asked about: not empty, no NUL or
/// whitespace, at most [`MAX_NAME_LEN`] bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name of {} bytes (at most {MAX_NAME_LEN})",
            name.len()
        ));
    }
    if name
        .chars()
        .any(|c| c == '\0' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{:?} holds a control or space character", name));
    }
    Ok(())
}

/// Resolves a name as the HTTP clients and the PostgreSQL driver do (tokio's `lookup_host`,
/// that is `getaddrinfo` on a blocking thread), within [`RESOLVE_TIMEOUT`].
pub async fn resolve(name: &str) -> Outcome {
    const NAME: &str = "resolve";
    if let Err(e) = check_name(name) {
        return Outcome::new(NAME, false, format!("refused: {e}"));
    }
    let lookup = tokio::net::lookup_host((name, 0));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Err(_) => Outcome::new(
            NAME,
            false,
            format!("{name}: no answer within {}s", RESOLVE_TIMEOUT.as_secs()),
        ),
        Ok(Err(e)) => Outcome::new(NAME, false, format!("{name}: {e}")),
        Ok(Ok(addrs)) => {
            let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            ips.dedup();
            if ips.is_empty() {
                Outcome::new(NAME, false, format!("{name}: no address"))
            } else {
                Outcome::new(NAME, true, format!("{name} -> {}", ips.join(", ")))
            }
        }
    }
}

/// The process's effective user and group must not be root's.
pub fn user(uid: u32, gid: u32) -> Outcome {
    let ok = uid != 0 && gid != 0;
    let detail = if ok {
        format!("uid {uid}, gid {gid}")
    } else {
        format!("uid {uid}, gid {gid}: runs as root")
    };
    Outcome::new("user", ok, detail)
}

/// Creates and removes a temporary file in `dir`, and compares what happened with `expect`.
pub fn data_dir(dir: &Path, expect: Access) -> Outcome {
    const NAME: &str = "data-dir";
    if !dir.is_dir() {
        return Outcome::new(NAME, false, format!("{} is not a directory", dir.display()));
    }
    let written = tempfile::Builder::new()
        .prefix(".steward-selfcheck-")
        .tempfile_in(dir)
        .and_then(|f| f.close());
    match (written, expect) {
        (Ok(()), Access::Writable) => {
            Outcome::new(NAME, true, format!("{} is writable", dir.display()))
        }
        (Err(e), Access::ReadOnly) => Outcome::new(
            NAME,
            true,
            format!("{} is not writable, as expected ({e})", dir.display()),
        ),
        (Ok(()), Access::ReadOnly) => Outcome::new(
            NAME,
            false,
            format!("{} is writable, expected read-only", dir.display()),
        ),
        (Err(e), Access::Writable) => Outcome::new(
            NAME,
            false,
            format!("{} is not writable: {e}", dir.display()),
        ),
    }
}

/// Reads the mount flags of the filesystem holding `path`; with `expect_read_only`, fails
/// unless it is mounted read-only.
pub fn root_fs(path: &Path, expect_read_only: bool) -> Outcome {
    const NAME: &str = "root-fs";
    let flags = match rustix::fs::statvfs(path) {
        Ok(s) => s.f_flag,
        Err(e) => {
            return Outcome::new(NAME, false, format!("statvfs {}: {e}", path.display()));
        }
    };
    let read_only = flags.contains(rustix::fs::StatVfsMountFlags::RDONLY);
    let state = if read_only { "read-only" } else { "read-write" };
    match (read_only, expect_read_only) {
        (true, _) => Outcome::new(
            NAME,
            true,
            format!("{} is mounted read-only", path.display()),
        ),
        (false, false) => Outcome::new(
            NAME,
            true,
            format!(
                "{} is mounted {state} (read-only not required)",
                path.display()
            ),
        ),
        (false, true) => Outcome::new(
            NAME,
            false,
            format!("{} is mounted {state}, expected read-only", path.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_anchors_are_compiled_in() {
        let o = ca_roots();
        assert!(o.ok, "{o:?}");
        let count: usize = o.detail.split(' ').next().unwrap().parse().unwrap();
        assert!(count > 50, "{o:?}");
    }

    #[tokio::test]
    async fn localhost_resolves_from_the_hosts_file() {
        let o = resolve("localhost").await;
        assert!(o.ok, "{o:?}");
        assert!(o.detail.starts_with("localhost -> "), "{o:?}");
    }

    #[tokio::test]
    async fn hostile_names_are_refused_before_any_lookup() {
        for name in [
            String::new(),
            "nul\0byte".to_owned(),
            "two words".to_owned(),
            "line\nbreak".to_owned(),
            "a".repeat(MAX_NAME_LEN + 1),
        ] {
            let o = resolve(&name).await;
            assert!(!o.ok, "{name:?}: {o:?}");
            assert!(o.detail.starts_with("refused: "), "{name:?}: {o:?}");
        }
        assert!(check_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn root_user_or_group_fails() {
        assert!(user(65532, 65532).ok);
        assert!(!user(0, 65532).ok);
        assert!(!user(65532, 0).ok);
        assert!(!user(0, 0).ok);
    }

    #[test]
    fn data_dir_is_compared_with_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(data_dir(dir.path(), Access::Writable).ok);
        let o = data_dir(dir.path(), Access::ReadOnly);
        assert!(!o.ok && o.detail.contains("expected read-only"), "{o:?}");
        // The probe file is gone afterwards.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = dir.path().join("missing");
        assert!(!data_dir(&missing, Access::Writable).ok);
        assert!(!data_dir(&missing, Access::ReadOnly).ok);
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(!data_dir(&file, Access::Writable).ok);
    }

    #[test]
    fn a_read_write_filesystem_fails_only_when_read_only_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let o = root_fs(dir.path(), false);
        assert!(o.ok && o.detail.contains("read-write"), "{o:?}");
        let o = root_fs(dir.path(), true);
        assert!(!o.ok && o.detail.contains("expected read-only"), "{o:?}");
        assert!(!root_fs(&dir.path().join("missing"), false).ok);
    }
}
