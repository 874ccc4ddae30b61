-- Steward schema, version 2: what on-call engineers read.
--
-- A crash snapshot is written each time a run actor fails: the run's folded state as far as it
-- was known, the message being handled, the step, the error or panic text and the attempt
-- within the restart window. The store redacts secrets before writing. Crash snapshots stay
-- with their run; like the journal they are never updated.

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

-- The ops API finds a run by its id alone, lists runs across tenants by time, and reads a run's
-- audit entries.
CREATE INDEX runs_by_id ON runs (id);
CREATE INDEX runs_by_created ON runs (created_at);
CREATE INDEX audit_log_by_run ON audit_log (tenant_id, run_id);
