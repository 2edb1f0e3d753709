CREATE TABLE products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock INTEGER NOT NULL CHECK (stock >= 0),
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= stock)
);

CREATE TABLE orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    payment_id TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id);

CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders (id),
    sku TEXT NOT NULL REFERENCES products (sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, sku)
);

-- Written in the same database transaction as the business change; check-back reads it.
CREATE TABLE tx_log (
    tx_key TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);

CREATE TABLE points (
    user_id TEXT PRIMARY KEY,
    points INTEGER NOT NULL
);

-- One credit per order, whatever the redeliveries.
CREATE TABLE points_credits (
    order_id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    points INTEGER NOT NULL
);

CREATE TABLE order_events (
    order_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (order_id, seq),
    UNIQUE (order_id, event)
);

CREATE TABLE fees (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    household TEXT NOT NULL,
    period TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    status TEXT NOT NULL,
    receipt_no TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (household, period)
);

CREATE TABLE fee_payments (
    transaction_id TEXT PRIMARY KEY,
    fee_id INTEGER NOT NULL REFERENCES fees (id),
    amount_cents INTEGER NOT NULL,
    at TEXT NOT NULL
);

-- One ledger entry per bill, whatever the callbacks and redeliveries.
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fee_id INTEGER NOT NULL UNIQUE REFERENCES fees (id),
    transaction_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    receipt_no TEXT NOT NULL,
    at TEXT NOT NULL
);
