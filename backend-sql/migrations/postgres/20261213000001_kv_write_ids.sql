-- Write ids: a write resent after its reply was lost (the connection died after the commit)
-- recognises its own committed write by them and answers what the first attempt did.
-- `write_ids`: the last few writes to the row, newest first, 32 characters each (the write
-- id, 16 hex characters, then the version it wrote, 16 hex characters). Rows written before
-- this column existed have NULL.
ALTER TABLE larder_kv ADD COLUMN IF NOT EXISTS write_ids TEXT;

-- A deleted row keeps nothing: the ids of deletes are kept here for ten minutes (each delete
-- removes a few older ones).
CREATE TABLE IF NOT EXISTS larder_kv_deleted (
    write_id    TEXT PRIMARY KEY,
    deleted_at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS larder_kv_deleted_at ON larder_kv_deleted (deleted_at);
