-- Every message about an order or a bill carries the record's `ref` as its business key, so
-- that one key search finds them all. A bill's ref is chosen when it is issued. Records from
-- before had keys made of the database's identity and their id; the backfill gives them that
-- key, so their idempotency records still match.
ALTER TABLE fees ADD COLUMN ref TEXT;
UPDATE fees SET ref = COALESCE((SELECT id FROM shop_instance ORDER BY id LIMIT 1), 'shop') || ':' || id;
CREATE UNIQUE INDEX fees_by_ref ON fees (ref);
UPDATE orders SET ref = COALESCE((SELECT id FROM shop_instance ORDER BY id LIMIT 1), 'shop') || ':' || id
    WHERE ref IS NULL;
