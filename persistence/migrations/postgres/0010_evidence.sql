-- Steward schema, version 10, for PostgreSQL: signed evidence checkpoints (see the SQLite
-- migration of the same version). The signing key is no tenant's data: only the platform role
-- may read or add it. Checkpoints are tenant rows under the tenant policy; the service may add
-- them and fill in their witness columns, never delete them.

CREATE TABLE evidence_keys (
    key_id         TEXT   NOT NULL PRIMARY KEY,
    public_key     TEXT   NOT NULL,
    sealed_key     BYTEA  NOT NULL,
    master_key_id  TEXT   NOT NULL,
    created_at     BIGINT NOT NULL
);

GRANT SELECT, INSERT, UPDATE ON evidence_keys TO steward_platform;

CREATE TABLE evidence_checkpoints (
    tenant_id           TEXT   NOT NULL REFERENCES tenants (id),
    seq                 BIGINT NOT NULL,
    head_hash           TEXT   NOT NULL,
    at                  BIGINT NOT NULL,
    key_id              TEXT   NOT NULL,
    signature           TEXT   NOT NULL,
    witness_key_id      TEXT,
    witness_public_key  TEXT,
    witness_at          BIGINT,
    witness_signature   TEXT,
    witness_attempts    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, seq)
);

ALTER TABLE evidence_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE evidence_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON evidence_checkpoints
    USING (tenant_id = current_setting('steward.tenant', true))
    WITH CHECK (tenant_id = current_setting('steward.tenant', true));
GRANT SELECT, INSERT, UPDATE ON evidence_checkpoints TO steward_service;
