-- Steward schema, version 3: durable timers.
--
-- A timer wakes one run at a time: an approval reminder, an escalation, an approval timeout, or
-- the end of a rate-limit window the run is parked for. A run has at most one timer of each
-- kind. The step that needs a timer writes it in the step's own transaction, so a recorded
-- wait always has its wake-up. `claimed_at` is when a timer service last handed the timer to
-- its run; an unconsumed claim is handed out again after a lease, so a timer survives a crash
-- between being claimed and being acted on. Times are Unix milliseconds.

CREATE TABLE timers (
    tenant_id   TEXT   NOT NULL,
    run_id      TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    due_at      BIGINT NOT NULL,
    payload     TEXT   NOT NULL,
    claimed_at  BIGINT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, run_id, kind),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id)
);
CREATE INDEX timers_by_due ON timers (due_at);
