-- pgpush schema version 2: where each Hippie client is in the durable order, so a client whose
-- node died resumes on another node without losing durable messages.

CREATE TABLE pgpush.hippie_clients (
    channel text NOT NULL,
    client_id text NOT NULL,
    -- The last durable position the client acknowledged (by polling again, or by its stream
    -- staying up for a while after the message was written).
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, client_id)
);
