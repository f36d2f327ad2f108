-- The payment service's own state. One payment per saga: a re-sent authorize_payment finds it
-- here instead of authorizing twice. Declined attempts are kept too, for the record.
CREATE TABLE payments (
    payment_id        TEXT PRIMARY KEY,
    saga_id           TEXT NOT NULL UNIQUE,
    customer_id       TEXT NOT NULL,
    payment_method_id TEXT,
    amount_cents      BIGINT NOT NULL,
    status            TEXT NOT NULL,
    reason            TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

-- Every command handled, with the reply sent: a redelivered command gets the same reply again.
CREATE TABLE processed_commands (
    command_id   TEXT PRIMARY KEY,
    command_type TEXT NOT NULL,
    saga_id      TEXT NOT NULL,
    reply        TEXT NOT NULL,
    processed_at BIGINT NOT NULL
);
