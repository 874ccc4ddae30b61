-- Steward schema, version 18: the indexes that find a run's deliveries and its audit entries
-- are keyed by the run first.
--
-- Run ids are unique across tenants and ordered by creation time, so an index keyed by the
-- run id first takes each new run's rows at its right-hand end: an intake batch writes about
-- one leaf page of each, where the same indexes keyed by tenant first wrote a page for every
-- tenant in the batch. The tenant follows the run, so a read that names both (the foreign-key
-- checks of `deliveries`, retention's deletes, a run's audit entries) matches every column it
-- names; the audit index ends with `seq`, so a run's entries come out in chain order without
-- walking the tenant's whole chain.

DROP INDEX deliveries_by_run;
CREATE INDEX deliveries_by_run ON deliveries (run_id, tenant_id);

DROP INDEX audit_log_by_run;
CREATE INDEX audit_log_by_run ON audit_log (run_id, tenant_id, seq);
