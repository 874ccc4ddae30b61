-- Steward schema, version 1, for PostgreSQL.
--
-- Column for column the SQLite schema: times are Unix milliseconds (BIGINT), ids and JSON
-- documents are TEXT, ciphertexts are BYTEA. Every table of tenant data leads its primary key
-- with tenant_id, and child rows reference their parent through (tenant_id, id).
--
-- Run by the owner role. The service role (steward_service) gets DML grants only and sees a
-- tenant's rows only once a transaction has set `steward.tenant` to that tenant: row-level
-- security is enabled and forced on every tenant table. Platform-level calls switch their
-- transaction to steward_platform, which may read (and in a few tables change) every tenant's
-- rows, and nothing else.

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
    wrapped        BYTEA  NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

CREATE TABLE sealed_secrets (
    tenant_id    TEXT   NOT NULL,
    name         TEXT   NOT NULL,
    version      BIGINT NOT NULL,
    dek_version  BIGINT NOT NULL,
    sealed       BYTEA  NOT NULL,
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

-- Webhook deliveries already accepted. The delivery row is written before its run within one
-- transaction, hence the deferred key.
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

-- The audit log is append-only: the service role is granted no UPDATE or DELETE on it, and
-- these triggers refuse a change from any role that is not a superuser.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Row-level security: a row is visible and writable only in a transaction whose
-- `steward.tenant` setting names its tenant.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON tenants
    USING (id = current_setting('steward.tenant', true))
    WITH CHECK (id = current_setting('steward.tenant', true));

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['data_keys', 'sealed_secrets', 'api_tokens', 'webhook_sources',
        'runs', 'run_steps', 'deliveries', 'approvals', 'run_snapshots', 'audit_log']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_rows ON %I '
            'USING (tenant_id = current_setting(''steward.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''steward.tenant'', true))', t);
    END LOOP;
END
$$;

-- What the service role may do: DML on tenant data, append and read on the audit log.
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, data_keys, sealed_secrets, api_tokens,
    webhook_sources, runs, run_steps, deliveries, approvals, run_snapshots TO steward_service;
GRANT SELECT, INSERT ON audit_log, vault_meta TO steward_service;

-- What platform-level calls may do, across tenants: find runs and what they wait on, look up
-- tokens by hash, purge old deliveries, check the master key.
GRANT SELECT ON tenants, runs, run_steps, approvals, api_tokens, data_keys TO steward_platform;
GRANT SELECT, DELETE ON deliveries TO steward_platform;
GRANT SELECT, INSERT ON vault_meta TO steward_platform;
CREATE POLICY platform_rows ON tenants FOR SELECT TO steward_platform USING (true);
CREATE POLICY platform_rows ON runs FOR SELECT TO steward_platform USING (true);
CREATE POLICY platform_rows ON run_steps FOR SELECT TO steward_platform USING (true);
CREATE POLICY platform_rows ON approvals FOR SELECT TO steward_platform USING (true);
CREATE POLICY platform_rows ON api_tokens FOR SELECT TO steward_platform USING (true);
CREATE POLICY platform_rows ON data_keys FOR SELECT TO steward_platform USING (true);
CREATE POLICY platform_rows ON deliveries FOR ALL TO steward_platform USING (true);
