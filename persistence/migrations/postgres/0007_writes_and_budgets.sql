-- Steward schema, version 7, for PostgreSQL: write pauses (the kill switch) and consumption
-- meters (see the SQLite migration of the same version for their semantics).
--
-- tenant_write_pauses and budget_meters are tenant data: row-level security forced, DML for
-- the service role. platform_write_pause is not any tenant's row, so it has no tenant policy:
-- the service role may only read it (every run's write checks it), and only the platform role
-- may change it. The platform role may also read every tenant's pause, for the ops listing.

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

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_write_pauses', 'budget_meters']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_rows ON %I '
            'USING (tenant_id = current_setting(''steward.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''steward.tenant'', true))', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_write_pauses, budget_meters TO steward_service;
GRANT SELECT ON platform_write_pause TO steward_service;

GRANT SELECT, INSERT, UPDATE, DELETE ON platform_write_pause TO steward_platform;
GRANT SELECT ON tenant_write_pauses TO steward_platform;
CREATE POLICY platform_rows ON tenant_write_pauses FOR SELECT TO steward_platform USING (true);
