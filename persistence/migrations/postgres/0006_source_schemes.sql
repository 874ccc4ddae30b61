-- Steward schema, version 6, for PostgreSQL: a webhook source chooses its signature scheme (see
-- the SQLite migration of the same version). Every existing source was verified as Standard
-- Webhooks whatever its `scheme` said, so it says so now; from here on a constraint allows only
-- `standard-webhooks`, `slack` and `stripe`.
--
-- Row-level security is forced on webhook_sources, for its owner as well, and a migration names
-- no tenant: run as the owner, the UPDATE would see no row and leave old values for the
-- constraint to fail on. The owner lifts the force around the UPDATE and restores it; the
-- migration runs in one transaction, so no other connection ever sees the table without it. The
-- grants are per table and the policies name no column, so neither changes, and neither does
-- persistence/sql/postgres_roles.sql.

ALTER TABLE webhook_sources NO FORCE ROW LEVEL SECURITY;
UPDATE webhook_sources SET scheme = 'standard-webhooks' WHERE scheme <> 'standard-webhooks';
ALTER TABLE webhook_sources FORCE ROW LEVEL SECURITY;

ALTER TABLE webhook_sources ADD CONSTRAINT webhook_sources_scheme_known
    CHECK (scheme IN ('standard-webhooks', 'slack', 'stripe'));
