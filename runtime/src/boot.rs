//! Boot and shutdown: open the store, check the master key, apply declared tenants, start the
//! actor system, resume unfinished runs, and serve the API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;
use steward_actors::settings::{TenantSettings, secret_names};
use steward_actors::{Metrics, Steward, StewardOptions};
use steward_adapters::http::HttpSettings;
use steward_adapters::webhook::check_secret;
use steward_api::{
    ApiLimits, AppParts, AppState, OpsAuth, OpsSettings, ServerLimits, TenancySettings,
};
use steward_core::{Clock, Region, SignatureScheme, SourceName, SystemClock, TenantId};
use steward_persistence::{
    Authenticator, MasterKey, PgOptions, Store, StoreOptions, TenantRecord, TenantScope,
    WebhookSource,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info};

/// A tenant to apply at boot: settings and the secret values to seal.
pub struct TenantSpec {
    pub id: TenantId,
    pub name: String,
    pub settings: TenantSettings,
    pub secrets: Vec<(String, SecretString)>,
    pub sources: Vec<(WebhookSource, SecretString)>,
    pub api_token: Option<SecretString>,
}

/// Everything `start` needs.
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub database: PathBuf,
    pub synchronous_full: bool,
    pub master_key: MasterKey,
    pub tenants: Vec<TenantSpec>,
    pub http: HttpSettings,
    pub delivery_retention: Duration,
    pub clock: Arc<dyn Clock>,
    pub actors: StewardOptions,
    /// The operator token for the ops API and page; None turns them off. It is also the
    /// platform token that onboards and offboards tenants.
    pub ops_token: Option<SecretString>,
    /// People sign in to the ops API and page through this identity provider (`[oidc]`);
    /// the operator token then passes only the break-glass grant flow. None: as before.
    pub oidc: Option<steward_api::OidcSettings>,
    /// The region this deployment serves; tenants homed elsewhere are refused.
    pub region: Region,
    /// The base URLs of the deployments serving the other regions.
    pub peer_base_urls: HashMap<Region, String>,
    /// Run on PostgreSQL instead of the `database` file (its clock is replaced by `clock`).
    pub postgres: Option<PgOptions>,
    /// The HTTP server's timeouts, header limits and rate limits. [`ServeOptions::new`] has no
    /// rate limit (embedded servers: tests, benchmarks, the demo); `steward serve` takes the
    /// config's `[http]` section, whose defaults limit.
    pub server_limits: ServerLimits,
    /// Serve `GET /metrics` ([`ServeOptions::new`]: on; `steward serve`: the `[metrics]`
    /// section, on only in `dev` unless it says otherwise).
    pub metrics: bool,
    /// How often every tenant's audit chain is verified for the metrics; None: never.
    pub audit_verify_every: Option<Duration>,
    /// How often every tenant's chain head gets a signed checkpoint, and the witness that
    /// countersigns them; None: no schedule.
    pub evidence: Option<(Duration, Option<steward_actors::witness::Witness>)>,
    /// How the retention sweeper runs (`[retention]`); None: tenants' retention settings are
    /// not applied by this process.
    pub retention_sweep: Option<steward_actors::retention::SweepOptions>,
    /// How the SIEM streamer polls and backs off; None: tenants' SIEM streams are not
    /// delivered by this process.
    pub siem: Option<steward_actors::siem::SiemOptions>,
    /// How the ServiceNow catch-up pass runs (`[catchup]`); None: missed incident changes are
    /// not looked for ([`ServeOptions::new`]: off, so embedded servers start no pass unasked).
    pub catchup: Option<steward_actors::catchup::CatchupOptions>,
    /// The span exporter installed with the process's subscriber (`[telemetry]`), flushed by
    /// [`Server::shutdown`]; None: spans are not exported.
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// Serve TLS with the certificate and key these files hold, reloaded when they change;
    /// None: plain HTTP (the dev profile, or TLS ended at a proxy in front).
    pub tls: Option<crate::tls::TlsOptions>,
}

impl ServeOptions {
    /// Defaults for a database file and a key; no tenants.
    pub fn new(database: PathBuf, master_key: MasterKey) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database,
            synchronous_full: true,
            master_key,
            tenants: vec![],
            http: HttpSettings::default(),
            delivery_retention: Duration::from_secs(7 * 24 * 3600),
            clock: Arc::new(SystemClock),
            actors: StewardOptions::default(),
            ops_token: None,
            oidc: None,
            postgres: None,
            region: Region::Us,
            peer_base_urls: HashMap::new(),
            server_limits: ServerLimits::default(),
            metrics: true,
            audit_verify_every: None,
            evidence: None,
            retention_sweep: Some(steward_actors::retention::SweepOptions::default()),
            siem: Some(steward_actors::siem::SiemOptions::default()),
            catchup: None,
            telemetry: None,
            tls: None,
        }
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub steward: Steward,
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    purge: JoinHandle<()>,
    audit_verify: Option<JoinHandle<()>>,
    evidence: Option<JoinHandle<()>>,
    retention: Option<JoinHandle<()>>,
    siem: Option<JoinHandle<()>>,
    catchup: Option<JoinHandle<()>>,
    telemetry: Option<crate::telemetry::Telemetry>,
    /// The TLS file watcher, when Steward serves TLS.
    tls_reload: Option<JoinHandle<()>>,
}

impl Server {
    /// The span exporter, when spans are exported (to flush them, say).
    pub fn telemetry(&self) -> Option<&crate::telemetry::Telemetry> {
        self.telemetry.as_ref()
    }

    /// The base URL, `http://127.0.0.1:PORT` (`https://` when Steward serves TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls_reload.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, finishes in-flight requests, stops the actor system.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        self.purge.abort();
        if let Some(task) = &self.audit_verify {
            task.abort();
        }
        if let Some(task) = &self.evidence {
            task.abort();
        }
        if let Some(task) = &self.retention {
            task.abort();
        }
        if let Some(task) = &self.siem {
            task.abort();
        }
        if let Some(task) = &self.catchup {
            task.abort();
        }
        if let Some(task) = &self.tls_reload {
            task.abort();
        }
        // In a cluster, hand the tenants over before stopping, so that the other nodes take
        // them at their next round instead of after the lease time.
        self.steward.drain().await;
        self.steward.stop();
        self.store.close().await;
        if let Some(telemetry) = &self.telemetry {
            telemetry.flush().await;
        }
    }

    /// Serves until the task ends (a listener error), keeping the server for a later
    /// [`Server::shutdown`].
    pub async fn serving(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("server task")??;
        Ok(())
    }

    /// Serves until the task ends (it ends on shutdown or a listener error).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("server task")??;
        Ok(())
    }
}

/// Installs the one TLS crypto provider for the whole binary (ring, used by reqwest and sqlx).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens the store `opts` names: PostgreSQL when configured, else the SQLite file.
async fn open_store(opts: &ServeOptions) -> anyhow::Result<Store> {
    if let Some(pg) = &opts.postgres {
        let mut pg = pg.clone();
        pg.clock = opts.clock.clone();
        return Store::open_postgres(pg)
            .await
            .context("opening the PostgreSQL database");
    }
    let mut store_opts = StoreOptions::new(&opts.database);
    store_opts.synchronous_full = opts.synchronous_full;
    store_opts.clock = opts.clock.clone();
    Store::open(store_opts)
        .await
        .with_context(|| format!("opening the database {}", opts.database.display()))
}

/// Boots Steward.
pub async fn start(opts: ServeOptions) -> anyhow::Result<Server> {
    install_crypto_provider();
    // A pair that does not load stops the start before anything is opened.
    let mut tls = opts
        .tls
        .clone()
        .map(crate::tls::ServerTls::new)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let ops = Arc::new(ops_auth(opts.ops_token.as_ref(), opts.oidc.clone())?);
    let store = open_store(&opts).await?;
    store
        .check_master_key(&opts.master_key)
        .await
        .context("checking the master key")?;
    for tenant in &opts.tenants {
        check_egress(&opts.http, tenant)?;
        apply_tenant(&store, &opts.master_key, tenant)
            .await
            .with_context(|| format!("applying tenant {}", tenant.id))?;
    }
    let evidence_key = opts.evidence.is_some().then(|| opts.master_key.clone());
    let retention_key = opts.retention_sweep.map(|o| (o, opts.master_key.clone()));
    let master_key = Arc::new(opts.master_key);
    let tenancy = Arc::new(TenancySettings {
        region: opts.region,
        peer_base_urls: opts.peer_base_urls,
        http: opts.http.clone(),
    });
    // The process's one metrics registry, shared by the actors and the API.
    let metrics = Metrics::new();
    let siem = opts
        .siem
        .map(|options| {
            let (store, key) = (store.clone(), master_key.clone());
            steward_actors::siem::SiemStreamer::new(
                store,
                key,
                metrics.clone(),
                opts.http.clone(),
                options,
            )
        })
        .transpose()
        .context("building the SIEM client")?;
    let mut actors = opts.actors;
    let max_live_actors = actors.max_live_runs;
    let actors_http = opts.http.clone();
    actors.http = opts.http;
    actors.metrics = metrics.clone();
    let steward = Steward::start(store.clone(), master_key.clone(), actors)
        .await
        .map_err(|e| anyhow::anyhow!("starting the actor system: {e}"))?;
    // In a cluster this node holds no lease yet: its keeper's rounds resume the runs of the
    // tenants it takes.
    // A run held while writes were paused needs a wake-up once they resume; resuming writes
    // wakes the parked runs, and so does this, in case the process stopped in between.
    let woken = steward
        .resume(steward.gate())
        .await
        .context("resuming unfinished runs")?;
    // The catch-up pass starts once unfinished runs are resumed, so its runs join them.
    let catchup = opts.catchup.map(|options| {
        steward_actors::catchup::Catchup::new(
            store.clone(),
            master_key.clone(),
            actors_http.clone(),
            steward.clone(),
            metrics.clone(),
            options,
        )
    });
    let state = AppState::new(AppParts {
        steward: steward.clone(),
        store: store.clone(),
        master_key,
        limits: ApiLimits::default(),
        ops,
        tenancy,
        metrics: opts.metrics.then(|| metrics.clone()),
    });
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    if let Some(tls) = &mut tls {
        tls.report_to(metrics.clone());
    }
    info!(
        %addr,
        woken,
        max_live_actors,
        tls = tls.is_some(),
        "Steward is serving."
    );
    let (tx, rx) = oneshot::channel::<()>();
    let (api_store, api_ops) = (state.store.clone(), state.ops.clone());
    let app = steward_api::harden(
        steward_api::router(state),
        api_store,
        api_ops,
        &opts.server_limits,
    );
    let limits = opts.server_limits;
    let (task, tls_reload) = match tls {
        None => {
            let task = tokio::spawn(async move {
                crate::http_server::serve(listener, app, &limits, async move {
                    let _ = rx.await;
                })
                .await
            });
            (task, None)
        }
        Some(tls) => {
            let server_tls = tls.listener();
            let task = tokio::spawn(async move {
                crate::http_server::serve_tls(listener, app, &limits, &server_tls, async move {
                    let _ = rx.await;
                })
                .await
            });
            (task, Some(crate::tls::spawn_reloader(tls)))
        }
    };
    let purge = spawn_purge(store.clone(), opts.delivery_retention, opts.clock);
    let siem = siem.map(steward_actors::siem::SiemStreamer::spawn);
    let audit_verify = opts
        .audit_verify_every
        .map(|every| spawn_audit_verify(store.clone(), metrics, every));
    let evidence = opts
        .evidence
        .zip(evidence_key)
        .map(|((every, witness), key)| spawn_checkpoints(store.clone(), key, every, witness));
    let retention = retention_key
        .map(|(options, key)| steward_actors::retention::spawn(store.clone(), key, options));
    let catchup = catchup.map(steward_actors::catchup::Catchup::spawn);
    Ok(Server {
        addr,
        steward,
        store,
        shutdown: Some(tx),
        task,
        purge,
        audit_verify,
        evidence,
        retention,
        siem,
        catchup,
        telemetry: opts.telemetry,
        tls_reload,
    })
}

/// The operator credential and the identity provider; a token shorter than 24 characters is
/// refused, and so are `[oidc]` settings that do not check.
fn ops_auth(
    token: Option<&SecretString>,
    oidc: Option<steward_api::OidcSettings>,
) -> anyhow::Result<OpsAuth> {
    if let Some(t) = token
        && secrecy::ExposeSecret::expose_secret(t).len() < steward_api::ops_auth::MIN_TOKEN_BYTES
    {
        bail!(
            "the ops token must be at least {} characters",
            steward_api::ops_auth::MIN_TOKEN_BYTES
        );
    }
    let auth = OpsAuth::new(token, OpsSettings::default());
    Ok(match oidc {
        Some(settings) => auth.with_oidc(
            steward_api::Oidc::new(settings).map_err(|e| anyhow::anyhow!("[oidc]: {e}"))?,
        ),
        None => auth,
    })
}

/// Forgets delivery ids older than the retention window, hourly.
fn spawn_purge(store: Store, retention: Duration, clock: Arc<dyn Clock>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let cutoff = clock.now_millis() - retention.as_millis() as i64;
            if let Err(e) = store.purge_deliveries(cutoff).await {
                error!(error = %e, "Purging old delivery ids failed.");
            }
        }
    })
}

/// Verifies every tenant's audit chain each `every` (the first a full period after boot).
fn spawn_audit_verify(store: Store, metrics: Metrics, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            verify_audit_chains(&store, &metrics).await;
        }
    })
}

/// Each `every` (the first a full period after boot), signs a checkpoint of every tenant's
/// chain head that has none, then sends the unwitnessed checkpoints to the witness, if any.
fn spawn_checkpoints(
    store: Store,
    master: MasterKey,
    every: Duration,
    witness: Option<steward_actors::witness::Witness>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            checkpoint_round(&store, &master, witness.as_ref()).await;
        }
    })
}

/// One round of [`spawn_checkpoints`]; returns how many checkpoints were signed. Failures
/// are logged and never stop the round for other tenants.
pub async fn checkpoint_round(
    store: &Store,
    master: &MasterKey,
    witness: Option<&steward_actors::witness::Witness>,
) -> usize {
    let signer = match store.checkpoint_signer(master).await {
        Ok(signer) => signer,
        Err(e) => {
            error!(error = %e, "Loading the evidence signing key failed.");
            return 0;
        }
    };
    let tenants = match store.list_tenants().await {
        Ok(tenants) => tenants,
        Err(e) => {
            error!(error = %e, "Listing tenants for checkpoints failed.");
            return 0;
        }
    };
    let mut signed = 0;
    for tenant in tenants {
        let scope = TenantScope::assume(tenant.id.clone(), Authenticator::Operator);
        if tenant.offboarded_at.is_none() {
            match store.take_checkpoint(&scope, &signer).await {
                Ok(Some(_)) => signed += 1,
                Ok(None) => {}
                Err(e) => error!(tenant = %tenant.id, error = %e, "Signing a checkpoint failed."),
            }
        }
        if let Some(witness) = witness
            && let Err(e) = witness.send_pending(store, &scope).await
        {
            error!(tenant = %tenant.id, error = %e, "Recording a countersignature failed.");
        }
    }
    signed
}

/// Verifies each tenant's audit chain, as `steward audit verify` does, and counts each chain
/// with a bad entry in `steward_audit_verification_failures_total`. Returns how many failed.
pub async fn verify_audit_chains(store: &Store, metrics: &Metrics) -> usize {
    let tenants = match store.list_tenants().await {
        Ok(tenants) => tenants,
        Err(e) => {
            error!(error = %e, "Listing tenants for audit verification failed.");
            return 0;
        }
    };
    let mut failed = 0;
    for tenant in tenants {
        let scope = TenantScope::assume(tenant.id.clone(), Authenticator::Operator);
        match store.verify_audit(&scope).await {
            Ok(report) => {
                if let Some(bad) = report.first_bad {
                    error!(tenant = %tenant.id, seq = bad.seq, "An audit chain does not verify.");
                    metrics.audit_verification_failed(&tenant.id);
                    failed += 1;
                }
            }
            Err(e) => error!(tenant = %tenant.id, error = %e, "Verifying an audit chain failed."),
        }
    }
    failed
}

/// Refuses a declared tenant whose connector URLs are plain HTTP where that is not allowed, or
/// off its home region's egress allow-list, naming the kind, the host and the region, before
/// anything of it is stored.
pub fn check_egress(http: &HttpSettings, spec: &TenantSpec) -> anyhow::Result<()> {
    steward_actors::tenant::check_egress(http, &spec.id, &spec.settings)
        .map_err(|refused| anyhow::anyhow!("tenant {}: {refused}", spec.id))
}

/// Writes a declared tenant into the store: settings, sealed secrets, sources, token.
pub async fn apply_tenant(store: &Store, key: &MasterKey, spec: &TenantSpec) -> anyhow::Result<()> {
    steward_actors::PolicyGate::new(spec.settings.policy.as_deref())
        .map_err(|e| anyhow::anyhow!("tenant policy: {e}"))?;
    if store.tenant_offboarded(&spec.id).await? {
        bail!(
            "tenant {} was offboarded; remove it from the config (its id cannot be reused)",
            spec.id
        );
    }
    let mut settings = serde_json::to_value(&spec.settings)?;
    keep_controls(store, &spec.id, &mut settings).await?;
    let record = TenantRecord {
        id: spec.id.clone(),
        name: spec.name.clone(),
        settings,
        created_at: store.clock().now_millis(),
    };
    store.upsert_tenant(&record).await?;
    let scope = TenantScope::assume(spec.id.clone(), Authenticator::Config);
    for (name, value) in &spec.secrets {
        put_if_changed(store, &scope, key, name, value).await?;
    }
    for (source, secret) in &spec.sources {
        steward_adapters::webhook::WebhookSecret::parse(secrecy::ExposeSecret::expose_secret(
            secret,
        ))
        .map_err(|e| anyhow::anyhow!("source {}: {e}", source.name))?;
        put_if_changed(store, &scope, key, &source.secret_name, secret).await?;
        store.upsert_source(&scope, source).await?;
    }
    if let Some(token) = &spec.api_token {
        let known = store
            .authenticate_token(secrecy::ExposeSecret::expose_secret(token))
            .await?
            .is_some_and(|(s, _)| s.tenant() == &spec.id);
        if !known {
            let scopes = vec!["runs:read".to_owned(), "runs:write".to_owned()];
            store
                .add_api_token(&scope, token, "config", &scopes, None)
                .await?;
        }
    }
    Ok(())
}

/// Carries the tenant's controls set through the API (shadow mode, budgets) into the settings
/// the config file declares, which know nothing of them.
async fn keep_controls(
    store: &Store,
    tenant: &TenantId,
    settings: &mut serde_json::Value,
) -> anyhow::Result<()> {
    use steward_actors::settings::TenantControls;
    let scope = TenantScope::assume(tenant.clone(), Authenticator::Config);
    let Some(stored) = store.tenant(&scope).await? else {
        return Ok(());
    };
    if let (Some(from), Some(into)) = (stored.settings.as_object(), settings.as_object_mut()) {
        for section in [TenantControls::SHADOW, TenantControls::BUDGETS] {
            if let Some(value) = from.get(section) {
                into.insert(section.to_owned(), value.clone());
            }
        }
    }
    Ok(())
}

/// Seals a new version only when the value differs, so restarts do not pile up versions.
async fn put_if_changed(
    store: &Store,
    scope: &TenantScope,
    key: &MasterKey,
    name: &str,
    value: &SecretString,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let current = store.secret(scope, key, name).await?;
    if current.as_ref().map(|c| c.expose_secret()) != Some(value.expose_secret()) {
        store.put_secret(scope, key, name, value).await?;
    }
    Ok(())
}

/// Builds a tenant spec from the config file's declaration, reading its secrets.
pub fn tenant_from_config(
    t: &crate::config::TenantConfig,
    base: &std::path::Path,
) -> anyhow::Result<TenantSpec> {
    let id = TenantId::parse(&t.id).map_err(|e| anyhow::anyhow!("tenant `{}`: {e}", t.id))?;
    let read = |r: &crate::config::SecretRef| r.read(base).map_err(anyhow::Error::msg);
    let mut secrets = vec![
        (
            secret_names::SERVICENOW_CLIENT_SECRET.to_owned(),
            read(&t.servicenow.client_secret)?,
        ),
        (
            secret_names::SLACK_BOT_TOKEN.to_owned(),
            read(&t.slack.bot_token)?,
        ),
        (
            secret_names::SLACK_SIGNING_SECRET.to_owned(),
            read(&t.slack.signing_secret)?,
        ),
        (secret_names::LLM_API_KEY.to_owned(), read(&t.llm.api_key)?),
    ];
    if let Some(p) = &t.servicenow.password {
        secrets.push((secret_names::SERVICENOW_PASSWORD.to_owned(), read(p)?));
    }
    if let Some(r) = &t.servicenow.refresh_token {
        secrets.push((secret_names::SERVICENOW_REFRESH_TOKEN.to_owned(), read(r)?));
    }
    let mut sources = Vec::new();
    for s in &t.sources {
        let name =
            SourceName::parse(&s.name).map_err(|e| anyhow::anyhow!("source `{}`: {e}", s.name))?;
        if s.sys_id_pointers.is_empty() && s.number_pointers.is_empty() {
            bail!(
                "source `{}` needs sys_id_pointers or number_pointers",
                s.name
            );
        }
        for p in s.sys_id_pointers.iter().chain(&s.number_pointers) {
            if !(p.is_empty() || p.starts_with('/')) {
                bail!(
                    "source `{}`: `{p}` is not a JSON pointer (it must start with /)",
                    s.name
                );
            }
        }
        let scheme = match &s.scheme {
            None => SignatureScheme::default(),
            Some(n) => SignatureScheme::parse(n)
                .map_err(|e| anyhow::anyhow!("source `{}`: {e}", s.name))?,
        };
        let secret = read(&s.secret)?;
        check_secret(scheme, secrecy::ExposeSecret::expose_secret(&secret))
            .map_err(|e| anyhow::anyhow!("source `{}`: {e}", s.name))?;
        let source = WebhookSource {
            secret_name: secret_names::webhook_source(name.as_str()),
            name,
            scheme: scheme.as_str().into(),
            sys_id_pointers: s.sys_id_pointers.clone(),
            number_pointers: s.number_pointers.clone(),
        };
        sources.push((source, secret));
    }
    let policy = match &t.policy_file {
        Some(p) => Some(
            std::fs::read_to_string(base.join(p))
                .with_context(|| format!("policy file {}", p.display()))?,
        ),
        None => None,
    };
    let settings = TenantSettings {
        servicenow: t.servicenow.settings(),
        slack: t.slack.settings(),
        llm: t.llm.settings(),
        policy,
    };
    let api_token = t.api_token.as_ref().map(read).transpose()?;
    Ok(TenantSpec {
        id,
        name: t.name.clone(),
        settings,
        secrets,
        sources,
        api_token,
    })
}
