//! Products, orders, points and order timelines.

use sqlx::Row;

use super::Db;

use super::StoreError;
use crate::domain::{format_time, now, time_of_ms, Order, OrderEvent, OrderItem, Product};

/// Adds a product.
pub async fn create_product(
    pool: &Db,
    sku: &str,
    name: &str,
    price_cents: i64,
    stock: i64,
) -> Result<Product, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ($1, $2, $3, $4) ON CONFLICT (sku) DO NOTHING",
    )
    .bind(sku)
    .bind(name)
    .bind(price_cents)
    .bind(stock)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "product {sku} already exists"
        )));
    }
    get_product(pool, sku)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("product {sku}")))
}

/// A product.
pub async fn get_product(pool: &Db, sku: &str) -> Result<Option<Product>, StoreError> {
    let row =
        sqlx::query("SELECT sku, name, price_cents, stock, reserved FROM products WHERE sku = $1")
            .bind(sku)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| Product {
        sku: r.get("sku"),
        name: r.get("name"),
        price_cents: r.get("price_cents"),
        stock: r.get("stock"),
        reserved: r.get("reserved"),
    }))
}

/// The transaction-log key of an order's creation.
pub fn order_created_key(order_ref: &str) -> String {
    format!("order-created:{order_ref}")
}

/// Creates an order, reserves its stock, starts its timeline with `CREATED` and writes the
/// transaction log, in one database transaction.
pub async fn create_order(
    pool: &Db,
    order_ref: &str,
    user_id: &str,
    items: &[(String, i64)],
    placed_at_ms: u64,
) -> Result<Order, StoreError> {
    let mut tx = pool.begin().await?;
    let mut total = 0i64;
    let mut lines = Vec::with_capacity(items.len());
    // Products in sku order, as every transaction that changes several (see `lines_by_sku`).
    let mut items: Vec<&(String, i64)> = items.iter().collect();
    items.sort();
    for (sku, quantity) in items {
        let row = sqlx::query("SELECT price_cents FROM products WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("product {sku}")))?;
        let price: i64 = row.get("price_cents");
        // Conditional, so that concurrent orders (several processes on PostgreSQL) can never
        // reserve more than the stock.
        let reserved = sqlx::query(
            "UPDATE products SET reserved = reserved + $1 WHERE sku = $2 AND stock - reserved >= $3",
        )
        .bind(quantity)
        .bind(sku)
        .bind(quantity)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if reserved == 0 {
            let available: i64 =
                sqlx::query("SELECT stock - reserved AS available FROM products WHERE sku = $1")
                    .bind(sku)
                    .fetch_one(&mut *tx)
                    .await?
                    .get("available");
            return Err(StoreError::Conflict(format!(
                "not enough {sku}: {available} available, {quantity} asked"
            )));
        }
        total += price * quantity;
        lines.push(OrderItem {
            sku: sku.clone(),
            quantity: *quantity,
            price_cents: price,
        });
    }
    let created_at = format_time(time_of_ms(placed_at_ms));
    let id: i64 = sqlx::query(
        "INSERT INTO orders (ref, user_id, status, total_cents, created_at) VALUES ($1, $2, 'CREATED', $3, $4) RETURNING id",
    )
    .bind(order_ref)
    .bind(user_id)
    .bind(total)
    .bind(&created_at)
    .fetch_one(&mut *tx)
    .await?
    .get("id");
    for l in &lines {
        sqlx::query(
            "INSERT INTO order_items (order_id, sku, quantity, price_cents) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(&l.sku)
        .bind(l.quantity)
        .bind(l.price_cents)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO order_events (order_id, seq, event, at) VALUES ($1, 1, 'CREATED', $2)",
    )
    .bind(id)
    .bind(&created_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO tx_log (tx_key, created_at) VALUES ($1, $2)")
        .bind(order_created_key(order_ref))
        .bind(&created_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Order {
        id,
        user_id: user_id.to_owned(),
        status: "CREATED".into(),
        total_cents: total,
        items: lines,
        payment_id: None,
        created_at,
        cancelled_at: None,
        message_key: order_ref.to_owned(),
    })
}

/// The id of the order with reference `order_ref`.
pub async fn order_id_by_ref(pool: &Db, order_ref: &str) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query("SELECT id FROM orders WHERE ref = $1")
        .bind(order_ref)
        .fetch_optional(pool)
        .await?
        .map(|r| r.get("id")))
}

/// An order with its items.
pub async fn get_order(pool: &Db, id: i64) -> Result<Option<Order>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT id, ref, user_id, status, total_cents, payment_id, created_at, cancelled_at FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let items = sqlx::query(
        "SELECT sku, quantity, price_cents FROM order_items WHERE order_id = $1 ORDER BY sku",
    )
    .bind(id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| OrderItem {
        sku: r.get("sku"),
        quantity: r.get("quantity"),
        price_cents: r.get("price_cents"),
    })
    .collect();
    Ok(Some(Order {
        id: row.get("id"),
        user_id: row.get("user_id"),
        status: row.get("status"),
        total_cents: row.get("total_cents"),
        items,
        payment_id: row.get("payment_id"),
        created_at: row.get("created_at"),
        cancelled_at: row.get("cancelled_at"),
        message_key: row.get("ref"),
    }))
}

/// The orders of a user, newest first.
pub async fn orders_of(pool: &Db, user_id: &str) -> Result<Vec<Order>, StoreError> {
    let ids: Vec<i64> = sqlx::query("SELECT id FROM orders WHERE user_id = $1 ORDER BY id DESC")
        .bind(user_id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| r.get("id"))
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(o) = get_order(pool, id).await? {
            out.push(o);
        }
    }
    Ok(out)
}

/// What paying did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paid {
    /// Paid now.
    Now,
    /// Paid before with this payment id.
    Already,
}

/// The transaction-log key of an order's payment.
pub fn order_paid_key(order_id: i64) -> String {
    format!("order-paid:{order_id}")
}

/// Marks an order paid, turns its reservation into a sale and writes the transaction log, in
/// one database transaction.
pub async fn pay_order(pool: &Db, order_id: i64, payment_id: &str) -> Result<Paid, StoreError> {
    let mut tx = pool.begin().await?;
    // Conditional, so that of two concurrent payments (several processes on PostgreSQL) only
    // one changes the order; the other sees what it did.
    let changed = sqlx::query(
        "UPDATE orders SET status = 'PAID', payment_id = $1 WHERE id = $2 AND status = 'CREATED'",
    )
    .bind(payment_id)
    .bind(order_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        let row = sqlx::query("SELECT status, payment_id FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("order {order_id}")))?;
        let status: String = row.get("status");
        let paid_with: Option<String> = row.get("payment_id");
        return match status.as_str() {
            "PAID" if paid_with.as_deref() == Some(payment_id) => Ok(Paid::Already),
            "PAID" => Err(StoreError::Conflict(format!(
                "order {order_id} is already paid by another payment"
            ))),
            _ => Err(StoreError::Conflict(format!(
                "order {order_id} is {status}"
            ))),
        };
    }
    for (sku, quantity) in lines_by_sku(&mut tx, order_id).await? {
        sqlx::query(
            "UPDATE products SET stock = stock - $1, reserved = reserved - $2 WHERE sku = $3",
        )
        .bind(quantity)
        .bind(quantity)
        .bind(sku)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("INSERT INTO tx_log (tx_key, created_at) VALUES ($1, $2)")
        .bind(order_paid_key(order_id))
        .bind(now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Paid::Now)
}

/// Whether the transaction log holds `key`.
pub async fn tx_logged(pool: &Db, key: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT 1 FROM tx_log WHERE tx_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await?
        .is_some())
}

/// Cancels an order that is still unpaid and releases its stock. Returns whether it did.
pub async fn cancel_if_unpaid(pool: &Db, order_id: i64) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let changed =
        sqlx::query("UPDATE orders SET status = 'CANCELLED', cancelled_at = $1 WHERE id = $2 AND status = 'CREATED'")
            .bind(now())
            .bind(order_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    for (sku, quantity) in lines_by_sku(&mut tx, order_id).await? {
        sqlx::query("UPDATE products SET reserved = reserved - $1 WHERE sku = $2")
            .bind(quantity)
            .bind(sku)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The lines of an order, by sku: every transaction that changes several products changes
/// them in this order (placing an order too), so that on PostgreSQL two of them never wait for
/// each other's rows (a deadlock, which fails one of them).
async fn lines_by_sku(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    order_id: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query("SELECT sku, quantity FROM order_items WHERE order_id = $1 ORDER BY sku")
            .bind(order_id)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| (r.get("sku"), r.get("quantity")))
            .collect(),
    )
}

/// Credits points for an order, once per order. Returns whether it did now.
pub async fn credit_points(
    pool: &Db,
    order_id: i64,
    user_id: &str,
    points: i64,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO points_credits (order_id, user_id, points) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(points)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO points (user_id, points) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET points = points.points + excluded.points",
    )
    .bind(user_id)
    .bind(points)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A user's points.
pub async fn points_of(pool: &Db, user_id: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT points FROM points WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await?
        .map(|r| r.get("points"))
        .unwrap_or(0))
}

/// Appends an event to an order's timeline, once per kind. Returns whether it did now.
pub async fn add_event(pool: &Db, order_id: i64, event: &str) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO order_events (order_id, seq, event, at) \
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM order_events WHERE order_id = $2), $3, $4) \
         ON CONFLICT (order_id, event) DO NOTHING",
    )
    .bind(order_id)
    .bind(order_id)
    .bind(event)
    .bind(now())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

/// An order's timeline.
pub async fn events(pool: &Db, order_id: i64) -> Result<Vec<OrderEvent>, StoreError> {
    Ok(
        sqlx::query("SELECT seq, event, at FROM order_events WHERE order_id = $1 ORDER BY seq")
            .bind(order_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| OrderEvent {
                seq: r.get("seq"),
                event: r.get("event"),
                at: r.get("at"),
            })
            .collect(),
    )
}
