-- Sessions: the id is stored only as its SHA-256; deleted sessions stay a while as tombstones.
CREATE TABLE IF NOT EXISTS larder_sessions (
    id_hash     BLOB PRIMARY KEY,
    principal   TEXT,
    data        BLOB NOT NULL,
    version     INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    deleted     BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS larder_sessions_expires_at ON larder_sessions (expires_at);
CREATE INDEX IF NOT EXISTS larder_sessions_principal ON larder_sessions (principal)
    WHERE principal IS NOT NULL;
