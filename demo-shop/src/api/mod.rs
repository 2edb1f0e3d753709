//! The HTTP API: axum routes documented with utoipa, from the same annotations.

pub mod error;
mod fees;
mod ops;
mod orders;
mod products;
mod validate;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use mq_starter::core::Broker;
use mq_starter::{Metrics, MqTemplate};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Shop;

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub shop: Shop,
    pub template: MqTemplate,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
}

#[derive(OpenApi)]
#[openapi(info(
    title = "demo-shop",
    description = "Orders, payments, property fees and delayed cancellation on mq; the mq admin API under /mq/api"
))]
struct ApiDoc;

/// The shop's routes and mq's admin API (`admin`, from `Running::admin_router`), and one
/// OpenAPI document of both.
pub fn router(state: ApiState, admin: Router) -> Router {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(products::create_product))
        .routes(routes!(products::get_product))
        .routes(routes!(orders::create_order, orders::list_orders))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::pay_order))
        .routes(routes!(orders::order_events))
        .routes(routes!(orders::user_points))
        .routes(routes!(fees::create_fee))
        .routes(routes!(fees::get_fee))
        .routes(routes!(fees::payment_notify))
        .routes(routes!(fees::fee_ledger))
        .routes(routes!(ops::health))
        .routes(routes!(ops::metrics))
        .with_state(state)
        .split_for_parts();
    doc.merge(mq_starter::admin::openapi());
    let doc = Arc::new(doc);
    router
        .merge(admin)
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}
