-- The user service's own state: each customer's payment method, created on first lookup.
CREATE TABLE payment_methods (
    customer_id       TEXT PRIMARY KEY,
    payment_method_id TEXT NOT NULL,
    created_at        BIGINT NOT NULL
);
