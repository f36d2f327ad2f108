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
