-- Sagas of any type. Until now every saga was a create-order saga: `customer_id` was a required
-- column and an idempotency key was unique across all sagas. Now:
-- - `input` keeps what started the saga (its definition's input schema), written once; the
--   create-order rows get theirs back from their state (customer_id, order_details,
--   amount_cents, all there since the first version);
-- - `definition_version` says which version of its definition drives the saga (1 for every
--   saga so far);
-- - an idempotency key is unique per saga type;
-- - `customer_id` goes: it is create-order's field, and lives in its input.
ALTER TABLE sagas ADD COLUMN definition_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sagas ADD COLUMN input TEXT;
UPDATE sagas SET input = json_build_object(
    'customer_id', state::jsonb -> 'context' -> 'customer_id',
    'order_details', state::jsonb -> 'context' -> 'order_details',
    'amount_cents', state::jsonb -> 'context' -> 'amount_cents')::text;
ALTER TABLE sagas ALTER COLUMN input SET NOT NULL;
ALTER TABLE sagas DROP COLUMN customer_id;
ALTER TABLE sagas DROP CONSTRAINT sagas_idempotency_key_key;
ALTER TABLE sagas ADD CONSTRAINT sagas_type_idempotency_key UNIQUE (saga_type, idempotency_key);
DROP INDEX sagas_by_created;
DROP INDEX sagas_by_status;
CREATE INDEX sagas_by_created ON sagas (created_at DESC, saga_id DESC);
CREATE INDEX sagas_by_status ON sagas (status, created_at DESC, saga_id DESC);
CREATE INDEX sagas_by_type ON sagas (saga_type, created_at DESC, saga_id DESC);
