-- The location demo's table, as in the original talk: one row per person, located with PostGIS.
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE IF NOT EXISTS person (
    id serial PRIMARY KEY,
    name text,
    loc geography(Point, 4326)
);

-- The message for one person: {"id","name","loc"} with loc as GeoJSON, or null when unknown.
-- Built with json_build_object, never by pasting strings (a name with a quote stays valid JSON).
CREATE OR REPLACE FUNCTION person_message(p person)
RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', p.id,
        'name', p.name,
        'loc', CASE WHEN p.loc IS NULL THEN NULL ELSE ST_AsGeoJSON(p.loc, 6)::json END
    )
$$;
