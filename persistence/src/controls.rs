//! Controls over what runs may do: write pauses (the kill switch, for one tenant or the whole
//! platform) and consumption meters (budgets counted in fixed windows).
//!
//! A pause is a row: present means paused. Every change appends an audit entry in the same
//! transaction, to the tenant's chain or, for the platform pause, to the chain of every tenant
//! not offboarded, so each tenant's evidence says when its writes stopped, who stopped them and
//! why.
//!
//! # Meters and why two runs cannot both pass a full budget
//!
//! A meter is a counter per tenant, meter name and window start. [`Store::reserve_budget`]
//! adds to one or more meters in one transaction, each with a conditional upsert: the row is
//! inserted with the amount, or its `used` is raised only if the sum stays within the limit
//! (`ON CONFLICT … DO UPDATE … WHERE used <= limit - amount`, which cannot overflow); a meter
//! the statement did not change refuses the whole reservation and the transaction rolls back
//! (PostgreSQL; SQLite takes a batch's reservations together, see below). The check and the
//! increment are one statement on one row, so they cannot be split by another writer: on
//! SQLite every write transaction holds the database's write lock from its start, and on
//! PostgreSQL the upsert locks the row and re-evaluates the condition on the newest version
//! once a concurrent writer commits. Two runs asking at once for a meter with room for one
//! therefore get one grant and one refusal. Meters are taken in name order, so two
//! reservations never wait on each other's rows in opposite orders.
//!
//! On SQLite the reservations of one group-commit batch are taken together instead
//! ([`Store::reserve_all_in`]): the windows they ask of are read with one statement, each
//! reservation is granted or refused in turn against what the earlier ones left, and the
//! windows that changed are written back with one statement. The same argument holds: the
//! batch's transaction holds SQLite's only write lock from its first statement to its commit,
//! so no other writer can change a window between the read and the write.

use serde::Serialize;
use serde_json::json;
use sqlx::{Executor, FromRow};
use steward_core::TenantId;

use crate::codec;
use crate::intake::{Script, value_rows};
use crate::store::WriteTx;
use crate::{AuditDraft, Authenticator, Store, StoreError, TenantScope};

/// How long a meter's windows are kept after they start: longer than the longest window.
const METER_RETENTION_MS: i64 = 2 * 86_400_000;

/// How often, by the store's clock, one process removes a tenant's expired meter windows.
const METER_PRUNE_EVERY_MS: i64 = 10 * 60_000;

/// A pause of writes, on the platform (`tenant` None) or for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WritePause {
    pub tenant: Option<TenantId>,
    pub reason: String,
    /// Who paused: `operator:<name>` or `token:tok_<id>`.
    pub actor: String,
    /// Unix ms.
    pub paused_at: i64,
}

impl WritePause {
    /// Where the pause applies, in words: `the platform` or `tenant <id>`.
    pub fn place(&self) -> String {
        match &self.tenant {
            Some(t) => format!("tenant {t}"),
            None => "the platform".into(),
        }
    }
}

/// What a pause or resume did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PauseChange {
    /// Whether writes were paused before the call.
    pub was_paused: bool,
    /// Whether they are paused after it.
    pub paused: bool,
}

/// One meter of a reservation: add `amount` to `meter`'s window starting at `window_start`
/// unless that takes it over `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterAsk {
    pub meter: String,
    pub window_start: i64,
    pub limit: u64,
    pub amount: u64,
}

/// A change to one meter window that a journal step carries ([`crate::StepWrite::charges`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterCharge {
    pub meter: String,
    pub window_start: i64,
    /// Added to the window's use, which never goes below zero.
    pub delta: i64,
}

/// The answer to [`Store::reserve_budget`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Every meter took its amount.
    Granted,
    /// This meter had no room; nothing was added to any meter.
    Refused {
        meter: String,
        window_start: i64,
        /// What the window had used when it refused.
        used: u64,
        /// How many asks this window has refused, this one included.
        refused: u64,
    },
}

/// A meter's use in one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct MeterUsage {
    pub meter: String,
    pub window_start: i64,
    pub used: i64,
    pub refused: i64,
}

#[derive(FromRow)]
struct PauseRow {
    tenant_id: Option<String>,
    reason: String,
    actor: String,
    paused_at: i64,
}

impl TryFrom<PauseRow> for WritePause {
    type Error = StoreError;
    fn try_from(row: PauseRow) -> Result<Self, StoreError> {
        Ok(WritePause {
            tenant: row.tenant_id.as_deref().map(codec::tenant_id).transpose()?,
            reason: row.reason,
            actor: row.actor,
            paused_at: row.paused_at,
        })
    }
}

fn check_pause(actor: &str, reason: &str) -> Result<(), StoreError> {
    codec::check_text(actor, "actor", 256)?;
    codec::check_len(reason, "reason", 1000)?;
    if reason.trim().is_empty() {
        return Err(StoreError::Invalid("a reason is required".into()));
    }
    Ok(())
}

fn pause_audit(
    kind: &str,
    actor: &str,
    place: &str,
    reason: &str,
    change: PauseChange,
) -> AuditDraft {
    AuditDraft {
        kind: kind.into(),
        run_id: None,
        actor: actor.into(),
        body: json!({
            "scope": place,
            "reason": reason,
            "was_paused": change.was_paused,
            "paused": change.paused,
        }),
    }
}

impl Store {
    /// The pauses that stop the scope's tenant's writes now: the platform's and its own.
    pub async fn write_pauses(&self, scope: &TenantScope) -> Result<Vec<WritePause>, StoreError> {
        // One statement, the platform's pause first: both are read in one snapshot.
        let mut tx = self.read_one_as(scope).await?;
        let rows: Vec<PauseRow> = sqlx::query_as(
            "SELECT NULL AS tenant_id, reason, actor, paused_at, 0 AS place \
             FROM platform_write_pause UNION ALL \
             SELECT tenant_id, reason, actor, paused_at, 1 AS place FROM tenant_write_pauses \
             WHERE tenant_id = $1 ORDER BY place",
        )
        .bind(scope.id())
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter().map(WritePause::try_from).collect()
    }

    /// Every pause: the platform's, then each tenant's by id. Platform level.
    pub async fn all_write_pauses(&self) -> Result<Vec<WritePause>, StoreError> {
        let mut tx = self.read_platform().await?;
        let mut rows: Vec<PauseRow> = sqlx::query_as(
            "SELECT NULL AS tenant_id, reason, actor, paused_at FROM platform_write_pause",
        )
        .fetch_all(&mut *tx)
        .await?;
        let tenants: Vec<PauseRow> = sqlx::query_as(
            "SELECT tenant_id, reason, actor, paused_at FROM tenant_write_pauses \
             ORDER BY tenant_id LIMIT 10000",
        )
        .fetch_all(&mut *tx)
        .await?;
        rows.extend(tenants);
        rows.into_iter().map(WritePause::try_from).collect()
    }

    /// Pauses the scope's tenant's writes (a pause already in place takes the new reason and
    /// actor) and audits `writes.paused`, in one transaction.
    pub async fn pause_tenant_writes(
        &self,
        scope: &TenantScope,
        actor: &str,
        reason: &str,
    ) -> Result<PauseChange, StoreError> {
        check_pause(actor, reason)?;
        let mut tx = self.begin_tenant_write(scope).await?;
        let was_paused = tenant_paused(&mut tx, scope).await?;
        sqlx::query(
            "INSERT INTO tenant_write_pauses (tenant_id, reason, actor, paused_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET \
             reason = excluded.reason, actor = excluded.actor",
        )
        .bind(scope.id())
        .bind(reason)
        .bind(actor)
        .bind(self.now())
        .execute(&mut *tx)
        .await?;
        let change = PauseChange {
            was_paused,
            paused: true,
        };
        let place = format!("tenant {}", scope.tenant());
        let draft = pause_audit("writes.paused", actor, &place, reason, change);
        self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Ends the scope's tenant's pause, if any, and audits `writes.resumed`, in one
    /// transaction. The platform's pause, if any, still holds.
    pub async fn resume_tenant_writes(
        &self,
        scope: &TenantScope,
        actor: &str,
        reason: &str,
    ) -> Result<PauseChange, StoreError> {
        check_pause(actor, reason)?;
        let mut tx = self.begin_tenant_write(scope).await?;
        let was_paused = tenant_paused(&mut tx, scope).await?;
        sqlx::query("DELETE FROM tenant_write_pauses WHERE tenant_id = $1")
            .bind(scope.id())
            .execute(&mut *tx)
            .await?;
        let change = PauseChange {
            was_paused,
            paused: false,
        };
        let place = format!("tenant {}", scope.tenant());
        let draft = pause_audit("writes.resumed", actor, &place, reason, change);
        self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Pauses (`paused` true) or resumes the writes of the whole platform, and appends
    /// `writes.paused` or `writes.resumed` to the chain of every tenant not offboarded, all in
    /// one transaction. Platform level. A tenant created while this runs is not in the
    /// transaction's list; the pause still holds for it, without an entry in its chain.
    pub async fn set_platform_writes(
        &self,
        paused: bool,
        actor: &str,
        reason: &str,
    ) -> Result<PauseChange, StoreError> {
        check_pause(actor, reason)?;
        let mut tx = self.begin_platform_write().await?;
        let was_paused: Option<i64> =
            sqlx::query_scalar("SELECT id FROM platform_write_pause WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        if paused {
            sqlx::query(
                "INSERT INTO platform_write_pause (id, reason, actor, paused_at) \
                 VALUES (1, $1, $2, $3) ON CONFLICT (id) DO UPDATE SET \
                 reason = excluded.reason, actor = excluded.actor",
            )
            .bind(reason)
            .bind(actor)
            .bind(self.now())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("DELETE FROM platform_write_pause WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }
        let tenants: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM tenants WHERE offboarded_at IS NULL ORDER BY id LIMIT 10000",
        )
        .fetch_all(&mut *tx)
        .await?;
        self.leave_platform(&mut tx).await?;
        let change = PauseChange {
            was_paused: was_paused.is_some(),
            paused,
        };
        let kind = if paused {
            "writes.paused"
        } else {
            "writes.resumed"
        };
        let draft = pause_audit(kind, actor, "the platform", reason, change);
        for id in tenants {
            let scope = TenantScope::assume(codec::tenant_id(&id)?, Authenticator::OperatorToken);
            self.set_tenant(&mut tx, scope.id()).await?;
            self.append_audit_in(&mut tx, &scope, &draft).await?;
        }
        tx.commit().await?;
        Ok(change)
    }

    /// Ends the platform role of `tx` (PostgreSQL), back to the service role, for statements
    /// the platform role may not make (audit appends).
    async fn leave_platform(&self, tx: &mut WriteTx) -> Result<(), StoreError> {
        if self.is_postgres() {
            tx.execute("SET LOCAL ROLE NONE").await?;
        }
        Ok(())
    }

    /// Adds each ask's amount to its meter, all or none, in one transaction (see the module
    /// docs for why concurrent reservations cannot overdraw a meter). Windows of the tenant
    /// older than two days are removed in the same transaction when ten minutes of the
    /// store's clock have passed since this process last removed them. Reservations share the
    /// intake batcher's transactions and commits, under a savepoint where one is needed: every
    /// run takes one as it starts, and a commit each would cap how fast runs start.
    pub async fn reserve_budget(
        &self,
        scope: &TenantScope,
        asks: &[MeterAsk],
    ) -> Result<Reservation, StoreError> {
        let mut asks = asks.to_vec();
        asks.sort_by(|a, b| (&a.meter, a.window_start).cmp(&(&b.meter, b.window_start)));
        for ask in &asks {
            codec::check_text(&ask.meter, "meter", 128)?;
        }
        self.submit_reservation(scope, asks).await
    }

    /// Which of `tenants` are registered, with one statement (SQLite: no tenant need be named
    /// for row-level security).
    pub(crate) async fn registered_tenants(
        &self,
        tx: &mut WriteTx,
        tenants: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        if tenants.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        let list = (1..=tenants.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT id FROM tenants WHERE id IN ({list})");
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for tenant in tenants {
            query = query.bind(*tenant);
        }
        Ok(query.fetch_all(&mut **tx).await?.into_iter().collect())
    }

    /// Removes the scope's tenant's meter windows older than two days, at most once every
    /// [`METER_PRUNE_EVERY_MS`] of the store's clock per tenant and process: old windows are
    /// never read, so pruning on every reservation would only cost the batch a statement per
    /// tenant.
    pub(crate) async fn prune_meters_when_due(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let due = {
            let mut pruned = self
                .meters_pruned()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = pruned
                .get(scope.id())
                .is_none_or(|&at| now < at || now - at >= METER_PRUNE_EVERY_MS);
            if due {
                pruned.insert(scope.id().to_owned(), now);
            }
            due
        };
        if due {
            sqlx::query("DELETE FROM budget_meters WHERE tenant_id = $1 AND window_start < $2")
                .bind(scope.id())
                .bind(now - METER_RETENTION_MS)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Takes every ask (in meter order) inside `tx`; Refused names the first meter without
    /// room, and the caller then rolls back what the earlier asks took.
    pub(crate) async fn reserve_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        asks: &[MeterAsk],
    ) -> Result<Reservation, StoreError> {
        for ask in asks {
            if !take(tx, scope, ask).await? {
                return Ok(Reservation::Refused {
                    meter: ask.meter.clone(),
                    window_start: ask.window_start,
                    used: 0,
                    refused: 0,
                });
            }
        }
        Ok(Reservation::Granted)
    }

    /// Counts a refusal of `ask` inside `tx` and reports the window's use.
    pub(crate) async fn refuse_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        ask: &MeterAsk,
    ) -> Result<Result<Reservation, StoreError>, StoreError> {
        sqlx::query(
            "INSERT INTO budget_meters (tenant_id, meter, window_start, used, refused) \
             VALUES ($1, $2, $3, 0, 1) ON CONFLICT (tenant_id, meter, window_start) \
             DO UPDATE SET refused = budget_meters.refused + 1",
        )
        .bind(scope.id())
        .bind(&ask.meter)
        .bind(ask.window_start)
        .execute(&mut **tx)
        .await?;
        let (used, refused): (i64, i64) = sqlx::query_as(
            "SELECT used, refused FROM budget_meters \
             WHERE tenant_id = $1 AND meter = $2 AND window_start = $3",
        )
        .bind(scope.id())
        .bind(&ask.meter)
        .bind(ask.window_start)
        .fetch_one(&mut **tx)
        .await?;
        let count = |n: i64, what: &str| codec::to_u64(n, what);
        Ok((|| {
            Ok(Reservation::Refused {
                meter: ask.meter.clone(),
                window_start: ask.window_start,
                used: count(used, "meter use")?,
                refused: count(refused, "meter refusals")?,
            })
        })())
    }

    /// Adds `delta` (which may be negative: a reservation settled lower) to a meter's window
    /// without a limit, never below zero.
    pub async fn charge_budget(
        &self,
        scope: &TenantScope,
        meter: &str,
        window_start: i64,
        delta: i64,
    ) -> Result<(), StoreError> {
        codec::check_text(meter, "meter", 128)?;
        let mut tx = self.begin_tenant_write(scope).await?;
        charge_in(&mut tx, scope, meter, window_start, delta).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The scope's tenant's meters in windows starting at or after `since` (Unix ms), by
    /// meter and window.
    pub async fn budget_usage(
        &self,
        scope: &TenantScope,
        since: i64,
    ) -> Result<Vec<MeterUsage>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        Ok(sqlx::query_as(
            "SELECT meter, window_start, used, refused FROM budget_meters \
             WHERE tenant_id = $1 AND window_start >= $2 ORDER BY meter, window_start LIMIT 1000",
        )
        .bind(scope.id())
        .bind(since)
        .fetch_all(&mut *tx)
        .await?)
    }
}

/// Adds `delta` to one meter window inside `tx`, never below zero and never past the largest
/// integer (where SQLite would turn the sum into a float no reader could decode as a count);
/// the meter name is checked by the caller. Callers charge several windows in (meter, window)
/// order.
pub(crate) async fn charge_in(
    tx: &mut WriteTx,
    scope: &TenantScope,
    meter: &str,
    window_start: i64,
    delta: i64,
) -> Result<(), StoreError> {
    let mut script = Script::numbered();
    push_charge(&mut script, scope, meter, window_start, delta)?;
    script.execute(tx).await?;
    Ok(())
}

/// Appends to `script` the upsert that adds `delta` to a meter's window, kept between zero and
/// `i64::MAX`. It changes one row.
pub(crate) fn push_charge<'q>(
    script: &mut Script<'q>,
    scope: &'q TenantScope,
    meter: &'q str,
    window_start: i64,
    delta: i64,
) -> Result<(), StoreError> {
    script.statement(
        "INSERT INTO budget_meters (tenant_id, meter, window_start, used, refused) \
         VALUES (?, ?, ?, ?, 0) ON CONFLICT (tenant_id, meter, window_start) \
         DO UPDATE SET used = CASE \
         WHEN budget_meters.used > 9223372036854775807 - ? THEN 9223372036854775807 \
         WHEN budget_meters.used + ? < 0 THEN 0 ELSE budget_meters.used + ? END",
    );
    script.bind(scope.id())?;
    script.bind(meter)?;
    script.bind(window_start)?;
    script.bind(delta.max(0))?;
    script.bind(delta.max(0))?;
    script.bind(delta)?;
    script.bind(delta)
}

async fn tenant_paused(tx: &mut WriteTx, scope: &TenantScope) -> Result<bool, StoreError> {
    let row: Option<String> =
        sqlx::query_scalar("SELECT tenant_id FROM tenant_write_pauses WHERE tenant_id = $1")
            .bind(scope.id())
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.is_some())
}

/// Adds one ask to its meter if it fits; false when the meter has no room for it.
async fn take(tx: &mut WriteTx, scope: &TenantScope, ask: &MeterAsk) -> Result<bool, StoreError> {
    let amount = codec::to_i64(ask.amount, "meter amount")?;
    let limit = codec::to_i64(ask.limit, "meter limit")?;
    if amount > limit {
        return Ok(false);
    }
    let done = sqlx::query(
        "INSERT INTO budget_meters (tenant_id, meter, window_start, used, refused) \
         VALUES ($1, $2, $3, $4, 0) ON CONFLICT (tenant_id, meter, window_start) \
         DO UPDATE SET used = budget_meters.used + excluded.used \
         WHERE budget_meters.used <= $5 - excluded.used",
    )
    .bind(scope.id())
    .bind(&ask.meter)
    .bind(ask.window_start)
    .bind(amount)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One meter window a batch of reservations touches (SQLite, [`Store::reserve_all_in`]): what
/// it holds as the batch's reservations are taken in order, and whether it changed.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    used: i64,
    refused: i64,
    changed: bool,
}

/// A meter window: tenant, meter, window start.
type WindowKey<'a> = (&'a str, &'a str, i64);

/// What one reservation of a batch comes to, from the windows as the earlier ones left them:
/// every ask fits (and is added), or the first that does not is refused (and counted), the
/// rest untouched. The same rule as one reservation at a time: an ask fits when its amount is
/// within its limit and within what its window has left.
fn reserve_from<'a>(
    windows: &mut std::collections::HashMap<WindowKey<'a>, Window>,
    tenant: &'a str,
    asks: &'a [MeterAsk],
) -> Result<Reservation, StoreError> {
    let mut taken: Vec<(WindowKey<'a>, i64)> = Vec::with_capacity(asks.len());
    for ask in asks {
        let key = (tenant, ask.meter.as_str(), ask.window_start);
        let amount = codec::to_i64(ask.amount, "meter amount")?;
        let limit = codec::to_i64(ask.limit, "meter limit")?;
        let window = windows.get(&key).copied().unwrap_or_default();
        let earlier: i64 = taken
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, a)| a)
            .sum();
        let fits = amount <= limit
            && window
                .used
                .checked_add(earlier)
                .and_then(|u| u.checked_add(amount))
                .is_some_and(|total| total <= limit);
        if !fits {
            let window = windows.entry(key).or_default();
            window.refused = window.refused.saturating_add(1);
            window.changed = true;
            return Ok(Reservation::Refused {
                meter: ask.meter.clone(),
                window_start: ask.window_start,
                used: codec::to_u64(window.used, "meter use")?,
                refused: codec::to_u64(window.refused, "meter refusals")?,
            });
        }
        taken.push((key, amount));
    }
    for (key, amount) in taken {
        let window = windows.entry(key).or_default();
        window.used += amount;
        window.changed = true;
    }
    Ok(Reservation::Granted)
}

impl Store {
    /// SQLite: takes a batch's reservations (of registered tenants) inside `tx`, in the order
    /// given, with two statements for the whole batch instead of one or more per reservation:
    /// the windows they ask of are read at once, each reservation is granted or refused in
    /// turn against what the earlier ones left ([`reserve_from`]), and every window that
    /// changed is written back. SQLite's write transaction holds the database's only write
    /// lock from its start, so nothing can change a window between the read and the write.
    /// Each answer is the one [`Store::reserve_budget`] alone would have given it at its turn.
    pub(crate) async fn reserve_all_in(
        &self,
        tx: &mut WriteTx,
        reservations: &[(&TenantScope, &[MeterAsk])],
    ) -> Result<Vec<Result<Reservation, StoreError>>, StoreError> {
        let mut keys: Vec<WindowKey<'_>> = reservations
            .iter()
            .flat_map(|(scope, asks)| {
                asks.iter()
                    .map(|ask| (scope.id(), ask.meter.as_str(), ask.window_start))
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut windows = std::collections::HashMap::with_capacity(keys.len());
        // A statement's variables are bounded; 300 windows are 900 of them.
        for chunk in keys.chunks(300) {
            let sql = format!(
                "WITH k(tenant_id, meter, window_start) AS (VALUES {}) \
                 SELECT b.tenant_id, b.meter, b.window_start, b.used, b.refused \
                 FROM k JOIN budget_meters b ON b.tenant_id = k.tenant_id \
                 AND b.meter = k.meter AND b.window_start = k.window_start",
                value_rows(chunk.len(), 3)
            );
            let mut query = sqlx::query_as::<_, (String, String, i64, i64, i64)>(&sql);
            for (tenant, meter, start) in chunk {
                query = query.bind(*tenant).bind(*meter).bind(*start);
            }
            for (tenant, meter, start, used, refused) in query.fetch_all(&mut **tx).await? {
                let found = keys.binary_search(&(tenant.as_str(), meter.as_str(), start));
                let key = found
                    .map(|at| keys[at])
                    .map_err(|_| StoreError::Corrupt("a meter window nobody asked".into()))?;
                let window = Window {
                    used,
                    refused,
                    changed: false,
                };
                windows.insert(key, window);
            }
        }
        let answers: Vec<_> = reservations
            .iter()
            .map(|(scope, asks)| reserve_from(&mut windows, scope.id(), asks))
            .collect();
        let changed: Vec<(WindowKey<'_>, Window)> =
            windows.into_iter().filter(|(_, w)| w.changed).collect();
        for chunk in changed.chunks(300) {
            let sql = format!(
                "INSERT INTO budget_meters (tenant_id, meter, window_start, used, refused) \
                 VALUES {} ON CONFLICT (tenant_id, meter, window_start) \
                 DO UPDATE SET used = excluded.used, refused = excluded.refused",
                value_rows(chunk.len(), 5)
            );
            let mut query = sqlx::query(&sql);
            for ((tenant, meter, start), window) in chunk {
                query = query
                    .bind(*tenant)
                    .bind(*meter)
                    .bind(*start)
                    .bind(window.used)
                    .bind(window.refused);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(answers)
    }
}
