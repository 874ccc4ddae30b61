-- A superseded secret version may stay valid until a set time (the overlap of a rotation).
-- NULL means the version is valid only while it is the newest.
ALTER TABLE sealed_secrets ADD COLUMN expires_at BIGINT;
