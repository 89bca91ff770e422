-- The outbox becomes a change log that every cache reads from its own cursor (rows are no
-- longer removed by a reader, only aged out by the sweep). Saves are recorded too, with the
-- version they wrote, so that a cache in another process learns of a change made here;
-- deletions keep their rows (deleted = TRUE). Rows recorded before this have no version and
-- are deletions.
ALTER TABLE larder_session_outbox ADD COLUMN IF NOT EXISTS version BIGINT;
ALTER TABLE larder_session_outbox ADD COLUMN IF NOT EXISTS deleted BOOLEAN NOT NULL DEFAULT TRUE;

CREATE OR REPLACE FUNCTION larder_session_outbox_record() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO larder_session_outbox (id_hash, created_at, version, deleted)
        VALUES (NEW.id_hash, NEW.updated_at, NEW.version, NEW.deleted);
    RETURN NULL;
END
$$;

-- Every change of data or principal moves the version; a touch (expiry only) does not and
-- is not recorded: a cache keeps its older expiry and refills when it passes.
DROP TRIGGER IF EXISTS larder_sessions_saved ON larder_sessions;
CREATE TRIGGER larder_sessions_saved
    AFTER UPDATE OF version ON larder_sessions
    FOR EACH ROW WHEN (NEW.version <> OLD.version AND NOT NEW.deleted)
    EXECUTE FUNCTION larder_session_outbox_record();
