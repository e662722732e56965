-- pgpush schema version 3: cache invalidation. pgpush.watch_table(table, channel) installs
-- triggers that publish {"op","table","key"} as a durable event for every row change, so a cache
-- that consumes the channel (with its cursor) never keeps a stale row past delivery.

-- The primary key of a row, as JSON: the value for a one-column key, an array otherwise.
CREATE FUNCTION pgpush.row_key(row_value jsonb, key_columns text[])
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN cardinality(key_columns) = 1 THEN row_value -> key_columns[1]
        ELSE (SELECT jsonb_agg(row_value -> k.column_name ORDER BY k.ordinal)
              FROM unnest(key_columns) WITH ORDINALITY AS k(column_name, ordinal))
    END
$$;

-- The published text: compact JSON with the keys in this order.
CREATE FUNCTION pgpush.row_change(op text, table_name text, key jsonb)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format('{"op":%s,"table":%s,"key":%s}', to_json(op), to_json(table_name), coalesce(key::text, 'null'))
$$;

-- Trigger arguments: the channel, then the key columns in key order.
CREATE FUNCTION pgpush.watch_table_trigger()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    channel text := TG_ARGV[0];
    key_columns text[] := TG_ARGV[1:];
    table_name text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    old_key jsonb;
    new_key jsonb;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pgpush.publish(channel, pgpush.row_change('truncate', table_name, NULL));
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_key := pgpush.row_key(to_jsonb(OLD), key_columns);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_key := pgpush.row_key(to_jsonb(NEW), key_columns);
    END IF;
    IF TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key THEN
        -- The key itself changed: the old key is gone, the new one appeared.
        PERFORM pgpush.publish(channel, pgpush.row_change('delete', table_name, old_key));
        PERFORM pgpush.publish(channel, pgpush.row_change('insert', table_name, new_key));
    ELSE
        PERFORM pgpush.publish(channel, pgpush.row_change(lower(TG_OP), table_name, coalesce(new_key, old_key)));
    END IF;
    RETURN NULL;
END
$$;

-- Publishes every INSERT, UPDATE, DELETE (per row) and TRUNCATE of `watched` on `channel`.
-- Calling it again replaces the channel; one channel per table.
CREATE FUNCTION pgpush.watch_table(watched regclass, channel text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    key_columns text[];
BEGIN
    IF channel IS NULL OR octet_length(channel) NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION 'pgpush.watch_table: a channel name is 1 to 63 bytes, got %', quote_nullable(channel)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ordinal) INTO key_columns
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ordinal)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = watched AND i.indisprimary;
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'pgpush.watch_table: table % has no primary key', watched
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgpush.unwatch_table(watched);
    -- Every name is quoted: %s of a regclass is its quoted name, %L quotes a literal.
    EXECUTE format('CREATE TRIGGER pgpush_watch AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION pgpush.watch_table_trigger(%s)',
                   watched,
                   array_to_string(ARRAY(SELECT quote_literal(v) FROM unnest(channel || key_columns) v), ', '));
    EXECUTE format('CREATE TRIGGER pgpush_watch_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgpush.watch_table_trigger(%L)',
                   watched, channel);
END
$$;

-- Removes what pgpush.watch_table installed (nothing if it was not installed).
CREATE FUNCTION pgpush.unwatch_table(watched regclass)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    trigger_name name;
BEGIN
    FOR trigger_name IN
        SELECT t.tgname FROM pg_trigger t
        WHERE t.tgrelid = watched AND t.tgname IN ('pgpush_watch', 'pgpush_watch_truncate')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, watched);
    END LOOP;
END
$$;
