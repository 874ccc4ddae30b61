-- Steward schema, version 7: write pauses (the kill switch) and consumption meters.
--
-- A row in platform_write_pause (at most one) or in tenant_write_pauses (at most one per
-- tenant) means writes are paused there: no run writes to ServiceNow while it exists. Who
-- paused and why stay with the row; each change is also an entry in the audit chain of every
-- tenant it concerns.
--
-- budget_meters counts what one meter of a tenant (LLM calls, LLM tokens, runs started from
-- one webhook source) used in one fixed window, named by its start in Unix ms. `refused`
-- counts the asks the window turned away; it only spreads the wake-ups of runs that wait for
-- a later window. Windows older than two days are removed as new ones are used.

CREATE TABLE platform_write_pause (
    id         BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    reason     TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    paused_at  BIGINT NOT NULL
);

CREATE TABLE tenant_write_pauses (
    tenant_id  TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    reason     TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    paused_at  BIGINT NOT NULL
);

CREATE TABLE budget_meters (
    tenant_id     TEXT   NOT NULL REFERENCES tenants (id),
    meter         TEXT   NOT NULL,
    window_start  BIGINT NOT NULL,
    used          BIGINT NOT NULL,
    refused       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, meter, window_start)
);
