-- Steward schema, version 12: streaming a tenant's audit entries to its SIEM. One row per
-- tenant that configured a SIEM endpoint: the URL, the durable cursor (the last seq the SIEM
-- acknowledged with a 2xx) and the state of delivery. The signing secret is a sealed secret
-- (`siem_signing_secret`), never stored here. The cursor only moves forward; deleting the row
-- stops the stream, and configuring again starts from the first entry. `pending_seq` is the
-- last seq of the batch being sent while it is past the cursor, so that a batch retried (also
-- after a restart) covers the same entries and carries the same id.

CREATE TABLE siem_streams (
    tenant_id          TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    url                TEXT   NOT NULL,
    state              TEXT   NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'failing')),
    delivered_seq      BIGINT NOT NULL DEFAULT 0 CHECK (delivered_seq >= 0),
    pending_seq        BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT,
    failures           BIGINT NOT NULL DEFAULT 0,
    last_attempt_at    BIGINT,
    last_delivered_at  BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
