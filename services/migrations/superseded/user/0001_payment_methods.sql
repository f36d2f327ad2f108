-- The user service's own state: each customer's payment method, created on first lookup.
CREATE TABLE payment_methods (
    customer_id       TEXT PRIMARY KEY,
    payment_method_id TEXT NOT NULL,
    created_at        BIGINT NOT NULL
);

-- Every command handled, with the reply sent: a redelivered command gets the same reply again.
CREATE TABLE processed_commands (
    command_id   TEXT PRIMARY KEY,
    command_type TEXT NOT NULL,
    saga_id      TEXT NOT NULL,
    reply        TEXT NOT NULL,
    processed_at BIGINT NOT NULL
);
