//! Intake: a new run, its first step, its first audit entry and the delivery that caused it,
//! committed together, so a delivery seen once is seen forever (until purged) and a retry or a
//! replay names the existing run instead of starting another.

use steward_core::{IncidentRef, RunId, SourceName};

use crate::codec::{self, MAX_DOCUMENT_BYTES};
use crate::content::{self, Column};
use crate::runs::{check_state, fetched_number, insert_step, step_columns, step_row};
use crate::store::WriteTx;
use crate::vault::DataKey;
use crate::{AuditDraft, Store, StoreError, TenantScope};

/// The longest delivery id accepted.
const MAX_DELIVERY_ID_BYTES: usize = 256;

/// A run to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    pub id: RunId,
    /// The webhook source that delivered the trigger, if any.
    pub source: Option<SourceName>,
    /// The sender's delivery id (1–256 printable bytes), unique per tenant and source. A run
    /// with no source may still carry one (an API idempotency key, say); it is then unique
    /// among the tenant's source-less runs.
    pub delivery_id: Option<String>,
    /// The incident change the run is for, when the trigger names it (`{sys_id}@{unix ms}` of
    /// its `sys_updated_on`): unique per tenant across every source, so a webhook delivered
    /// after the catch-up pass started a run for its change (or the other way round) is a
    /// `Duplicate` of that run.
    pub change: Option<String>,
    pub incident: IncidentRef,
    /// The trigger as received, at most 1 MiB as JSON.
    pub trigger: serde_json::Value,
    pub state: String,
    /// Step 0: (kind, body).
    pub first_step: (String, serde_json::Value),
    pub audit: AuditDraft,
}

/// What intake did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// A new run.
    Created(RunId),
    /// The delivery was seen before; this is the run it created. Nothing was written.
    Duplicate(RunId),
}

/// The `deliveries.source` key of a run without a source. Source names are never empty.
const NO_SOURCE: &str = "";

/// The `deliveries.source` key under which incident changes are claimed; no source name can
/// hold `~`.
const CHANGES: &str = "~change";

/// A run that passed intake's checks, with its documents already encoded and sealed, on its
/// way to the intake batcher.
pub(crate) struct ValidRun {
    run: NewRun,
    /// The trigger, sealed.
    trigger: String,
    /// Step 0's body, sealed.
    step_body: String,
    /// The store's time when intake was called, stamped on the delivery, run and step.
    now: i64,
}

impl ValidRun {
    /// Checks `run`, encodes its trigger and first step and seals both with `key`.
    fn new(run: NewRun, now: i64, scope: &TenantScope, key: &DataKey) -> Result<Self, StoreError> {
        check_state(&run.state)?;
        codec::incident_columns(&run.incident)?;
        let trigger = codec::json_text(&run.trigger, "run trigger", MAX_DOCUMENT_BYTES)?;
        let step_body = step_columns(&run.first_step.0, &run.first_step.1)?;
        let id = run.id.to_string();
        let trigger = content::seal(key, scope.id(), Column::RunTrigger, &id, &trigger);
        let step_body = content::seal(
            key,
            scope.id(),
            Column::StepBody,
            &step_row(&id, 0),
            &step_body,
        );
        if let Some(change) = &run.change {
            codec::check_text(change, "incident change", MAX_DELIVERY_ID_BYTES)?;
        }
        if let Some(id) = &run.delivery_id {
            codec::check_text(id, "delivery id", MAX_DELIVERY_ID_BYTES)?;
        }
        Ok(Self {
            run,
            trigger,
            step_body,
            now,
        })
    }
}

impl Store {
    /// Records a new run atomically: the delivery (if any), the run, step 0 and the audit
    /// entry. A delivery id already recorded for the tenant and source yields `Duplicate` with
    /// the original run's id and writes nothing. Concurrent calls share one transaction and
    /// one commit (group commit), each under a savepoint of its own, so one call's failure
    /// undoes only its own rows; every call returns only after the commit that covers it.
    /// The trigger and step 0 are sealed with the tenant's data key before the run is handed
    /// to the batcher, so sealing stays out of the single writer's transaction.
    pub async fn record_intake(
        &self,
        scope: &TenantScope,
        run: NewRun,
    ) -> Result<IntakeOutcome, StoreError> {
        let key = self.content_key(scope).await?;
        let valid = ValidRun::new(run, self.now(), scope, &key)?;
        self.submit_intake(scope, valid).await
    }

    /// Writes one validated run inside `tx` (the intake batcher's transaction, under the run's
    /// own savepoint): the delivery, the run, step 0 and the audit entry, or nothing but the
    /// answer `Duplicate` when the delivery was recorded before, in this transaction or an
    /// earlier one.
    pub(crate) async fn intake_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        valid: &ValidRun,
    ) -> Result<IntakeOutcome, StoreError> {
        let (run, now) = (&valid.run, valid.now);
        let (incident_by, incident_value) = codec::incident_columns(&run.incident)?;
        self.enter_tenant(tx, scope).await?;
        if let Some(existing) = self.claim_delivery(tx, scope, run, now).await? {
            return Ok(IntakeOutcome::Duplicate(existing));
        }
        if let Some(change) = &run.change {
            let claimed = self.claim(tx, scope, CHANGES, change, run.id, now).await?;
            if let Some(existing) = claimed {
                // A copy of a change another run deals with: this delivery now names that
                // run, so its redeliveries are answered the same way.
                if let Some(delivery_id) = &run.delivery_id {
                    sqlx::query(
                        "UPDATE deliveries SET run_id = $1 WHERE tenant_id = $2 AND source = $3 \
                         AND delivery_id = $4",
                    )
                    .bind(existing.to_string())
                    .bind(scope.id())
                    .bind(run.source.as_ref().map_or(NO_SOURCE, SourceName::as_str))
                    .bind(delivery_id)
                    .execute(&mut **tx)
                    .await?;
                }
                return Ok(IntakeOutcome::Duplicate(existing));
            }
        }
        sqlx::query(
            "INSERT INTO runs (tenant_id, id, source, delivery_id, incident_by, incident_value, \
             trigger_body, state, steps, last_error, created_at, updated_at, fetched_number) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, NULL, $9, $9, $10)",
        )
        .bind(scope.id())
        .bind(run.id.to_string())
        .bind(run.source.as_ref().map(SourceName::as_str))
        .bind(&run.delivery_id)
        .bind(incident_by)
        .bind(incident_value)
        .bind(&valid.trigger)
        .bind(&run.state)
        .bind(now)
        .bind(fetched_number(&run.first_step.0, &run.first_step.1))
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            codec::conflict_on_duplicate(e, || format!("run {} already exists", run.id))
        })?;
        insert_step(
            tx,
            scope,
            run.id,
            0,
            &run.first_step.0,
            &valid.step_body,
            now,
        )
        .await?;
        self.append_audit_in(tx, scope, &run.audit).await?;
        Ok(IntakeOutcome::Created(run.id))
    }

    /// Deletes delivery records received more than `older_than_millis` ago (by the store's
    /// clock), across all tenants; returns how many. The runs stay. Keep the window well past
    /// every sender's retry schedule (days, not minutes): a delivery retried after its record
    /// is purged starts a new run. Platform level.
    pub async fn purge_deliveries(&self, older_than_millis: i64) -> Result<u64, StoreError> {
        if older_than_millis < 0 {
            return Err(StoreError::Invalid(
                "the purge window must not be negative".into(),
            ));
        }
        let cutoff = self.now().saturating_sub(older_than_millis);
        let mut tx = self.begin_platform_write().await?;
        let done = sqlx::query("DELETE FROM deliveries WHERE received_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if done.rows_affected() > 0 {
            tracing::info!(purged = done.rows_affected(), "purged old delivery records");
        }
        Ok(done.rows_affected())
    }

    /// Records the run's delivery; returns the existing run's id if it was already recorded.
    async fn claim_delivery(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        run: &NewRun,
        now: i64,
    ) -> Result<Option<RunId>, StoreError> {
        let Some(delivery_id) = &run.delivery_id else {
            return Ok(None);
        };
        let source = run.source.as_ref().map_or(NO_SOURCE, SourceName::as_str);
        self.claim(tx, scope, source, delivery_id, run.id, now)
            .await
    }

    /// Records `key` under `source` for `run`; returns the run that recorded it first, if
    /// another did.
    async fn claim(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        source: &str,
        key: &str,
        run: RunId,
        now: i64,
    ) -> Result<Option<RunId>, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO deliveries (tenant_id, source, delivery_id, run_id, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, source, delivery_id) DO NOTHING",
        )
        .bind(scope.id())
        .bind(source)
        .bind(key)
        .bind(run.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(None);
        }
        let existing: String = sqlx::query_scalar(
            "SELECT run_id FROM deliveries \
             WHERE tenant_id = $1 AND source = $2 AND delivery_id = $3",
        )
        .bind(scope.id())
        .bind(source)
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
        codec::run_id(&existing).map(Some)
    }
}
