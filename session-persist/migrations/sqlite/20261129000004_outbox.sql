-- The invalidation outbox: the transaction that deletes a session (logout, rotation,
-- revocation by principal) also records it here, through a trigger, so that a failed cache
-- write or a crash right after the commit cannot leave the session live in a shared cache.
-- Every cached store drains it; rows are removed once their tombstones are in the cache.
CREATE TABLE IF NOT EXISTS larder_session_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id_hash     BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS larder_session_outbox_created_at
    ON larder_session_outbox (created_at);

CREATE TRIGGER IF NOT EXISTS larder_sessions_outbox
    AFTER UPDATE OF deleted ON larder_sessions
    FOR EACH ROW WHEN NEW.deleted AND NOT OLD.deleted
BEGIN
    INSERT INTO larder_session_outbox (id_hash, created_at) VALUES (NEW.id_hash, NEW.updated_at);
END;
