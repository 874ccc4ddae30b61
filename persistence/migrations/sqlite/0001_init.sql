-- Steward schema, version 1.
--
-- Portable on purpose: the PostgreSQL schema mirrors this one column for column. Times are Unix
-- milliseconds (BIGINT), ids and JSON documents are TEXT, ciphertexts are BLOB (BYTEA there).
-- Every table of tenant data leads its primary key with tenant_id, and child rows reference
-- their parent through (tenant_id, id), so a row can never point into another tenant's data.

CREATE TABLE tenants (
    id          TEXT   NOT NULL PRIMARY KEY,
    region      TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    settings    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- One row: the id of the master key that wraps every data key.
CREATE TABLE vault_meta (
    id             BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    master_key_id  TEXT   NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE data_keys (
    tenant_id      TEXT   NOT NULL REFERENCES tenants (id),
    version        BIGINT NOT NULL,
    master_key_id  TEXT   NOT NULL,
    wrapped        BLOB   NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

CREATE TABLE sealed_secrets (
    tenant_id    TEXT   NOT NULL,
    name         TEXT   NOT NULL,
    version      BIGINT NOT NULL,
    dek_version  BIGINT NOT NULL,
    sealed       BLOB   NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, dek_version) REFERENCES data_keys (tenant_id, version)
);

-- Only the SHA-256 of a token is kept.
CREATE TABLE api_tokens (
    token_hash  TEXT   NOT NULL PRIMARY KEY,
    tenant_id   TEXT   NOT NULL REFERENCES tenants (id),
    label       TEXT   NOT NULL,
    scopes      TEXT   NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX api_tokens_by_label ON api_tokens (tenant_id, label);

CREATE TABLE webhook_sources (
    tenant_id        TEXT   NOT NULL REFERENCES tenants (id),
    name             TEXT   NOT NULL,
    scheme           TEXT   NOT NULL,
    secret_name      TEXT   NOT NULL,
    sys_id_pointers  TEXT   NOT NULL,
    number_pointers  TEXT   NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE runs (
    tenant_id       TEXT   NOT NULL REFERENCES tenants (id),
    id              TEXT   NOT NULL,
    source          TEXT,
    delivery_id     TEXT,
    incident_by     TEXT   NOT NULL,
    incident_value  TEXT   NOT NULL,
    trigger_body    TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    steps           BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX runs_by_state ON runs (state);

-- The journal: one row per step, seq 0, 1, 2, ... without gaps.
CREATE TABLE run_steps (
    tenant_id  TEXT   NOT NULL,
    run_id     TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, run_id, seq),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id)
);

-- Webhook deliveries already accepted. `source` is '' for a run that no source started. The
-- delivery row is written before its run within one transaction, hence the deferred key.
CREATE TABLE deliveries (
    tenant_id    TEXT   NOT NULL,
    source       TEXT   NOT NULL,
    delivery_id  TEXT   NOT NULL,
    run_id       TEXT   NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, source, delivery_id),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX deliveries_by_age ON deliveries (received_at);

CREATE TABLE approvals (
    tenant_id       TEXT   NOT NULL,
    id              TEXT   NOT NULL,
    run_id          TEXT   NOT NULL,
    diff_hash       TEXT   NOT NULL,
    record_version  TEXT   NOT NULL,
    policy          TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    channel         TEXT,
    message_ts      TEXT,
    decided_by      TEXT,
    decided_at      BIGINT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id)
);
CREATE INDEX approvals_by_run ON approvals (tenant_id, run_id);

-- The latest fold of each run's journal, with the journal length it covers.
CREATE TABLE run_snapshots (
    tenant_id       TEXT   NOT NULL,
    run_id          TEXT   NOT NULL,
    journal_offset  BIGINT NOT NULL,
    state           TEXT   NOT NULL,
    saved_at        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, run_id),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id)
);

-- Each tenant's hash chain. `body` is the exact JSON text that `hash` covers.
CREATE TABLE audit_log (
    tenant_id  TEXT   NOT NULL REFERENCES tenants (id),
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    run_id     TEXT,
    actor      TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    prev_hash  TEXT   NOT NULL,
    hash       TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

-- The audit log is append-only. The chain makes any change evident; these triggers make the
-- service itself unable to make one. (PostgreSQL gets the same through grants.)
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
