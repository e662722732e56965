-- Every insert and move of a person is published on `person_updated` as a durable event: it
-- commits with the row, gets a cursor, and a browser that reconnects misses none.
CREATE OR REPLACE FUNCTION person_published()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgpush.publish('person_updated', person_message(NEW));
    RETURN NULL;
END
$$;
