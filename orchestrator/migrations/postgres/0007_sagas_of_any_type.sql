-- Sagas of any type. Until now every saga was a create-order saga: `customer_id` was a required
-- column and an idempotency key was unique across all sagas. Now:
-- - `input` keeps what started the saga (its definition's input schema), written once; the
--   create-order rows get theirs back from their state (customer_id, order_details,
--   amount_cents, all there since the first version);
-- - `definition_version` says which version of its definition drives the saga (1 for every
--   saga so far);
-- - an idempotency key is unique per saga type;
-- - `customer_id` goes: it is create-order's field, and lives in its input.
--
-- A state may hold the JSON escape \u0000 (earlier releases took NUL in item names and
-- locations), which PostgreSQL's json and jsonb refuse to read: for the input it is read with
-- each such escape replaced by \ufffd (the replacement character), twice so that escapes
-- standing side by side are all found; an escape is one after an even run of backslashes
-- (`\\u0000` is a backslash, then the text u0000). The state itself is left as it was.
--
-- This text replaced a first one that cast every state to jsonb and so failed on such rows; the
-- orchestrator accepts a database that ran either (superseded/postgres/0007_*.sql): the schema
-- they leave is the same.
ALTER TABLE sagas ADD COLUMN definition_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sagas ADD COLUMN input TEXT;
WITH readable AS (
    SELECT saga_id, CASE WHEN strpos(state, '\u0000') = 0 THEN state ELSE
        regexp_replace(regexp_replace(state,
            '(^|[^\\])((\\\\)*)\\u0000', '\1\2\\ufffd', 'g'),
            '(^|[^\\])((\\\\)*)\\u0000', '\1\2\\ufffd', 'g')
    END::jsonb AS state
    FROM sagas
)
UPDATE sagas SET input = json_build_object(
    'customer_id', readable.state -> 'context' -> 'customer_id',
    'order_details', readable.state -> 'context' -> 'order_details',
    'amount_cents', readable.state -> 'context' -> 'amount_cents')::text
FROM readable WHERE readable.saga_id = sagas.saga_id;
ALTER TABLE sagas ALTER COLUMN input SET NOT NULL;
ALTER TABLE sagas DROP COLUMN customer_id;
ALTER TABLE sagas DROP CONSTRAINT sagas_idempotency_key_key;
ALTER TABLE sagas ADD CONSTRAINT sagas_type_idempotency_key UNIQUE (saga_type, idempotency_key);
DROP INDEX sagas_by_created;
DROP INDEX sagas_by_status;
CREATE INDEX sagas_by_created ON sagas (created_at DESC, saga_id DESC);
CREATE INDEX sagas_by_status ON sagas (status, created_at DESC, saga_id DESC);
CREATE INDEX sagas_by_type ON sagas (saga_type, created_at DESC, saga_id DESC);
