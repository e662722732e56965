-- pgpush schema version 1: durable events in one global order, retention, idempotency keys.
--
-- Writers only INSERT (through pgpush.publish): no NOTIFY per publishing transaction, so they
-- never take PostgreSQL's global notify lock. One sequencer at a time (pgpush.sequence_batch,
-- serialised by the lock on pgpush.sequencer_state) gives committed rows their positions in
-- batches and NOTIFYs pgpush_wake once per batch.

-- The pgpush schema itself is created by the migration runner.

-- This database's identity and the key that signs cursors (244 random bits).
CREATE TABLE pgpush.installation (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    cursor_key bytea NOT NULL DEFAULT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pgpush.installation DEFAULT VALUES;

CREATE TABLE pgpush.events (
    -- Insertion order (what pgpush.publish returns).
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel text NOT NULL CONSTRAINT events_channel_name CHECK (octet_length(channel) BETWEEN 1 AND 63),
    -- The payload cap (1 MiB). To change it:
    --   ALTER TABLE pgpush.events DROP CONSTRAINT events_payload_size,
    --     ADD CONSTRAINT events_payload_size CHECK (octet_length(payload) <= <bytes>) NOT VALID;
    payload text NOT NULL CONSTRAINT events_payload_size CHECK (octet_length(payload) <= 1048576),
    traceparent text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Position in the one global order; NULL until the sequencer assigns it.
    position bigint
);
-- The position indexes are partial: a publishing INSERT (position NULL) touches only the primary
-- key and the queue of rows waiting for a position.
-- Rows waiting for a position, oldest first.
CREATE INDEX events_unsequenced ON pgpush.events (id) WHERE position IS NULL;
-- The global order; replays of some channels scan it from the cursor and filter.
CREATE UNIQUE INDEX events_position ON pgpush.events (position) WHERE position IS NOT NULL;
-- Every event is updated once (its position): vacuum often so the partial index stays small.
ALTER TABLE pgpush.events SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

CREATE TABLE pgpush.sequencer_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The highest position assigned.
    last_position bigint NOT NULL DEFAULT 0,
    -- Every event with position <= retention_floor may have been deleted by retention.
    retention_floor bigint NOT NULL DEFAULT 0
);
INSERT INTO pgpush.sequencer_state DEFAULT VALUES;

CREATE TABLE pgpush.idempotency_keys (
    key text PRIMARY KEY,
    event_id bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Publishes a durable event; it exists iff the calling transaction commits. Returns the event's
-- id; its position (the cursor) is assigned by the sequencer after commit. One INSERT: the
-- table's constraints check the channel name and the payload size.
CREATE FUNCTION pgpush.publish(channel text, payload text, traceparent text DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO pgpush.events (channel, payload, traceparent)
    VALUES (publish.channel, publish.payload, publish.traceparent)
    RETURNING id
$$;

-- The same for json and jsonb values (stored as their text). An untyped literal resolves to the
-- text version: PostgreSQL prefers the string category for unknown-type arguments.
CREATE FUNCTION pgpush.publish(channel text, payload jsonb, traceparent text DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$ SELECT pgpush.publish(channel, payload::text, traceparent) $$;
CREATE FUNCTION pgpush.publish(channel text, payload json, traceparent text DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$ SELECT pgpush.publish(channel, payload::text, traceparent) $$;

-- Publishes at most once per key within `valid_for`: a retry with the same key returns the first
-- event's id. Concurrent retries wait on the key's row and then return the winner's id.
CREATE FUNCTION pgpush.publish_once(key text, valid_for interval, channel text, payload text, traceparent text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    existing bigint;
    new_id bigint;
BEGIN
    DELETE FROM pgpush.idempotency_keys k
    WHERE k.key = publish_once.key AND k.created_at < now() - publish_once.valid_for;
    BEGIN
        INSERT INTO pgpush.idempotency_keys (key) VALUES (publish_once.key);
    EXCEPTION WHEN unique_violation THEN
        SELECT k.event_id INTO existing FROM pgpush.idempotency_keys k WHERE k.key = publish_once.key;
        RETURN existing;
    END;
    new_id := pgpush.publish(publish_once.channel, publish_once.payload, publish_once.traceparent);
    UPDATE pgpush.idempotency_keys k SET event_id = new_id WHERE k.key = publish_once.key;
    RETURN new_id;
END
$$;

-- Gives the committed unsequenced events (up to max_rows, oldest id first) the next positions,
-- records the new high-water mark and NOTIFYs it once. Returns it, or NULL when there was nothing.
CREATE FUNCTION pgpush.sequence_batch(max_rows integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    assigned bigint;
BEGIN
    -- Cheap, lock-free check first: an idle system costs one index probe per call.
    IF NOT EXISTS (SELECT 1 FROM pgpush.events WHERE position IS NULL) THEN
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

-- Deletes sequenced events older than max_age or beyond the newest max_count (NULL: no limit),
-- at most 100,000 per call, raising retention_floor in the same transaction so a cursor below
-- it is known to have a gap. Also forgets idempotency keys older than keys_valid_for.
CREATE FUNCTION pgpush.apply_retention(max_age interval, max_count bigint, keys_valid_for interval)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    state pgpush.sequencer_state%ROWTYPE;
    target bigint;
    by_age bigint;
BEGIN
    SELECT * INTO state FROM pgpush.sequencer_state FOR UPDATE;
    target := state.retention_floor;
    IF max_count IS NOT NULL THEN
        target := greatest(target, state.last_position - max_count);
    END IF;
    IF max_age IS NOT NULL THEN
        -- Walk from the floor: everything before the first young event is old.
        WITH head AS (
            SELECT e.position, e.created_at FROM pgpush.events e
            WHERE e.position > state.retention_floor ORDER BY e.position LIMIT 100000
        )
        SELECT coalesce((SELECT min(h.position) FROM head h WHERE h.created_at >= now() - max_age) - 1,
                        (SELECT max(h.position) FROM head h),
                        state.retention_floor)
        INTO by_age;
        target := greatest(target, by_age);
    END IF;
    target := least(target, state.retention_floor + 100000, state.last_position);
    DELETE FROM pgpush.idempotency_keys k WHERE k.created_at < now() - keys_valid_for;
    IF target <= state.retention_floor THEN
        RETURN 0;
    END IF;
    DELETE FROM pgpush.events e WHERE e.position > state.retention_floor AND e.position <= target;
    UPDATE pgpush.sequencer_state SET retention_floor = target;
    RETURN target - state.retention_floor;
END
$$;
