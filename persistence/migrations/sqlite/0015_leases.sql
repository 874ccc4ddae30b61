-- Steward schema, version 15: tenant leases for running several nodes on one database.
--
-- One row per tenant that a node has ever owned: the node that holds it (`holder`, a node id
-- the operator chooses, such as the pod name), the fencing token (`token`, which grows by one
-- each time the lease changes hands or is taken again after it lapsed, and never goes back),
-- and when the lease lapses unless renewed (`expires_at`, Unix ms on the store's clock). A
-- released lease keeps its row and token with `expires_at = 0`, so the next holder's token is
-- still larger. Writes of a tenant's runs carry the token they were made under and are refused
-- once the row holds a larger one. Ids, a counter and times only: no tenant content.

CREATE TABLE tenant_leases (
    tenant_id    TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (id),
    holder       TEXT   NOT NULL,
    token        BIGINT NOT NULL CHECK (token >= 1),
    expires_at   BIGINT NOT NULL,
    acquired_at  BIGINT NOT NULL
);
