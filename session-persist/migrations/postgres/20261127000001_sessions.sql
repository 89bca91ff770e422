-- Sessions: the id is stored only as its SHA-256; deleted sessions stay a while as tombstones.
CREATE TABLE IF NOT EXISTS larder_sessions (
    id_hash     BYTEA PRIMARY KEY,
    principal   TEXT,
    data        BYTEA NOT NULL,
    version     BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    deleted     BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS larder_sessions_expires_at ON larder_sessions (expires_at);
CREATE INDEX IF NOT EXISTS larder_sessions_principal ON larder_sessions (principal)
    WHERE principal IS NOT NULL;
