-- Steward schema, version 6: a webhook source chooses its signature scheme.
--
-- The `scheme` column has been there since version 1, but until now every source was verified
-- as Standard Webhooks whatever it said. So every existing source says so now, and from here on
-- only the known names may be stored: `standard-webhooks` (the default), `slack` (Slack's `v0`
-- request signing) and `stripe` (`Stripe-Signature`). SQLite cannot add a CHECK constraint to a
-- table, so triggers refuse the rest; the PostgreSQL migration of the same version adds the
-- constraint. A new scheme needs a migration that widens both.

UPDATE webhook_sources SET scheme = 'standard-webhooks' WHERE scheme <> 'standard-webhooks';

CREATE TRIGGER webhook_sources_scheme_insert BEFORE INSERT ON webhook_sources
WHEN NEW.scheme NOT IN ('standard-webhooks', 'slack', 'stripe')
BEGIN
    SELECT RAISE(ABORT, 'unknown webhook signature scheme');
END;

CREATE TRIGGER webhook_sources_scheme_update BEFORE UPDATE OF scheme ON webhook_sources
WHEN NEW.scheme NOT IN ('standard-webhooks', 'slack', 'stripe')
BEGIN
    SELECT RAISE(ABORT, 'unknown webhook signature scheme');
END;
