-- The compare-and-swap table and the fences of larder-backend-sql, tracked in their own
-- migrations table (`_larder_kv_migrations`) so that they can share a database with any other
-- migrator. IF NOT EXISTS: databases where larder-session-persist created these objects
-- earlier keep them as they are.

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

-- The highest fencing token seen per fenced resource: writes carrying a lower token are refused.
CREATE TABLE IF NOT EXISTS larder_fences (
    name   TEXT PRIMARY KEY,
    token  BIGINT NOT NULL
);
