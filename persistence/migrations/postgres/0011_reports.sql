-- Steward schema, version 11, for PostgreSQL: webhook rejection counts per tenant, hour and
-- reason, and the indexes behind the report's range reads (see the SQLite migration of the
-- same version). webhook_rejections is tenant data: row-level security forced; the service
-- role reads and adds to the counts, and removes them only when the tenant is offboarded.

CREATE TABLE webhook_rejections (
    tenant_id   TEXT   NOT NULL REFERENCES tenants (id),
    hour_start  BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    rejected    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, hour_start, reason)
);

ALTER TABLE webhook_rejections ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_rejections FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON webhook_rejections
    USING (tenant_id = current_setting('steward.tenant', true))
    WITH CHECK (tenant_id = current_setting('steward.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_rejections TO steward_service;

CREATE INDEX runs_by_tenant_created ON runs (tenant_id, created_at);
CREATE INDEX run_steps_by_tenant_kind ON run_steps (tenant_id, kind, at);
CREATE INDEX approvals_by_tenant_created ON approvals (tenant_id, created_at);
