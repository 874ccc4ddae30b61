-- Steward schema, version 16: deliveries found by the run they started.
--
-- `deliveries` references `runs`, so deleting a run (retention, offboarding) looks for the
-- deliveries that name it, as do the deletes of a run's own rows. Without an index on the run,
-- each of those walked every delivery of the tenant.

CREATE INDEX deliveries_by_run ON deliveries (tenant_id, run_id);
