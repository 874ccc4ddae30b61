-- Steward schema, version 15, for PostgreSQL: tenant leases (see the SQLite migration of the
-- same version). Nodes take, renew and release leases of every tenant, so the platform role may
-- read and write them; a tenant's own transactions may read its row, to check a fencing token
-- inside the transaction that writes under it.

CREATE TABLE tenant_leases (
    tenant_id    TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    holder       TEXT   NOT NULL,
    token        BIGINT NOT NULL CHECK (token >= 1),
    expires_at   BIGINT NOT NULL,
    acquired_at  BIGINT NOT NULL
);

ALTER TABLE tenant_leases ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_leases FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON tenant_leases FOR SELECT
    USING (tenant_id = current_setting('steward.tenant', true));
GRANT SELECT ON tenant_leases TO steward_service;
GRANT SELECT, INSERT, UPDATE ON tenant_leases TO steward_platform;
CREATE POLICY platform_rows ON tenant_leases FOR ALL TO steward_platform USING (true);
