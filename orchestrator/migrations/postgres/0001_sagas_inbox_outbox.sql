-- One row per saga. `state` is the engine's SagaState as JSON (context, step history, pending
-- command); the other columns are copies of what queries filter and sort on.
CREATE TABLE sagas (
    saga_id         TEXT PRIMARY KEY,
    saga_type       TEXT NOT NULL,
    status          TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    state           TEXT NOT NULL,
    version         BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX sagas_by_created ON sagas (created_at DESC);
CREATE INDEX sagas_by_status ON sagas (status, created_at DESC);

-- Every reply applied (or deliberately ignored), by message id: a redelivered reply finds its id
-- here and changes nothing.
CREATE TABLE inbox (
    message_id   TEXT PRIMARY KEY,
    saga_id      TEXT NOT NULL,
    message_type TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);

-- Messages to publish, written in the same transaction as the saga change that caused them;
-- the relay publishes them in id order and stamps sent_at.
CREATE TABLE outbox (
    id         BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL,
    topic      TEXT NOT NULL,
    msg_key    TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sent_at    BIGINT
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
