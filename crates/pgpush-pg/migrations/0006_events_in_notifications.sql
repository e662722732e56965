-- pgpush schema version 6: the batch's events travel in its notifications.
--
-- Until version 5 a batch NOTIFYed only its high-water mark, and every node then read the batch
-- from pgpush.events: one query per batch per node, so the primary's cost per event grew with
-- the number of nodes. Now the batch's one transaction NOTIFYs the events themselves on
-- pgpush_wake, in as many notifications as PostgreSQL's 7,999-byte payload limit needs (the
-- transaction takes the NOTIFY lock once, however many it sends). Each notification is a JSON
-- object that covers a range of positions of one epoch:
--
--   {"epoch":E,"after":A,"upto":U,"events":[[position,id,channel,payload,traceparent,created_us],...]}
--
-- listing every event in (A, U], or, for an event too large for any notification,
--
--   {"epoch":E,"after":A,"upto":U,"fetch":true}
--
-- which the node reads from pgpush.events. A node that applied everything up to A applies the
-- notification; one that sees A above what it has (a lost or dropped notification, a reconnect)
-- reads the gap from the table. Other wake-ups (a new epoch) stay a bare position.

-- One notification's budget: PostgreSQL refuses payloads of 8,000 bytes or more; the header
-- and the closing brackets take at most 100.
CREATE OR REPLACE FUNCTION pgpush.sequence_batch(max_rows integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    budget constant integer := 7999 - 100;
    last bigint;
    epoch bigint;
    assigned bigint := 0;
    event record;
    item text;
    body text := '';
    -- The chunk being built covers (chunk_after, event.position - 1] so far.
    chunk_after bigint;
BEGIN
    PERFORM 1 FROM pgpush.events WHERE position IS NULL ORDER BY id LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- Locks the state row, which serialises sequencers; a new epoch moves last_position up.
    epoch := pgpush.ensure_epoch();
    SELECT s.last_position INTO last FROM pgpush.sequencer_state s FOR UPDATE;
    chunk_after := last;
    FOR event IN
        WITH batch AS (
            SELECT u.id, row_number() OVER (ORDER BY u.id) AS n
            FROM (SELECT e.id FROM pgpush.events e WHERE e.position IS NULL ORDER BY e.id LIMIT max_rows) u
        ), positioned AS (
            UPDATE pgpush.events e SET position = last + batch.n FROM batch WHERE e.id = batch.id
            RETURNING e.position, e.id, e.channel, e.payload, e.traceparent, e.created_at
        )
        SELECT * FROM positioned ORDER BY position
    LOOP
        assigned := assigned + 1;
        item := format('[%s,%s,%s,%s,%s,%s]', event.position, event.id, to_json(event.channel),
                       to_json(event.payload), coalesce(to_json(event.traceparent)::text, 'null'),
                       (extract(epoch FROM event.created_at) * 1000000)::bigint);
        IF octet_length(item) > budget OR octet_length(body) + 1 + octet_length(item) > budget THEN
            IF body <> '' THEN
                PERFORM pg_notify('pgpush_wake', format('{"epoch":%s,"after":%s,"upto":%s,"events":[%s]}',
                                                        epoch, chunk_after, event.position - 1, body));
                body := '';
                chunk_after := event.position - 1;
            END IF;
            IF octet_length(item) > budget THEN
                PERFORM pg_notify('pgpush_wake', format('{"epoch":%s,"after":%s,"upto":%s,"fetch":true}',
                                                        epoch, chunk_after, event.position));
                chunk_after := event.position;
                CONTINUE;
            END IF;
        END IF;
        body := CASE WHEN body = '' THEN item ELSE body || ',' || item END;
    END LOOP;
    IF assigned = 0 THEN
        RETURN NULL;
    END IF;
    IF body <> '' THEN
        PERFORM pg_notify('pgpush_wake', format('{"epoch":%s,"after":%s,"upto":%s,"events":[%s]}',
                                                epoch, chunk_after, last + assigned, body));
    END IF;
    UPDATE pgpush.sequencer_state SET last_position = last + assigned;
    RETURN last + assigned;
END
$$;
