-- Steward schema, version 4: tenants onboarded and offboarded through the API.
--
-- An offboarded tenant keeps its row (its audit chain references it and is retained), with the
-- time it was offboarded; every other row of its data is removed. The chain is closed by a
-- signed checkpoint over its final head hash, kept with the chain.

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
