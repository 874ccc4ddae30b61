//! Tenant leases (migration 0015): which node runs a tenant's supervisor when several nodes
//! share one database, and the fencing token that keeps a node that lost its lease from
//! writing.
//!
//! A lease is held by one node until `expires_at` on the store's clock. Its holder renews it
//! well before then; another node may take it only once it has lapsed (or was released). Each
//! change of hands, and each taking after a lapse, adds one to the lease's fencing token, which
//! never goes back: a release keeps the row and its token. A write made for a tenant names the
//! token it was made under ([`Store::check_fence`], inside the write's own transaction) and is
//! refused once the row holds a larger one, so a node that paused past its lease (a long GC or
//! a stalled VM) and wakes up still believing it owns the tenant cannot write over the new
//! owner.
//!
//! The nodes' clocks are compared with each other through `expires_at`: a lease is safe against
//! a second holder only while the clocks agree to within the margin between renewal and
//! expiry. The fencing check does not depend on clocks at all.

use serde::Serialize;
use sqlx::FromRow;
use steward_core::TenantId;

use crate::{Store, StoreError, TenantScope, codec};

/// What a node tells the store about the leases it holds, so that journal writes are fenced
/// (set with [`Store::fence_with`]).
pub trait Fencing: Send + Sync + std::fmt::Debug {
    /// This node's id, as it takes leases.
    fn node(&self) -> &str;
    /// The fencing token of the lease this node holds for `tenant`, if it holds one.
    fn token(&self, tenant: &TenantId) -> Option<i64>;
}

/// The longest node id a lease takes.
pub const MAX_NODE_ID_BYTES: usize = 128;

/// The shortest and longest lease a node may ask for, in ms.
const TTL_RANGE_MS: std::ops::RangeInclusive<i64> = 1_000..=600_000;

/// A tenant's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub tenant: TenantId,
    /// The node that holds (or last held) it.
    pub holder: String,
    /// The fencing token: larger for every later holding.
    pub token: i64,
    /// When it lapses unless renewed, Unix ms; 0 once released.
    pub expires_at: i64,
    /// When the current holding began, Unix ms.
    pub acquired_at: i64,
}

impl Lease {
    /// Whether the lease is in force at `now` (Unix ms).
    pub fn live_at(&self, now: i64) -> bool {
        self.expires_at > now
    }
}

#[derive(FromRow)]
struct LeaseRow {
    tenant_id: String,
    holder: String,
    token: i64,
    expires_at: i64,
    acquired_at: i64,
}

impl TryFrom<LeaseRow> for Lease {
    type Error = StoreError;
    fn try_from(row: LeaseRow) -> Result<Self, StoreError> {
        Ok(Lease {
            tenant: codec::tenant_id(&row.tenant_id)?,
            holder: row.holder,
            token: row.token,
            expires_at: row.expires_at,
            acquired_at: row.acquired_at,
        })
    }
}

const LEASE_COLUMNS: &str = "tenant_id, holder, token, expires_at, acquired_at";

/// Refuses a node id that is empty, too long, or holds anything but letters, digits and
/// `.`, `_`, `-`, `:` (a pod name or host name fits).
fn check_node(node: &str) -> Result<(), StoreError> {
    let ok = !node.is_empty()
        && node.len() <= MAX_NODE_ID_BYTES
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "node id `{}` must be 1 to {MAX_NODE_ID_BYTES} letters, digits, `.`, `_`, `-` or `:`",
            codec::clip(node)
        )))
    }
}

fn check_ttl(ttl_ms: i64) -> Result<(), StoreError> {
    if TTL_RANGE_MS.contains(&ttl_ms) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "a lease lasts {} to {} ms, not {ttl_ms}",
            TTL_RANGE_MS.start(),
            TTL_RANGE_MS.end()
        )))
    }
}

impl Store {
    /// Takes the tenant's lease for `node` for `ttl_ms`, or renews it if `node` holds it:
    /// the lease as now stored, or None while another node holds it. Taking a lease that was
    /// never held gives token 1; taking one that lapsed or was released (by any node, this
    /// one included) gives the stored token plus one; a renewal keeps the token. Platform
    /// level; NotFound for a tenant that is not registered.
    pub async fn acquire_lease(
        &self,
        tenant: &TenantId,
        node: &str,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        check_node(node)?;
        check_ttl(ttl_ms)?;
        let now = self.now();
        let mut tx = self.begin_platform_write().await?;
        let known = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_none() {
            return Err(StoreError::NotFound(format!(
                "tenant `{tenant}` is not registered"
            )));
        }
        // One statement, so that two nodes asking at once are ordered by the row: the second
        // finds the first's lease in force and gets nothing back.
        let sql = format!(
            "INSERT INTO tenant_leases ({LEASE_COLUMNS}) VALUES ($1, $2, 1, $3, $4) \
             ON CONFLICT (tenant_id) DO UPDATE SET \
               token = CASE WHEN tenant_leases.holder = excluded.holder \
                 AND tenant_leases.expires_at > $4 THEN tenant_leases.token \
                 ELSE tenant_leases.token + 1 END, \
               acquired_at = CASE WHEN tenant_leases.holder = excluded.holder \
                 AND tenant_leases.expires_at > $4 THEN tenant_leases.acquired_at \
                 ELSE excluded.acquired_at END, \
               holder = excluded.holder, \
               expires_at = excluded.expires_at \
             WHERE tenant_leases.holder = excluded.holder OR tenant_leases.expires_at <= $4 \
             RETURNING {LEASE_COLUMNS}"
        );
        let row: Option<LeaseRow> = sqlx::query_as(&sql)
            .bind(tenant.as_str())
            .bind(node)
            .bind(now + ttl_ms)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(Lease::try_from).transpose()
    }

    /// Extends a lease `node` holds under `token` to `ttl_ms` from now: the lease as stored,
    /// or None when it lapsed or another holding took its place (the caller must stop the
    /// tenant's work at once). Platform level.
    pub async fn renew_lease(
        &self,
        tenant: &TenantId,
        node: &str,
        token: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        check_node(node)?;
        check_ttl(ttl_ms)?;
        let now = self.now();
        let mut tx = self.begin_platform_write().await?;
        let sql = format!(
            "UPDATE tenant_leases SET expires_at = $1 WHERE tenant_id = $2 AND holder = $3 \
             AND token = $4 AND expires_at > $5 RETURNING {LEASE_COLUMNS}"
        );
        let row: Option<LeaseRow> = sqlx::query_as(&sql)
            .bind(now + ttl_ms)
            .bind(tenant.as_str())
            .bind(node)
            .bind(token)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(Lease::try_from).transpose()
    }

    /// Gives up a lease `node` holds under `token`, so that another node may take it at once
    /// (a drain). False when it was not held so (already lapsed and taken). The row and its
    /// token stay. Platform level.
    pub async fn release_lease(
        &self,
        tenant: &TenantId,
        node: &str,
        token: i64,
    ) -> Result<bool, StoreError> {
        check_node(node)?;
        let mut tx = self.begin_platform_write().await?;
        let done = sqlx::query(
            "UPDATE tenant_leases SET expires_at = 0 WHERE tenant_id = $1 AND holder = $2 \
             AND token = $3",
        )
        .bind(tenant.as_str())
        .bind(node)
        .bind(token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }

    /// Every tenant's lease, live or not, by tenant id. Platform level.
    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.read_platform().await?;
        let sql = format!("SELECT {LEASE_COLUMNS} FROM tenant_leases ORDER BY tenant_id");
        let rows: Vec<LeaseRow> = sqlx::query_as(&sql).fetch_all(&mut *tx).await?;
        rows.into_iter().map(Lease::try_from).collect()
    }

    /// The tenant's lease as its own transactions see it; None when no node ever held it.
    pub async fn lease(&self, scope: &TenantScope) -> Result<Option<Lease>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let sql = format!("SELECT {LEASE_COLUMNS} FROM tenant_leases WHERE tenant_id = $1");
        let row: Option<LeaseRow> = sqlx::query_as(&sql)
            .bind(scope.id())
            .fetch_optional(&mut *tx)
            .await?;
        row.map(Lease::try_from).transpose()
    }

    /// Inside a write transaction of the scope's tenant: Fenced unless `token` is the
    /// tenant's current fencing token held by `node`. Lapse alone does not fence: a write
    /// under the newest token is still the newest holder's. On SQLite the single writer orders
    /// the check and any takeover. On PostgreSQL the row is read, not locked (a row lock needs
    /// an update grant the service role must not have), so a takeover that commits between
    /// this check and the write's commit lets that one write through; the journal's
    /// compare-and-set then orders it before the new holder's next step, which folds it in,
    /// so it is neither lost nor doubled.
    pub(crate) async fn check_fence(
        &self,
        tx: &mut crate::store::WriteTx,
        scope: &TenantScope,
        node: &str,
        token: i64,
    ) -> Result<(), StoreError> {
        let sql = "SELECT holder, token FROM tenant_leases WHERE tenant_id = $1";
        let row: Option<(String, i64)> = sqlx::query_as(sql)
            .bind(scope.id())
            .fetch_optional(&mut **tx)
            .await?;
        match row {
            Some((holder, current)) if holder == node && current == token => Ok(()),
            Some((holder, current)) => Err(StoreError::Fenced(format!(
                "tenant `{}` is leased to `{}` under token {current}, not to `{}` \
                 under token {token}",
                scope.tenant(),
                codec::clip(&holder),
                codec::clip(node)
            ))),
            None => Err(StoreError::Fenced(format!(
                "tenant `{}` has no lease",
                scope.tenant()
            ))),
        }
    }
}

/// The PostgreSQL channel on which a node that does not own a tenant tells the owner that a
/// run has something to do (a new run, a recorded click, a due timer).
pub const WAKE_CHANNEL: &str = "steward_wake";

/// A wake-up that reached this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeCall {
    /// A run of the tenant has something to do (a new run, a recorded click, a due timer).
    Run {
        tenant: TenantId,
        run: steward_core::RunId,
    },
    /// The tenant's settings changed: its owner must start its supervisor again from them.
    Reload { tenant: TenantId },
}

/// The payload word of a reload.
const RELOAD: &str = "reload";

impl WakeCall {
    /// The tenant the call is for.
    pub fn tenant(&self) -> &TenantId {
        match self {
            Self::Run { tenant, .. } | Self::Reload { tenant } => tenant,
        }
    }

    fn encode(&self) -> String {
        match self {
            Self::Run { tenant, run } => format!("{tenant} {run}"),
            Self::Reload { tenant } => format!("{tenant} {RELOAD}"),
        }
    }

    /// Reads a payload as [`Store::ring`] wrote it; None for anything else.
    pub fn decode(payload: &str) -> Option<Self> {
        let (tenant, what) = payload.split_once(' ')?;
        let tenant = TenantId::parse(tenant).ok()?;
        if what == RELOAD {
            return Some(Self::Reload { tenant });
        }
        Some(Self::Run {
            tenant,
            run: what.parse().ok()?,
        })
    }
}

/// The connection a node listens for wake-ups on (PostgreSQL `LISTEN`).
pub struct WakeListener {
    listener: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for WakeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeListener").finish_non_exhaustive()
    }
}

impl WakeListener {
    /// The next wake-up. A payload that does not decode is skipped with a warning. An error
    /// means the connection was lost: wake-ups sent meanwhile are gone, so the caller should
    /// listen again and look at the durable state (unfinished runs) once.
    pub async fn recv(&mut self) -> Result<WakeCall, StoreError> {
        loop {
            let note = self.listener.recv().await?;
            match WakeCall::decode(note.payload()) {
                Some(call) => return Ok(call),
                None => tracing::warn!(
                    payload = %codec::clip(note.payload()),
                    "A wake-up that does not name a tenant and run was ignored."
                ),
            }
        }
    }
}

impl Store {
    /// Tells whichever node owns the call's tenant what it must do (PostgreSQL `NOTIFY` on
    /// [`WAKE_CHANNEL`]). Nothing is lost if no node listens: a run is durable, and an owner
    /// looks at every unfinished run when it takes a tenant and on its rounds; a node that
    /// takes a tenant starts its supervisor from the stored settings. On SQLite, which one
    /// node serves, it does nothing.
    pub async fn ring(&self, call: &WakeCall) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(call.encode())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A connection listening for wake-ups on [`WAKE_CHANNEL`], as the service role.
    /// Invalid on SQLite.
    pub async fn listen_for_wakes(&self) -> Result<WakeListener, StoreError> {
        use secrecy::ExposeSecret as _;
        let Some(url) = self.listen_url() else {
            return Err(StoreError::Invalid(
                "wake-ups between nodes need PostgreSQL".into(),
            ));
        };
        let mut listener = sqlx::postgres::PgListener::connect(url.expose_secret()).await?;
        listener.listen(WAKE_CHANNEL).await?;
        Ok(WakeListener { listener })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_calls_round_trip_and_anything_else_is_refused() {
        let tenant = TenantId::parse("us-acme").unwrap();
        let run = steward_core::RunId::new();
        for call in [
            WakeCall::Run {
                tenant: tenant.clone(),
                run,
            },
            WakeCall::Reload {
                tenant: tenant.clone(),
            },
        ] {
            assert_eq!(WakeCall::decode(&call.encode()), Some(call.clone()));
            assert_eq!(call.tenant(), &tenant);
        }
        let long = "x".repeat(10_000);
        for bad in [
            "",
            " ",
            "us-acme",
            "us-acme ",
            "us-acme not-a-run",
            "us-acme reload extra",
            "US ACME reload",
            "../etc reload",
            &format!("us-acme {run} trailing"),
            &long,
            "us-acme\u{0} reload",
        ] {
            assert_eq!(WakeCall::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn node_ids_and_lease_times_are_bounded() {
        assert!(check_node("steward-0").is_ok());
        assert!(check_node("pod.ns:7_a").is_ok());
        assert!(check_node(&"n".repeat(MAX_NODE_ID_BYTES)).is_ok());
        for bad in [
            "",
            "a b",
            "a/b",
            "ü",
            "a\nb",
            &"n".repeat(MAX_NODE_ID_BYTES + 1),
        ] {
            assert!(check_node(bad).is_err(), "{bad:?}");
        }
        assert!(check_ttl(1_000).is_ok() && check_ttl(600_000).is_ok());
        assert!(check_ttl(999).is_err() && check_ttl(600_001).is_err() && check_ttl(-5).is_err());
    }
}
