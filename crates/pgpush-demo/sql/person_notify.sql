-- The original's way: a plain NOTIFY per change (at most once, lost while a listener is away,
-- payloads up to 7,999 bytes). Works with any LISTEN client, no pgpush schema needed.
CREATE OR REPLACE FUNCTION person_published()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('person_updated', person_message(NEW)::text);
    RETURN NULL;
END
$$;
