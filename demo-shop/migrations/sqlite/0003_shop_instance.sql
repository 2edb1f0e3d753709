-- This database's identity: part of the shop's idempotency keys, so that a database reset
-- (whose ids start again at 1) is never mistaken for duplicates of the old database's work.
CREATE TABLE shop_instance (
    id TEXT NOT NULL PRIMARY KEY
);
