-- Steward schema, version 14: the ServiceNow catch-up pass's watermark.
--
-- One row per tenant: the newest sys_updated_on the pass has dealt with (Unix ms, always a
-- whole second, since ServiceNow keeps update times to the second), and the sys_ids updated at
-- exactly that second that were dealt with (a JSON array of text), so the next pass, which asks
-- again from that same second, skips them. The row only moves forward; it is written after the
-- runs of a page are recorded. It holds ids and times, no incident content.

CREATE TABLE catchup_watermarks (
    tenant_id    TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    updated_ms   BIGINT NOT NULL,
    sys_ids      TEXT   NOT NULL,
    changed_at   BIGINT NOT NULL
);

-- The pass asks, per listed incident, whether a run already covers it.
CREATE INDEX runs_by_incident ON runs (tenant_id, incident_value);
