-- pgpush schema version 7: presence, and server-side control of users.
--
-- Presence: which connections are present in which channel, for the whole cluster. Each node
-- writes its own connections' joins and leaves in batches and touches its row in
-- `presence_nodes` every couple of seconds; a node that stops touching (SIGKILLed, cut off) is
-- reaped by whichever node touches next, and its connections leave. The tables are UNLOGGED:
-- presence is the state of live sockets, worth no WAL; after a crash or on a promoted standby
-- they are empty, and every node, finding its row gone, writes its connections again. Every
-- change is NOTIFYd on `pgpush_presence` in the transaction that makes it, as
-- `{"changes":[{"type":"join"|"leave","channel":...,"client":{"id","user","info"}}, ...]}`.

CREATE UNLOGGED TABLE pgpush.presence_nodes (
    node text PRIMARY KEY,
    seen timestamptz NOT NULL DEFAULT now()
);

CREATE UNLOGGED TABLE pgpush.presence (
    channel text NOT NULL,
    -- The connection's id, unique in the cluster (node-chosen).
    client text NOT NULL,
    node text NOT NULL,
    -- The token's `sub`, if it had one.
    user_id text,
    -- The token's `info` object, if it had one.
    info jsonb,
    joined timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (channel, client)
);
CREATE INDEX presence_by_node ON pgpush.presence (node);

-- NOTIFYs presence changes (JSON texts), as few notifications as the payload limit allows.
CREATE FUNCTION pgpush.notify_presence(p_changes text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    chunk text := '';
    item text;
BEGIN
    IF p_changes IS NULL THEN
        RETURN;
    END IF;
    FOREACH item IN ARRAY p_changes LOOP
        IF chunk <> '' AND octet_length(chunk) + octet_length(item) > 7000 THEN
            PERFORM pg_notify('pgpush_presence', '{"changes":[' || chunk || ']}');
            chunk := '';
        END IF;
        chunk := CASE WHEN chunk = '' THEN item ELSE chunk || ',' || item END;
    END LOOP;
    IF chunk <> '' THEN
        PERFORM pg_notify('pgpush_presence', '{"changes":[' || chunk || ']}');
    END IF;
END
$$;

-- The change text of one presence row.
CREATE FUNCTION pgpush.presence_change(p_type text, p_channel text, p_client text,
                                       p_user text, p_info jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('type', p_type, 'channel', p_channel,
               'client', jsonb_build_object('id', p_client, 'user', p_user, 'info', p_info))::text
$$;

-- Marks the node alive; false when its row was missing (first call, reaped, or emptied by a
-- crash): the node must then write all its connections again.
CREATE FUNCTION pgpush.presence_touch(p_node text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pgpush.presence_nodes SET seen = now() WHERE node = p_node;
    IF FOUND THEN
        RETURN true;
    END IF;
    INSERT INTO pgpush.presence_nodes (node) VALUES (p_node)
        ON CONFLICT (node) DO UPDATE SET seen = now();
    RETURN false;
END
$$;

-- One node's batch: `p_joins` [{"channel","id","user","info"}], `p_leaves` [{"channel","id"}]
-- (a key in at most one of them). Only real changes are notified: a join of a row already
-- there, or a leave of one that is not, is not. Returns what presence_touch returned.
CREATE FUNCTION pgpush.presence_apply(p_node text, p_joins jsonb, p_leaves jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    known boolean := pgpush.presence_touch(p_node);
    changes text[];
BEGIN
    WITH joined AS (
        INSERT INTO pgpush.presence (channel, client, node, user_id, info)
        SELECT j->>'channel', j->>'id', p_node, j->>'user', j->'info'
        FROM jsonb_array_elements(p_joins) j
        ON CONFLICT (channel, client) DO NOTHING
        RETURNING channel, client, user_id, info
    ), gone AS (
        DELETE FROM pgpush.presence p
        USING jsonb_array_elements(p_leaves) l
        WHERE p.channel = l->>'channel' AND p.client = l->>'id'
        RETURNING p.channel, p.client, p.user_id, p.info
    )
    SELECT array_agg(change) INTO changes FROM (
        SELECT pgpush.presence_change('join', channel, client, user_id, info) AS change FROM joined
        UNION ALL
        SELECT pgpush.presence_change('leave', channel, client, user_id, info) FROM gone
    ) c;
    PERFORM pgpush.notify_presence(changes);
    RETURN known;
END
$$;

-- The node's heartbeat: touches its row and reaps the nodes silent for `p_timeout` (their
-- connections leave). Returns what presence_touch returned.
CREATE FUNCTION pgpush.presence_heartbeat(p_node text, p_timeout interval) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    known boolean := pgpush.presence_touch(p_node);
    changes text[];
BEGIN
    WITH dead AS (
        DELETE FROM pgpush.presence_nodes WHERE seen < now() - p_timeout RETURNING node
    ), gone AS (
        DELETE FROM pgpush.presence p USING dead WHERE p.node = dead.node
        RETURNING p.channel, p.client, p.user_id, p.info
    )
    SELECT array_agg(pgpush.presence_change('leave', channel, client, user_id, info))
    INTO changes FROM gone;
    PERFORM pgpush.notify_presence(changes);
    RETURN known;
END
$$;

-- A node stopping: all its connections leave at once.
CREATE FUNCTION pgpush.presence_depart(p_node text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    changes text[];
BEGIN
    DELETE FROM pgpush.presence_nodes WHERE node = p_node;
    WITH gone AS (
        DELETE FROM pgpush.presence WHERE node = p_node
        RETURNING channel, client, user_id, info
    )
    SELECT array_agg(pgpush.presence_change('leave', channel, client, user_id, info))
    INTO changes FROM gone;
    PERFORM pgpush.notify_presence(changes);
END
$$;

-- Server-side control. Each function NOTIFYs `pgpush_control`; every node acts on it at once.
-- A revocation is also stored, so a node that starts later (or whose LISTEN connection was
-- down) refuses the token too, until `until`.

CREATE TABLE pgpush.revoked_tokens (
    jti text PRIMARY KEY,
    until timestamptz NOT NULL
);

-- Closes every connection of `p_user` (the tokens' `sub`), on every node.
CREATE FUNCTION pgpush.disconnect(p_user text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('pgpush_control', jsonb_build_object('op', 'disconnect', 'user', p_user)::text)
$$;

-- Unsubscribes every connection of `p_user` from `p_channel`, on every node.
CREATE FUNCTION pgpush.unsubscribe(p_user text, p_channel text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('pgpush_control', jsonb_build_object('op', 'unsubscribe', 'user', p_user,
                                                          'channel', p_channel)::text)
$$;

-- Refuses the token whose `jti` is `p_jti` until `p_until` (its expiry, normally) and closes
-- the connections that use it.
CREATE FUNCTION pgpush.revoke_token(p_jti text, p_until timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgpush.revoked_tokens (jti, until) VALUES (p_jti, p_until)
        ON CONFLICT (jti) DO UPDATE SET until = greatest(pgpush.revoked_tokens.until, excluded.until);
    DELETE FROM pgpush.revoked_tokens WHERE until < now();
    PERFORM pg_notify('pgpush_control', jsonb_build_object('op', 'revoke', 'jti', p_jti,
        'until', extract(epoch FROM p_until))::text);
END
$$;
