-- The participant runtime's own tables, in the database of every participant built on it: each
-- command handled with the reply it got (a redelivered command gets the same reply again), and the
-- dead letters the dead-letter topic would not take. A participant's own migrations hold only its
-- business tables. Numbered far above them, so both sets live in one history; IF NOT EXISTS
-- because the stub services created these tables in their own first migrations, before the
-- runtime owned them. The same SQL runs on SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS processed_commands (
    command_id   TEXT PRIMARY KEY,
    command_type TEXT NOT NULL,
    saga_id      TEXT NOT NULL,
    reply        TEXT NOT NULL,
    processed_at BIGINT NOT NULL
);
-- The pruner deletes processed commands older than the retention time (RETENTION_MS).
CREATE INDEX IF NOT EXISTS processed_commands_by_time ON processed_commands (processed_at);

-- Kept with their original key, payload and headers (base64) until a background task publishes
-- them.
CREATE TABLE IF NOT EXISTS dead_letters (
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
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (stored_at);
