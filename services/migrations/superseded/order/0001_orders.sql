-- The order service's own state. One order per saga: a re-sent create_order finds it here.
CREATE TABLE orders (
    order_id      TEXT PRIMARY KEY,
    saga_id       TEXT NOT NULL UNIQUE,
    customer_id   TEXT NOT NULL,
    order_details TEXT NOT NULL,
    amount_cents  BIGINT NOT NULL,
    status        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Every command handled, with the reply sent: a redelivered command gets the same reply again.
CREATE TABLE processed_commands (
    command_id   TEXT PRIMARY KEY,
    command_type TEXT NOT NULL,
    saga_id      TEXT NOT NULL,
    reply        TEXT NOT NULL,
    processed_at BIGINT NOT NULL
);
