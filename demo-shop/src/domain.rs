//! The shop's records, as stored and as the API shows them, and the messages it sends.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A product and its stock.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    /// Units held by unpaid orders.
    pub reserved: i64,
}

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: i64,
    pub price_cents: i64,
}

/// An order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Order {
    pub id: i64,
    pub user_id: String,
    /// `CREATED`, `PAID` or `CANCELLED`.
    pub status: String,
    pub total_cents: i64,
    pub items: Vec<OrderItem>,
    pub payment_id: Option<String>,
    pub created_at: String,
    /// When an unpaid order was cancelled.
    pub cancelled_at: Option<String>,
    /// The business key of every message about this order (its reference, chosen before the
    /// order had an id): the admin API's `GET /mq/api/messages?key=...`, `mqctl messages --key`
    /// and the console's search find them all.
    pub message_key: String,
}

/// A step of an order's timeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct OrderEvent {
    pub seq: i64,
    pub event: String,
    pub at: String,
}

/// A property-fee bill.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Fee {
    pub id: i64,
    pub household: String,
    pub period: String,
    pub amount_cents: i64,
    /// `UNPAID` or `PAID`.
    pub status: String,
    pub receipt_no: Option<String>,
    pub created_at: String,
    /// The business key of the bill's `fee-paid` messages: the admin API's
    /// `GET /mq/api/messages?key=...`, `mqctl messages --key` and the console's search find them.
    pub message_key: String,
}

/// A ledger entry of a paid bill.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct LedgerEntry {
    pub id: i64,
    pub fee_id: i64,
    pub transaction_id: String,
    pub amount_cents: i64,
    pub receipt_no: String,
    pub at: String,
}

/// Points of a user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Points {
    pub user_id: String,
    pub points: i64,
}

/// Sent to `order-created` in a transaction whose local transaction inserts the order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderCreated {
    /// The order's reference, chosen before the order (and its id) exists.
    pub order_ref: String,
    pub user_id: String,
    /// When the order was placed, in ms since the Unix epoch; its `created_at`.
    pub placed_at_ms: u64,
}

/// Sent to `order-timeout`, delayed by `shop.order.cancel-after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderTimeout {
    pub order_id: i64,
}

/// Sent to `order-paid` in a transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPaid {
    pub order_id: i64,
    pub user_id: String,
    pub total_cents: i64,
    pub payment_id: String,
}

/// Sent to `order-events`, orderly by order id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderEventMessage {
    pub order_id: i64,
    pub event: String,
}

/// Sent to `fee-paid` in a transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeePaid {
    pub fee_id: i64,
    pub transaction_id: String,
    pub amount_cents: i64,
}

/// Now, as stored.
pub fn now() -> String {
    format_time(std::time::SystemTime::now())
}

/// A time, as stored.
pub fn format_time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn time_of_ms(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}
