//! The shop's listeners.

use mq_starter::prelude::*;

use crate::domain::{
    time_of_ms, FeePaid, OrderCreated, OrderEventMessage, OrderPaid, OrderTimeout,
};
use crate::store::{self, StoreError};
use crate::Shop;

/// Sends an event to the order's timeline, in order with its other events. `cause` is the
/// message the event follows from: the event carries its keys (the order's ref), so that one
/// key search finds every message about the order.
pub async fn timeline_event(
    template: &MqTemplate,
    order_id: i64,
    event: &str,
    cause: &MessageView,
) -> Result<(), String> {
    let mut message = template
        .message("order-events")
        .sharding_key(order_id.to_string());
    for key in &cause.keys {
        message = message.key(key.clone());
    }
    message
        .json(&OrderEventMessage {
            order_id,
            event: event.into(),
        })
        .map_err(|e| e.to_string())?
        .send()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Schedules a new order's cancellation for `shop.order.cancel-after` after it was placed. A
/// redelivery schedules it again, which is harmless: cancelling is once per order.
#[mq_listener(topic = "order-created", group = "order-cancel-scheduler")]
async fn schedule_cancellation(
    State(shop): State<Shop>,
    Json(c): Json<OrderCreated>,
    template: MqTemplate,
) -> Result<(), String> {
    let order_id = store::order_id_by_ref(&shop.db, &c.order_ref)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no order with ref {}", c.order_ref))?;
    let due = time_of_ms(c.placed_at_ms) + shop.cancel_after;
    template
        .message("order-timeout")
        .key(c.order_ref)
        .delay(Delay::At(due))
        .json(&OrderTimeout { order_id })
        .map_err(|e| e.to_string())?
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Cancels an order still unpaid when its delay runs out, and releases its stock.
#[mq_listener(topic = "order-timeout", group = "order-cancel", idempotent = key)]
async fn cancel_unpaid(
    State(shop): State<Shop>,
    Json(t): Json<OrderTimeout>,
    template: MqTemplate,
    message: MessageView,
) -> Result<(), String> {
    let cancelled = store::cancel_if_unpaid(&shop.db, t.order_id)
        .await
        .map_err(|e| e.to_string())?;
    let order = store::get_order(&shop.db, t.order_id)
        .await
        .map_err(|e| e.to_string())?;
    if order.is_some_and(|o| o.status == "CANCELLED") {
        if cancelled {
            tracing::info!(order = t.order_id, "unpaid order cancelled");
        }
        timeline_event(&template, t.order_id, "CANCELLED", &message).await?;
    }
    Ok(())
}

/// Credits points for a paid order, once per order.
#[mq_listener(topic = "order-paid", group = "points")]
async fn credit_points(
    State(shop): State<Shop>,
    Json(p): Json<OrderPaid>,
) -> Result<(), StoreError> {
    let points = p.total_cents / 100;
    if store::credit_points(&shop.db, p.order_id, &p.user_id, points).await? {
        tracing::info!(user = %p.user_id, order = p.order_id, points, "points credited");
    }
    Ok(())
}

/// Tells every shop instance about a paid order.
#[mq_listener(topic = "order-paid", group = "notify", model = broadcasting)]
async fn notify_paid(Json(p): Json<OrderPaid>) {
    tracing::info!(user = %p.user_id, order = p.order_id, total_cents = p.total_cents, "notification: order paid");
}

/// Puts PAID on the order's timeline.
#[mq_listener(topic = "order-paid", group = "order-events-feed")]
async fn paid_to_timeline(
    Json(p): Json<OrderPaid>,
    template: MqTemplate,
    message: MessageView,
) -> Result<(), String> {
    timeline_event(&template, p.order_id, "PAID", &message).await
}

/// Records an order's timeline, one event at a time per order.
#[mq_listener(topic = "order-events", group = "order-timeline", mode = orderly)]
async fn record_timeline(
    State(shop): State<Shop>,
    Json(e): Json<OrderEventMessage>,
) -> Result<(), StoreError> {
    store::add_event(&shop.db, e.order_id, &e.event).await?;
    Ok(())
}

/// Posts the one ledger entry of a paid bill.
#[mq_listener(topic = "fee-paid", group = "fee-ledger", idempotent = key)]
async fn post_ledger(State(shop): State<Shop>, Json(p): Json<FeePaid>) -> Result<(), StoreError> {
    if store::post_ledger(&shop.db, p.fee_id, &p.transaction_id, p.amount_cents).await? {
        tracing::info!(fee = p.fee_id, transaction = %p.transaction_id, "ledger entry posted");
    }
    Ok(())
}
