-- Steward schema, version 8, for PostgreSQL: the operator audit log and break-glass grants
-- (see the SQLite migration of the same version for their semantics).
--
-- Neither table is any tenant's data, so neither has a tenant policy. The service role is
-- granted nothing on them: every call that reads or writes them switches to the platform role,
-- which may read and append the operator audit log (never change or remove an entry; the
-- triggers refuse that to every role but a superuser), move its head, and open, count, close
-- and note the expiry of grants, but never delete one.

CREATE TABLE operator_audit_log (
    seq        BIGINT NOT NULL PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    prev_hash  TEXT   NOT NULL,
    hash       TEXT   NOT NULL
);

CREATE FUNCTION operator_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the operator audit log is append-only';
END
$$;

CREATE TRIGGER operator_audit_log_no_update BEFORE UPDATE ON operator_audit_log
    FOR EACH ROW EXECUTE FUNCTION operator_audit_log_append_only();
CREATE TRIGGER operator_audit_log_no_delete BEFORE DELETE ON operator_audit_log
    FOR EACH ROW EXECUTE FUNCTION operator_audit_log_append_only();
CREATE TRIGGER operator_audit_log_no_truncate BEFORE TRUNCATE ON operator_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION operator_audit_log_append_only();

CREATE TABLE operator_audit_head (
    id    BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT   NOT NULL
);

INSERT INTO operator_audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE break_glass_grants (
    id               TEXT   NOT NULL PRIMARY KEY,
    token_sha256     TEXT   NOT NULL UNIQUE,
    person           TEXT   NOT NULL,
    reason           TEXT   NOT NULL,
    opened_by        TEXT   NOT NULL,
    opened_at        BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    closed_at        BIGINT,
    closed_by        TEXT,
    expiry_noted_at  BIGINT,
    uses             BIGINT NOT NULL DEFAULT 0,
    CHECK (expires_at > opened_at)
);

CREATE INDEX break_glass_grants_open ON break_glass_grants (expires_at) WHERE closed_at IS NULL;

GRANT SELECT, INSERT ON operator_audit_log TO steward_platform;
GRANT SELECT, UPDATE ON operator_audit_head TO steward_platform;
GRANT SELECT, INSERT, UPDATE ON break_glass_grants TO steward_platform;
