-- Saves rewrite a session row in place when no indexed column changes (HOT updates): leave
-- room in each page for the new row version.
ALTER TABLE larder_sessions SET (fillfactor = 80);
