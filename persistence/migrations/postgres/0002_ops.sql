-- Steward schema, version 2, for PostgreSQL: crash snapshots and the indexes on-call tools use.
-- Crash snapshots stay with their run; like the journal they are never updated.

CREATE TABLE run_crashes (
    tenant_id       TEXT   NOT NULL,
    run_id          TEXT   NOT NULL,
    seq             BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    attempt         BIGINT NOT NULL,
    journal_offset  BIGINT NOT NULL,
    step            TEXT   NOT NULL,
    message         TEXT   NOT NULL,
    error           TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, run_id, seq),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id)
);

CREATE INDEX runs_by_id ON runs (id);
CREATE INDEX runs_by_created ON runs (created_at);
CREATE INDEX audit_log_by_run ON audit_log (tenant_id, run_id);

ALTER TABLE run_crashes ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_crashes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON run_crashes
    USING (tenant_id = current_setting('steward.tenant', true))
    WITH CHECK (tenant_id = current_setting('steward.tenant', true));
GRANT SELECT, INSERT, DELETE ON run_crashes TO steward_service;
