-- An order's creation is a transactional message: the message carries `ref`, chosen before
-- the order exists, and check-back and the cancellation scheduler find the order by it.
ALTER TABLE orders ADD COLUMN ref TEXT;
CREATE UNIQUE INDEX orders_by_ref ON orders (ref);
-- When an unpaid order was cancelled (never before created_at + shop.order.cancel-after).
ALTER TABLE orders ADD COLUMN cancelled_at TEXT;
