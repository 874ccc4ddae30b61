-- Steward schema, version 8: the operator audit log and break-glass grants.
--
-- operator_audit_log is the platform's own hash chain: what operators did (signing in, a
-- refused sign-in, break-glass access opened, used, closed or expired), not any tenant's
-- data. `detail` is the exact JSON text that `hash` covers; it holds names, reasons, methods
-- and paths, never a token or other secret. Like the tenant chains it is append-only:
-- triggers refuse UPDATE and DELETE. operator_audit_head holds the seq and hash of the last
-- entry, so that appends are serialized on one row and a chain cut short at its end is seen.
--
-- break_glass_grants holds emergency operator access given to one person for a bounded time.
-- Only the SHA-256 of a grant's token is kept. A grant is in force while `closed_at` is NULL
-- and `expires_at` is in the future; `expiry_noted_at` records when its first refused use
-- after expiry was audited, so that entry is written once.

CREATE TABLE operator_audit_log (
    seq        BIGINT NOT NULL PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    prev_hash  TEXT   NOT NULL,
    hash       TEXT   NOT NULL
);

CREATE TRIGGER operator_audit_log_no_update BEFORE UPDATE ON operator_audit_log
BEGIN
    SELECT RAISE(ABORT, 'the operator audit log is append-only');
END;

CREATE TRIGGER operator_audit_log_no_delete BEFORE DELETE ON operator_audit_log
BEGIN
    SELECT RAISE(ABORT, 'the operator audit log is append-only');
END;

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
