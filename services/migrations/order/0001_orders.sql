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
