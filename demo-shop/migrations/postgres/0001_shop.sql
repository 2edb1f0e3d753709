CREATE TABLE products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock BIGINT NOT NULL CHECK (stock >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= stock)
);

CREATE TABLE orders (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    payment_id TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id);

CREATE TABLE order_items (
    order_id BIGINT NOT NULL REFERENCES orders (id),
    sku TEXT NOT NULL REFERENCES products (sku),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    price_cents BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku)
);

-- Written in the same database transaction as the business change; check-back reads it.
CREATE TABLE tx_log (
    tx_key TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);

CREATE TABLE points (
    user_id TEXT PRIMARY KEY,
    points BIGINT NOT NULL
);

-- One credit per order, whatever the redeliveries.
CREATE TABLE points_credits (
    order_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    points BIGINT NOT NULL
);

CREATE TABLE order_events (
    order_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (order_id, seq),
    UNIQUE (order_id, event)
);

CREATE TABLE fees (
    id BIGSERIAL PRIMARY KEY,
    household TEXT NOT NULL,
    period TEXT NOT NULL,
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    status TEXT NOT NULL,
    receipt_no TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (household, period)
);

CREATE TABLE fee_payments (
    transaction_id TEXT PRIMARY KEY,
    fee_id BIGINT NOT NULL REFERENCES fees (id),
    amount_cents BIGINT NOT NULL,
    at TEXT NOT NULL
);

-- One ledger entry per bill, whatever the callbacks and redeliveries.
CREATE TABLE ledger (
    id BIGSERIAL PRIMARY KEY,
    fee_id BIGINT NOT NULL UNIQUE REFERENCES fees (id),
    transaction_id TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    receipt_no TEXT NOT NULL,
    at TEXT NOT NULL
);
