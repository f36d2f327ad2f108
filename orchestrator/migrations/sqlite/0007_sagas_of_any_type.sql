-- Sagas of any type. Until now every saga was a create-order saga: `customer_id` was a required
-- column and an idempotency key was unique across all sagas. Now:
-- - `input` keeps what started the saga (its definition's input schema), written once; the
--   create-order rows get theirs back from their state (customer_id, order_details,
--   amount_cents, all there since the first version);
-- - `definition_version` says which version of its definition drives the saga (1 for every
--   saga so far);
-- - an idempotency key is unique per saga type;
-- - `customer_id` goes: it is create-order's field, and lives in its input.
-- SQLite cannot drop a NOT NULL column or change a UNIQUE constraint in place: the table is
-- rebuilt, rows copied, indexes recreated.
CREATE TABLE sagas_v7 (
    saga_id            TEXT PRIMARY KEY,
    saga_type          TEXT NOT NULL,
    definition_version INTEGER NOT NULL DEFAULT 1,
    status             TEXT NOT NULL,
    idempotency_key    TEXT,
    input              TEXT NOT NULL,
    state              TEXT NOT NULL,
    version            BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    wake_at            BIGINT,
    traceparent        TEXT,
    tracestate         TEXT,
    UNIQUE (saga_type, idempotency_key)
);
INSERT INTO sagas_v7 (saga_id, saga_type, definition_version, status, idempotency_key, input,
                      state, version, created_at, updated_at, wake_at, traceparent, tracestate)
SELECT saga_id, saga_type, 1, status, idempotency_key,
       json_object('customer_id', state -> '$.context.customer_id',
                   'order_details', state -> '$.context.order_details',
                   'amount_cents', state -> '$.context.amount_cents'),
       state, version, created_at, updated_at, wake_at, traceparent, tracestate
FROM sagas;
DROP TABLE sagas;
ALTER TABLE sagas_v7 RENAME TO sagas;
CREATE INDEX sagas_by_created ON sagas (created_at DESC, saga_id DESC);
CREATE INDEX sagas_by_status ON sagas (status, created_at DESC, saga_id DESC);
CREATE INDEX sagas_by_type ON sagas (saga_type, created_at DESC, saga_id DESC);
CREATE INDEX sagas_by_wake ON sagas (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX sagas_ended ON sagas (updated_at) WHERE status IN ('COMPLETED', 'COMPENSATED', 'CANCELLED');
