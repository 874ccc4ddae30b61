-- Steward schema, version 13, for PostgreSQL: per-tenant retention, legal hold and audit
-- pruning (see the SQLite migration of the same version for their semantics).
--
-- All three tables are tenant rows under the tenant policy. The service may read and change
-- retention settings and holds, and read and add prune anchors (never change or remove one).
-- The platform role reads retention settings and holds of every tenant (the sweeper lists
-- the tenants it has work for) and may delete audit rows of the tenant its transaction names;
-- the service itself still may not. The delete trigger admits only rows at or below an
-- anchor of their tenant, for every role, a superuser included.

CREATE TABLE tenant_retention (
    tenant_id     TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    runs_days     BIGINT,
    content_days  BIGINT,
    audit_days    BIGINT,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE legal_holds (
    tenant_id  TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    reason     TEXT   NOT NULL,
    held_by    TEXT   NOT NULL,
    held_at    BIGINT NOT NULL
);

CREATE TABLE audit_prune_anchors (
    tenant_id       TEXT   NOT NULL REFERENCES tenants (id),
    through_seq     BIGINT NOT NULL,
    hash            TEXT   NOT NULL,
    checkpoint_seq  BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, through_seq),
    CHECK (checkpoint_seq >= through_seq)
);

CREATE FUNCTION audit_prune_anchors_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit prune anchors are append-only';
END
$$;

CREATE TRIGGER audit_prune_anchors_no_update BEFORE UPDATE ON audit_prune_anchors
    FOR EACH ROW EXECUTE FUNCTION audit_prune_anchors_append_only();
CREATE TRIGGER audit_prune_anchors_no_delete BEFORE DELETE ON audit_prune_anchors
    FOR EACH ROW EXECUTE FUNCTION audit_prune_anchors_append_only();
CREATE TRIGGER audit_prune_anchors_no_truncate BEFORE TRUNCATE ON audit_prune_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION audit_prune_anchors_append_only();

-- A deleted audit row must lie at or below an anchor of its tenant. The anchor is read with
-- the deleting role's rights, so a role that cannot see the tenant's anchors is refused too.
CREATE FUNCTION audit_log_delete_below_anchor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM audit_prune_anchors a
        WHERE a.tenant_id = OLD.tenant_id AND a.through_seq >= OLD.seq
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;

DROP TRIGGER audit_log_no_delete ON audit_log;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_delete_below_anchor();

ALTER TABLE runs ADD COLUMN content_pruned_at BIGINT;
CREATE INDEX runs_by_updated ON runs (tenant_id, updated_at);

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_retention', 'legal_holds', 'audit_prune_anchors']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_rows ON %I '
            'USING (tenant_id = current_setting(''steward.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''steward.tenant'', true))', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_retention, legal_holds TO steward_service;
GRANT SELECT, INSERT ON audit_prune_anchors TO steward_service;

GRANT SELECT ON tenant_retention, legal_holds, audit_prune_anchors TO steward_platform;
GRANT SELECT, DELETE ON audit_log TO steward_platform;
CREATE POLICY platform_rows ON tenant_retention FOR SELECT TO steward_platform USING (true);
CREATE POLICY platform_rows ON legal_holds FOR SELECT TO steward_platform USING (true);
