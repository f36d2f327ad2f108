-- Dead letters the dead-letter topic would not take (missing, denied by an ACL): kept here with
-- their original key, payload and headers (base64) until a background task publishes them.
CREATE TABLE dead_letters (
    dlq_id           TEXT PRIMARY KEY,
    component        TEXT NOT NULL,
    source_topic     TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT NOT NULL,
    msg_key          TEXT,
    payload          TEXT,
    headers          TEXT NOT NULL,
    reason           TEXT NOT NULL,
    error            TEXT NOT NULL,
    stored_at        BIGINT NOT NULL
);
CREATE INDEX dead_letters_by_time ON dead_letters (stored_at);
