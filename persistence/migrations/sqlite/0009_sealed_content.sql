-- Steward schema, version 9: tenant content is sealed at rest with the tenant's data key (see
-- docs/security/data-at-rest.md). The sealed values keep their TEXT columns: a sealed value is
-- the text `sealed:1:<data key version>:<base64>`, so no column changes type here. Rows stored
-- before this version are sealed by the store at startup, once the master key is confirmed
-- (SQL cannot seal them); audit entries are append-only and keep the form they were hashed in.
--
-- Step bodies are sealed, so finding a run by the incident number it read can no longer look
-- inside them: the number an `incident_fetched` step read is kept in clear on the run, as the
-- trigger's incident reference already is. It is filled here from the steps stored so far,
-- which are still in clear.

ALTER TABLE runs ADD COLUMN fetched_number TEXT;

UPDATE runs SET fetched_number = (
    SELECT CASE WHEN json_valid(s.body) THEN json_extract(s.body, '$.incident.number') END
    FROM run_steps s
    WHERE s.tenant_id = runs.tenant_id AND s.run_id = runs.id AND s.kind = 'incident_fetched'
    ORDER BY s.seq DESC LIMIT 1
);

CREATE INDEX runs_by_fetched_number ON runs (fetched_number);

-- Whether the store's one-time pass sealed the content stored before this version.
CREATE TABLE content_sealing (
    id           BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    done_at      BIGINT NOT NULL,
    rows_sealed  BIGINT NOT NULL
);
