-- A compare-and-swap key-value table: the database-enforced store behind coordination.
-- Versions come from one sequence, so a key deleted and created again never reuses one.
CREATE SEQUENCE IF NOT EXISTS larder_kv_version;
CREATE TABLE IF NOT EXISTS larder_kv (
    key         TEXT PRIMARY KEY,
    value       BYTEA NOT NULL,
    version     BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX IF NOT EXISTS larder_kv_expires_at ON larder_kv (expires_at)
    WHERE expires_at IS NOT NULL;
