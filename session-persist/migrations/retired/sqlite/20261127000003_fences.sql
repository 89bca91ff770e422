-- The highest fencing token seen per fenced resource: writes carrying a lower token are refused.
CREATE TABLE IF NOT EXISTS larder_fences (
    name   TEXT PRIMARY KEY,
    token  INTEGER NOT NULL
);
