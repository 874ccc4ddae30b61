-- Steward schema, version 10: signed evidence checkpoints. One platform signing key (ed25519),
-- its private half sealed under the master key; per tenant, checkpoints of the audit chain's
-- head signed with it, each with the countersignature of an external witness once it answered.
-- Neither table's rows are ever deleted; a checkpoint's witness columns are filled once.

CREATE TABLE evidence_keys (
    key_id         TEXT   NOT NULL PRIMARY KEY,
    public_key     TEXT   NOT NULL,
    sealed_key     BLOB   NOT NULL,
    master_key_id  TEXT   NOT NULL,
    created_at     BIGINT NOT NULL
);

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
