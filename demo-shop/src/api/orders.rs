//! `/api/orders` and `/api/users/{id}/points`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use std::time::{SystemTime, UNIX_EPOCH};

use mq_starter::core::TxState;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Body, ErrorBody, PathParam, QueryParam};
use super::validate;
use super::ApiState;
use crate::domain::{Order, OrderCreated, OrderEvent, OrderPaid, Points};
use crate::store;
use crate::transactions::{CreateOrder, PayOrder};

/// One line of a new order.
#[derive(Deserialize, ToSchema)]
pub struct NewOrderItem {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub sku: String,
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(deserialize_with = "validate::integer")]
    pub quantity: i64,
}

/// A new order.
#[derive(Deserialize, ToSchema)]
pub struct NewOrder {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub user_id: String,
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<NewOrderItem>,
}

/// Places an order: reserves its stock and schedules its cancellation if unpaid, as one act
/// (a transactional `order-created` message whose local transaction inserts the order).
#[utoipa::path(post, path = "/api/orders", request_body = NewOrder,
    responses((status = 201, description = "the order, its stock reserved and its cancellation scheduled", body = Order), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 404, description = "a product of the order does not exist", body = ErrorBody), (status = 409, description = "not enough stock", body = ErrorBody), (status = 413, description = "a body larger than 64 KiB", body = ErrorBody), (status = 422, description = "a field breaks its documented rule", body = ErrorBody), (status = 503, description = "the broker did not take the message", body = ErrorBody)))]
pub async fn create_order(
    State(s): State<ApiState>,
    Body(o): Body<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    validate::text("user_id", &o.user_id)?;
    if o.items.is_empty() || o.items.len() > validate::MAX_LINES {
        return Err(ApiError::invalid(format!(
            "an order has 1 to {} items, not {}",
            validate::MAX_LINES,
            o.items.len()
        )));
    }
    let mut lines: BTreeMap<String, i64> = BTreeMap::new();
    for item in &o.items {
        validate::text("sku", &item.sku)?;
        validate::int(
            &format!("quantity of {}", item.sku),
            item.quantity,
            1,
            validate::MAX_QUANTITY,
        )?;
        // Bounded: at most MAX_LINES × MAX_QUANTITY.
        *lines.entry(item.sku.clone()).or_default() += item.quantity;
    }
    let order_ref = uuid::Uuid::now_v7().to_string();
    let placed_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (outcome, created) = tokio::sync::oneshot::channel();
    let sent = s
        .template
        .message("order-created")
        .key(order_ref.clone())
        .json(&OrderCreated {
            order_ref: order_ref.clone(),
            user_id: o.user_id.clone(),
            placed_at_ms,
        })
        .map_err(ApiError::from)?
        .send_in_transaction(
            "order-created",
            CreateOrder {
                order_ref,
                user_id: o.user_id,
                lines: lines.into_iter().collect(),
                placed_at_ms,
                outcome,
            },
        )
        .await;
    match created.await {
        // The order and its message stand together; if ending the transaction failed,
        // check-back commits the message.
        Ok(Ok(order)) => {
            if let Err(e) = sent {
                tracing::warn!(order = order.id, error = %e, "order created; its message is left to check-back");
            }
            Ok((StatusCode::CREATED, Json(order)))
        }
        Ok(Err(refused)) => Err(refused.into()),
        // The local transaction never ran: the half message could not be stored.
        Err(_) => Err(match sent {
            Err(e) => e.into(),
            Ok(_) => ApiError::internal("the order's local transaction did not report"),
        }),
    }
}

/// Who is asking for orders.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    pub user_id: String,
}

/// The orders of a user.
#[utoipa::path(get, path = "/api/orders", params(OrdersQuery),
    responses((status = 200, description = "the user's orders, newest first", body = Vec<Order>), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody)))]
pub async fn list_orders(
    State(s): State<ApiState>,
    QueryParam(q): QueryParam<OrdersQuery>,
) -> Result<Json<Vec<Order>>, ApiError> {
    Ok(Json(store::orders_of(&s.shop.db, &q.user_id).await?))
}

async fn order_or_404(s: &ApiState, id: i64) -> Result<Order, ApiError> {
    store::get_order(&s.shop.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {id} not found")))
}

/// An order.
#[utoipa::path(get, path = "/api/orders/{id}", params(("id" = i64, Path)),
    responses((status = 200, description = "the order", body = Order), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 404, description = "no such order", body = ErrorBody)))]
pub async fn get_order(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(order_or_404(&s, id).await?))
}

/// A payment.
#[derive(Deserialize, ToSchema)]
pub struct Payment {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub payment_id: String,
}

/// Pays an order: a transactional `order-paid` message whose local transaction marks the
/// order paid and writes the transaction log. Paying again with the same payment id answers
/// the same and changes nothing.
#[utoipa::path(post, path = "/api/orders/{id}/pay", params(("id" = i64, Path)), request_body = Payment,
    responses((status = 200, description = "the order, paid", body = Order), (status = 202, description = "the payment's outcome is not known yet; check-back settles it", body = ErrorBody), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 404, description = "no such order", body = ErrorBody), (status = 409, description = "the order is cancelled or paid by another payment", body = ErrorBody), (status = 413, description = "a body larger than 64 KiB", body = ErrorBody), (status = 422, description = "a field breaks its documented rule", body = ErrorBody), (status = 503, description = "the broker did not take the message", body = ErrorBody)))]
pub async fn pay_order(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
    Body(p): Body<Payment>,
) -> Result<Json<Order>, ApiError> {
    validate::text("payment_id", &p.payment_id)?;
    let order = order_or_404(&s, id).await?;
    match order.status.as_str() {
        "PAID" if order.payment_id.as_deref() == Some(p.payment_id.as_str()) => {
            return Ok(Json(order))
        }
        "PAID" => return Err(ApiError::conflict(format!("order {id} is already paid"))),
        "CANCELLED" => return Err(ApiError::conflict(format!("order {id} is cancelled"))),
        _ => {}
    }
    let sent = s
        .template
        .message("order-paid")
        .key(order.message_key.clone())
        .json(&OrderPaid {
            order_id: id,
            user_id: order.user_id.clone(),
            total_cents: order.total_cents,
            payment_id: p.payment_id.clone(),
        })
        .map_err(ApiError::from)?
        .send_in_transaction(
            "order-paid",
            PayOrder {
                order_id: id,
                payment_id: p.payment_id.clone(),
            },
        )
        .await?;
    let after = order_or_404(&s, id).await?;
    match (sent.state, after.status.as_str()) {
        (_, "PAID") if after.payment_id.as_deref() == Some(p.payment_id.as_str()) => {
            Ok(Json(after))
        }
        (_, "PAID") => Err(ApiError::conflict(format!("order {id} is already paid"))),
        (_, "CANCELLED") => Err(ApiError::conflict(format!("order {id} is cancelled"))),
        (TxState::Unknown, _) => Err(ApiError::new(
            StatusCode::ACCEPTED,
            "pending",
            "the payment outcome is not known yet; it will be settled shortly",
        )),
        _ => Err(ApiError::conflict(format!("order {id} could not be paid"))),
    }
}

/// An order's timeline: CREATED, then PAID or CANCELLED.
#[utoipa::path(get, path = "/api/orders/{id}/events", params(("id" = i64, Path)),
    responses((status = 200, description = "the timeline", body = Vec<OrderEvent>), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 404, description = "no such order", body = ErrorBody)))]
pub async fn order_events(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Vec<OrderEvent>>, ApiError> {
    order_or_404(&s, id).await?;
    Ok(Json(store::events(&s.shop.db, id).await?))
}

/// A user's points.
#[utoipa::path(get, path = "/api/users/{id}/points", params(("id" = String, Path)),
    responses((status = 200, description = "the points (0 for an unknown user)", body = Points), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody)))]
pub async fn user_points(
    State(s): State<ApiState>,
    PathParam(user_id): PathParam<String>,
) -> Result<Json<Points>, ApiError> {
    let points = store::points_of(&s.shop.db, &user_id).await?;
    Ok(Json(Points { user_id, points }))
}
