-- Steward schema, version 16: deliveries found by the run they started.
--
-- `deliveries` references `runs`, and the database looks for a run's deliveries whenever the
-- run's row is inserted while a deferred check is pending, or deleted (retention). Without an
-- index on the run, each of those walked every delivery of the tenant, so intake and
-- retention slowed as the table grew.

CREATE INDEX deliveries_by_run ON deliveries (tenant_id, run_id);
