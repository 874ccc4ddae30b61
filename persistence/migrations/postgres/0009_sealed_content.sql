-- Steward schema, version 9, for PostgreSQL: tenant content is sealed at rest (see the SQLite
-- migration of the same version). `runs.fetched_number` is added and filled from the steps
-- stored so far; row-level security is lifted around the UPDATE as in version 6, since a
-- migration names no tenant. The store seals older rows at startup as the service role, which
-- needs to update crash records for that; the grant names only the sealed columns.

ALTER TABLE runs ADD COLUMN fetched_number TEXT;

ALTER TABLE runs NO FORCE ROW LEVEL SECURITY;
ALTER TABLE run_steps NO FORCE ROW LEVEL SECURITY;
UPDATE runs SET fetched_number = (
    SELECT s.body::jsonb #>> '{incident,number}'
    FROM run_steps s
    WHERE s.tenant_id = runs.tenant_id AND s.run_id = runs.id AND s.kind = 'incident_fetched'
        AND s.body LIKE '{%'
    ORDER BY s.seq DESC LIMIT 1
);
ALTER TABLE run_steps FORCE ROW LEVEL SECURITY;
ALTER TABLE runs FORCE ROW LEVEL SECURITY;

CREATE INDEX runs_by_fetched_number ON runs (fetched_number);

GRANT UPDATE (message, error, state) ON run_crashes TO steward_service;

-- Whether the store's one-time pass sealed the content stored before this version.
CREATE TABLE content_sealing (
    id           BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    done_at      BIGINT NOT NULL,
    rows_sealed  BIGINT NOT NULL
);
GRANT SELECT, INSERT ON content_sealing TO steward_platform;
