-- Steward schema, version 12, for PostgreSQL: streaming a tenant's audit entries to its SIEM
-- (see the SQLite migration of the same version). Stream rows are tenant rows under the tenant
-- policy; the service may add, update and remove them.

CREATE TABLE siem_streams (
    tenant_id          TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    url                TEXT   NOT NULL,
    state              TEXT   NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'failing')),
    delivered_seq      BIGINT NOT NULL DEFAULT 0 CHECK (delivered_seq >= 0),
    pending_seq        BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT,
    failures           BIGINT NOT NULL DEFAULT 0,
    last_attempt_at    BIGINT,
    last_delivered_at  BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

ALTER TABLE siem_streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE siem_streams FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON siem_streams
    USING (tenant_id = current_setting('steward.tenant', true))
    WITH CHECK (tenant_id = current_setting('steward.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON siem_streams TO steward_service;
-- The streamer finds the tenants with a stream through the platform role; it reads nothing else
-- of the rows that way.
GRANT SELECT ON siem_streams TO steward_platform;
CREATE POLICY platform_rows ON siem_streams FOR SELECT TO steward_platform USING (true);
