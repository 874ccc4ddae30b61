-- Steward schema, version 14, for PostgreSQL: the ServiceNow catch-up pass's watermark (see
-- the SQLite migration of the same version). Watermark rows are tenant rows under the tenant
-- policy; the service may add and move them forward, and remove them.

CREATE TABLE catchup_watermarks (
    tenant_id    TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    updated_ms   BIGINT NOT NULL CHECK (updated_ms >= 0),
    sys_ids      TEXT   NOT NULL,
    changed_at   BIGINT NOT NULL
);

ALTER TABLE catchup_watermarks ENABLE ROW LEVEL SECURITY;
ALTER TABLE catchup_watermarks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON catchup_watermarks
    USING (tenant_id = current_setting('steward.tenant', true))
    WITH CHECK (tenant_id = current_setting('steward.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON catchup_watermarks TO steward_service;

CREATE INDEX runs_by_incident ON runs (tenant_id, incident_value);
