-- Steward schema, version 17: the report and retention indexes hold only what those reads ask
-- for.
--
-- run_steps_by_tenant_kind served the reports' reads of a few step kinds, yet every step of
-- every run was entered in it, and runs_by_updated served retention's read of finished runs,
-- yet every run was entered in it and moved within it at each change of state. Both are
-- keyed by tenant first, so each intake batch and each batch of steps dirtied a page of each
-- per tenant it touched. Each now holds only the rows its read looks for: the step kinds the
-- reports count, and the runs in a state a run never leaves. The reads name the same list
-- (a partial index serves a query only when the query states its condition), and the list of
-- finished states is the one `FINISHED_STATES` names in the code.

DROP INDEX run_steps_by_tenant_kind;
CREATE INDEX run_steps_by_tenant_kind ON run_steps (tenant_id, kind, at)
    WHERE kind IN ('write_intended', 'policy_decided', 'triaged', 'parked', 'finished');

DROP INDEX runs_by_updated;
CREATE INDEX runs_by_updated ON runs (tenant_id, updated_at)
    WHERE state IN ('completed', 'rejected', 'denied', 'stale', 'failed', 'expired',
                    'cancelled', 'shadowed');
