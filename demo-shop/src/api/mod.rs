//! The HTTP API: axum routes documented with utoipa, from the same annotations.

mod admin;
pub mod error;
mod fees;
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
#[openapi(
    info(
        title = "demo-shop",
        description = "Orders, payments, property fees and delayed cancellation on mq"
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Announces the admin routes' bearer token.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// The routes and their OpenAPI document.
pub fn router(state: ApiState) -> Router {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
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
        .routes(routes!(admin::health))
        .routes(routes!(admin::metrics))
        .routes(routes!(admin::dead_letters))
        .routes(routes!(admin::resend_dead_letter))
        .with_state(state)
        .split_for_parts();
    let doc = Arc::new(doc);
    router
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
