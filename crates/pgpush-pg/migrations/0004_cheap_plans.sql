-- pgpush schema version 4: plans that stay cheap.
-- pgpush.publish in PL/pgSQL: PostgreSQL before 18 parses and plans the INSERT of a SQL-language
-- function on every call (such a function cannot be inlined); PL/pgSQL keeps the plan for the
-- session. Same signature, result and errors.
CREATE OR REPLACE FUNCTION pgpush.publish(channel text, payload text, traceparent text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO pgpush.events (channel, payload, traceparent)
    VALUES (publish.channel, publish.payload, publish.traceparent)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- Gives the committed unsequenced events (up to max_rows, oldest id first) the next positions,
-- records the new high-water mark and NOTIFYs it once. Returns it, or NULL when there was nothing.
CREATE OR REPLACE FUNCTION pgpush.sequence_batch(max_rows integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    assigned bigint;
BEGIN
    -- Cheap, lock-free check first: an idle system costs one probe of the queue index per call.
    -- ORDER BY id keeps that index the plan whatever the statistics say (a plain EXISTS may be
    -- planned as a sequential scan, which reads every positioned row before the unpositioned
    -- ones at the end of the table).
    PERFORM 1 FROM pgpush.events WHERE position IS NULL ORDER BY id LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The row lock serialises sequencers: a second one waits, then sees this one's positions.
    SELECT s.last_position INTO last FROM pgpush.sequencer_state s FOR UPDATE;
    WITH batch AS (
        SELECT u.id, row_number() OVER (ORDER BY u.id) AS n
        FROM (SELECT e.id FROM pgpush.events e WHERE e.position IS NULL ORDER BY e.id LIMIT max_rows) u
    )
    UPDATE pgpush.events e SET position = last + batch.n FROM batch WHERE e.id = batch.id;
    GET DIAGNOSTICS assigned = ROW_COUNT;
    IF assigned = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE pgpush.sequencer_state SET last_position = last + assigned;
    PERFORM pg_notify('pgpush_wake', (last + assigned)::text);
    RETURN last + assigned;
END
$$;
