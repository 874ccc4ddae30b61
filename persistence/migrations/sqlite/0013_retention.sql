-- Steward schema, version 13: per-tenant retention, legal hold and audit pruning.
--
-- tenant_retention holds how long a tenant keeps its finished runs, their sealed content and
-- its audit entries, in days; NULL keeps forever. legal_holds holds at most one hold per
-- tenant; while a row exists nothing of the tenant is deleted by retention or erasure.
--
-- audit_prune_anchors records, before a prefix of a tenant's audit chain is deleted, the last
-- seq removed, that entry's hash and the signed evidence checkpoint (at or after it) the rest
-- of the chain links to. It is append-only. The audit log stays append-only except for one
-- case: a row may be deleted when it lies at or below an anchor of its tenant. Without an
-- anchor every DELETE is still refused, whoever runs it; UPDATE is always refused.
--
-- runs.content_pruned_at is when the sealed content of a finished run (its trigger, journal,
-- snapshot, crash records and timers) was removed by retention.

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

CREATE TRIGGER audit_prune_anchors_no_update BEFORE UPDATE ON audit_prune_anchors
BEGIN
    SELECT RAISE(ABORT, 'audit prune anchors are append-only');
END;

CREATE TRIGGER audit_prune_anchors_no_delete BEFORE DELETE ON audit_prune_anchors
BEGIN
    SELECT RAISE(ABORT, 'audit prune anchors are append-only');
END;

DROP TRIGGER audit_log_no_delete;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN NOT EXISTS (
    SELECT 1 FROM audit_prune_anchors a
    WHERE a.tenant_id = OLD.tenant_id AND a.through_seq >= OLD.seq
)
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

ALTER TABLE runs ADD COLUMN content_pruned_at BIGINT;
CREATE INDEX runs_by_updated ON runs (tenant_id, updated_at);
