-- pgpush schema version 5: epochs of the durable history.
--
-- A position names an event only within one history, and PostgreSQL can lose the end of a
-- history: a promoted asynchronous standby lacks what the primary had not sent it, a restore
-- from a backup lacks what came after the backup. It then gives the lost positions to other
-- events. So the history is cut into epochs. A new epoch begins whenever the server is not the
-- incarnation the current one began on (it was restarted, promoted or restored) and before any
-- position is assigned there; it records the high-water mark it inherited (`forked_after`) and
-- numbers its own events from `first_position`, far above anything the lost end can have used,
-- so positions grow along every history. A cursor carries its epoch: (epoch e, position p) is a
-- point of this database's history iff e is in this table and p is at most the `forked_after`
-- of the epoch that followed e (any p, for the current epoch).

CREATE TABLE pgpush.epochs (
    -- Order in this database's chain: 1, 2, ...
    seq integer PRIMARY KEY,
    -- Random, so that two histories restored from one backup never share a later epoch.
    id bigint NOT NULL UNIQUE,
    -- The positions of this epoch's own events start here.
    first_position bigint NOT NULL,
    -- The last position inherited from the epochs before: everything up to it is shared.
    forked_after bigint NOT NULL,
    -- The server incarnation (pgpush.incarnation()) it began on.
    incarnation text NOT NULL,
    -- Why it began.
    reason text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- Which server this is: its start time and its WAL timeline. Both survive a crash recovery of
-- the same running postmaster; a restart, a restore or a promotion changes at least one.
CREATE FUNCTION pgpush.incarnation() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT extract(epoch FROM pg_postmaster_start_time())::text
           || ' timeline ' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)
$$;

ALTER TABLE pgpush.sequencer_state
    ADD COLUMN epoch bigint,
    ADD COLUMN incarnation text;

INSERT INTO pgpush.epochs (seq, id, first_position, forked_after, incarnation, reason)
VALUES (1, ('x' || substr(md5(gen_random_uuid()::text), 1, 15))::bit(60)::bigint, 1, 0,
        pgpush.incarnation(), 'epochs introduced (schema version 5)');
UPDATE pgpush.sequencer_state
SET epoch = (SELECT id FROM pgpush.epochs WHERE seq = 1), incarnation = pgpush.incarnation();
ALTER TABLE pgpush.sequencer_state
    ALTER COLUMN epoch SET NOT NULL,
    ALTER COLUMN incarnation SET NOT NULL;

-- Begins a new epoch after the current high-water mark and returns its id. Its first position
-- is at least 2^40 above the mark (more than any unreplicated tail) and at least the time in
-- nanoseconds, so an epoch begun later has higher positions even in a history restored from an
-- older backup. Wakes every node's reader, which notices the new epoch on its next query.
CREATE FUNCTION pgpush.begin_epoch(reason text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    state pgpush.sequencer_state%ROWTYPE;
    new_id bigint := ('x' || substr(md5(gen_random_uuid()::text), 1, 15))::bit(60)::bigint;
    first bigint;
BEGIN
    SELECT * INTO state FROM pgpush.sequencer_state FOR UPDATE;
    first := greatest(state.last_position + (1::bigint << 40),
                      (extract(epoch FROM clock_timestamp()) * 1e9)::bigint);
    INSERT INTO pgpush.epochs (seq, id, first_position, forked_after, incarnation, reason)
    SELECT max(e.seq) + 1, new_id, first, state.last_position, pgpush.incarnation(), begin_epoch.reason
    FROM pgpush.epochs e;
    UPDATE pgpush.sequencer_state
    SET epoch = new_id, incarnation = pgpush.incarnation(), last_position = first - 1;
    PERFORM pg_notify('pgpush_wake', (first - 1)::text);
    RAISE LOG 'pgpush: durable epoch % began after position %: %', new_id, state.last_position, reason;
    RETURN new_id;
END
$$;

-- The current epoch, begun first if this server is not the incarnation it began on. The
-- sequencer calls it when it starts leading and in every batch, before assigning positions.
CREATE FUNCTION pgpush.ensure_epoch() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    known record;
    now_incarnation text := pgpush.incarnation();
BEGIN
    SELECT s.epoch, s.incarnation INTO known FROM pgpush.sequencer_state s FOR UPDATE;
    IF known.incarnation = now_incarnation THEN
        RETURN known.epoch;
    END IF;
    RETURN pgpush.begin_epoch(format('the server changed from (%s) to (%s): restarted, promoted or restored',
                                     known.incarnation, now_incarnation));
END
$$;

-- Begins a new epoch if the current one is still `expected` and ends below `delivered`, a
-- position some node or client has seen: proof that this history lost its end.
CREATE FUNCTION pgpush.begin_epoch_if_behind(expected bigint, delivered bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    state pgpush.sequencer_state%ROWTYPE;
BEGIN
    SELECT * INTO state FROM pgpush.sequencer_state FOR UPDATE;
    IF state.epoch = expected AND state.last_position < delivered THEN
        RETURN pgpush.begin_epoch(format('position %s was delivered but the history ends at %s',
                                         delivered, state.last_position));
    END IF;
    RETURN state.epoch;
END
$$;

-- As in version 4, after making sure the epoch is this server's.
CREATE OR REPLACE FUNCTION pgpush.sequence_batch(max_rows integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    assigned bigint;
BEGIN
    PERFORM 1 FROM pgpush.events WHERE position IS NULL ORDER BY id LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- Locks the state row, which serialises sequencers; a new epoch moves last_position up.
    PERFORM pgpush.ensure_epoch();
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

-- As in version 1, but counting events rather than positions (positions are dense within an
-- epoch, not across them) and deleting at most 100,000 events per call whatever the gaps.
-- Returns the number of events deleted.
CREATE OR REPLACE FUNCTION pgpush.apply_retention(max_age interval, max_count bigint, keys_valid_for interval)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    state pgpush.sequencer_state%ROWTYPE;
    target bigint;
    by_count bigint;
    by_age bigint;
    cap bigint;
    deleted bigint;
BEGIN
    SELECT * INTO state FROM pgpush.sequencer_state FOR UPDATE;
    target := state.retention_floor;
    IF max_count IS NOT NULL THEN
        -- Each epoch holds the positions [first_position, next epoch's forked_after] (above the
        -- floor); walking from the newest, find the position below the newest max_count events.
        WITH spans AS (
            SELECT greatest(e.first_position, state.retention_floor + 1) AS lo,
                   coalesce(lead(e.forked_after) OVER (ORDER BY e.seq), state.last_position) AS hi
            FROM pgpush.epochs e
        ), sized AS (
            SELECT lo, hi, greatest(hi - lo + 1, 0) AS n,
                   sum(greatest(hi - lo + 1, 0)) OVER (ORDER BY lo DESC) AS newer
            FROM spans
        )
        SELECT s.hi - (max_count - (s.newer - s.n)) INTO by_count
        FROM sized s WHERE s.newer > max_count ORDER BY s.lo DESC LIMIT 1;
        target := greatest(target, coalesce(by_count, target));
    END IF;
    -- The next 100,000 events above the floor: the most one call deletes.
    WITH head AS (
        SELECT e.position, e.created_at FROM pgpush.events e
        WHERE e.position > state.retention_floor ORDER BY e.position LIMIT 100000
    )
    SELECT max(h.position),
           -- Everything before the first young event is old.
           coalesce((SELECT min(y.position) FROM head y WHERE y.created_at >= now() - max_age) - 1,
                    max(h.position))
    INTO cap, by_age FROM head h;
    IF max_age IS NOT NULL THEN
        target := greatest(target, coalesce(by_age, target));
    END IF;
    target := least(target, coalesce(cap, state.retention_floor), state.last_position);
    DELETE FROM pgpush.idempotency_keys k WHERE k.created_at < now() - keys_valid_for;
    IF target <= state.retention_floor THEN
        RETURN 0;
    END IF;
    DELETE FROM pgpush.events e WHERE e.position > state.retention_floor AND e.position <= target;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    UPDATE pgpush.sequencer_state SET retention_floor = target;
    RETURN deleted;
END
$$;

-- A Hippie client's stored position is a cursor too: its epoch (NULL: stored before version 5,
-- read as the epoch whose positions contain it).
ALTER TABLE pgpush.hippie_clients ADD COLUMN epoch bigint;
