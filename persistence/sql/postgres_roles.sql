-- The roles a PostgreSQL store needs, made idempotently by a role that may create roles.
--
-- steward_owner    owns the schema and runs the migrations (connect as it for `migrate_url`).
-- steward_service  the service pool: no table of its own, DML grants only, subject to
--                  row-level security. NOINHERIT, so its membership in steward_platform gives
--                  it nothing until a transaction runs SET LOCAL ROLE steward_platform.
-- steward_platform cannot log in; platform-level calls switch to it for one transaction.
--
-- Passwords are set out of band (ALTER ROLE ... PASSWORD), never in a migration.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'steward_owner') THEN
        CREATE ROLE steward_owner LOGIN NOSUPERUSER NOCREATEROLE NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'steward_service') THEN
        CREATE ROLE steward_service LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE
            NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'steward_platform') THEN
        CREATE ROLE steward_platform NOLOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE
            NOBYPASSRLS;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'steward_service'
               AND (rolsuper OR rolbypassrls OR rolinherit)) THEN
        ALTER ROLE steward_service NOINHERIT NOSUPERUSER NOBYPASSRLS;
    END IF;
    IF NOT pg_has_role('steward_service', 'steward_platform', 'MEMBER') THEN
        GRANT steward_platform TO steward_service;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    -- Another session made the same role at the same moment; it is there either way.
    NULL;
END
$$;
