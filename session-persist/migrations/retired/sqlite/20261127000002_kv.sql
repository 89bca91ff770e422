-- A compare-and-swap key-value table: the database-enforced store behind coordination.
-- Versions come from one counter row, so a key deleted and created again never reuses one.
CREATE TABLE IF NOT EXISTS larder_kv_version (id INTEGER PRIMARY KEY CHECK (id = 1), v INTEGER NOT NULL);
INSERT OR IGNORE INTO larder_kv_version (id, v) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS larder_kv (
    key         TEXT PRIMARY KEY,
    value       BLOB NOT NULL,
    version     INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX IF NOT EXISTS larder_kv_expires_at ON larder_kv (expires_at)
    WHERE expires_at IS NOT NULL;
