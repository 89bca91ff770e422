-- The `larder_kv_notify` trigger is installed by the first near cache that listens
-- (`PgNotify`), not here: a transaction that sends NOTIFY takes a database-wide lock at
-- commit, so with the trigger writes to `larder_kv` commit one at a time (8 concurrent
-- writers: about a fifth of the throughput). Stores with no near cache don't pay for it.
DROP TRIGGER IF EXISTS larder_kv_notify ON larder_kv;
