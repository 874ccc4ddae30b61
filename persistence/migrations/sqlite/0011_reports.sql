-- Steward schema, version 11: what per-tenant reports need that no other table keeps.
--
-- webhook_rejections counts the deliveries refused for one tenant's existing webhook source
-- (bad signature, stale timestamp, oversized or malformed body, no incident), per hour (the
-- bucket's start, Unix ms) and reason. The API aggregates refusals in memory and adds them
-- here in periodic batches, so a flood of forged deliveries costs a few upserts, not one
-- write each. Deliveries naming no known tenant and source are not counted here.
--
-- The indexes serve the report's range reads: runs by creation, journal steps by kind and
-- time, approvals by request time.

CREATE TABLE webhook_rejections (
    tenant_id   TEXT   NOT NULL REFERENCES tenants (id),
    hour_start  BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    rejected    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, hour_start, reason)
);

CREATE INDEX runs_by_tenant_created ON runs (tenant_id, created_at);
CREATE INDEX run_steps_by_tenant_kind ON run_steps (tenant_id, kind, at);
CREATE INDEX approvals_by_tenant_created ON approvals (tenant_id, created_at);
