-- Steward schema, version 19: pending approvals found without reading every approval.
--
-- Each scrape of the metrics asks for every tenant's oldest pending approval. Read through the
-- index by tenant and creation time, that walked every approval ever kept; this index holds
-- only the pending ones, which a decision or an expiry takes out of it.

CREATE INDEX approvals_pending ON approvals (tenant_id, created_at) WHERE status = 'pending';
