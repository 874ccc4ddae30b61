-- Steward schema, version 3, for PostgreSQL: durable timers (see the SQLite migration of the
-- same version for their semantics). The timer service claims due timers of every tenant, so
-- the platform role may read them and set their claim.

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

ALTER TABLE timers ENABLE ROW LEVEL SECURITY;
ALTER TABLE timers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON timers
    USING (tenant_id = current_setting('steward.tenant', true))
    WITH CHECK (tenant_id = current_setting('steward.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON timers TO steward_service;
GRANT SELECT, UPDATE (claimed_at) ON timers TO steward_platform;
CREATE POLICY platform_rows ON timers FOR ALL TO steward_platform USING (true);
