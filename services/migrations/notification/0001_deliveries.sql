-- The notification service's record of what it delivered: one row per delivery (one saga
-- outcome told to one audience), so a job read again (a redelivery, a retry crossing a restart)
-- sends nothing twice. The same SQL runs on SQLite and PostgreSQL.
CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY,
    saga_id     TEXT NOT NULL,
    channel     TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    -- sent | retrying | dead_lettered
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    last_error  TEXT,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX deliveries_by_saga ON deliveries (saga_id);
