-- Near caches (`larder_cache_api::layer::Near` with `PgNotify`) LISTEN on channel `larder_kv`:
-- every insert, update or delete of a row tells them its key when the transaction commits,
-- so they drop their local copy. Without listeners a NOTIFY costs one queue entry.
CREATE OR REPLACE FUNCTION larder_kv_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('larder_kv', OLD.key);
    ELSE
        PERFORM pg_notify('larder_kv', NEW.key);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS larder_kv_notify ON larder_kv;
CREATE TRIGGER larder_kv_notify
    AFTER INSERT OR UPDATE OR DELETE ON larder_kv
    FOR EACH ROW EXECUTE FUNCTION larder_kv_notify();
