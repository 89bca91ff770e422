-- The ids of the last few writes to each session, newest first (16 hex characters each): a
-- statement resent after its reply was lost recognises its own committed write by them.
-- Rows written before this column existed have NULL.
ALTER TABLE larder_sessions ADD COLUMN IF NOT EXISTS write_ids TEXT;
