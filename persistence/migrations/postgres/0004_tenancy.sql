-- Steward schema, version 4, for PostgreSQL: tenants onboarded and offboarded through the API
-- (see the SQLite migration of the same version). An offboarded tenant keeps its row and its
-- audit chain, closed by a signed checkpoint; checkpoints, like the chain, are never changed.

ALTER TABLE tenants ADD COLUMN offboarded_at BIGINT;

CREATE TABLE audit_checkpoints (
    tenant_id   TEXT   NOT NULL REFERENCES tenants (id),
    seq         BIGINT NOT NULL,
    head_hash   TEXT   NOT NULL,
    key_id      TEXT   NOT NULL,
    signature   TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON audit_checkpoints
    USING (tenant_id = current_setting('steward.tenant', true))
    WITH CHECK (tenant_id = current_setting('steward.tenant', true));
GRANT SELECT, INSERT ON audit_checkpoints TO steward_service;
