//! `/api/products`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, Body, ErrorBody, PathParam};
use super::ApiState;
use crate::domain::Product;
use crate::store;

/// A new product.
#[derive(Deserialize, ToSchema)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
}

/// Adds a product.
#[utoipa::path(post, path = "/api/products", request_body = NewProduct,
    responses((status = 201, body = Product), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_product(
    State(s): State<ApiState>,
    Body(p): Body<NewProduct>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    if p.sku.trim().is_empty() || p.name.trim().is_empty() {
        return Err(ApiError::invalid("sku and name must not be empty"));
    }
    if p.price_cents < 0 || p.stock < 0 {
        return Err(ApiError::invalid(
            "price_cents and stock must not be negative",
        ));
    }
    let product =
        store::create_product(&s.shop.db, &p.sku, &p.name, p.price_cents, p.stock).await?;
    Ok((StatusCode::CREATED, Json(product)))
}

/// A product with its stock and reservations.
#[utoipa::path(get, path = "/api/products/{sku}", params(("sku" = String, Path)),
    responses((status = 200, body = Product), (status = 404, body = ErrorBody)))]
pub async fn get_product(
    State(s): State<ApiState>,
    PathParam(sku): PathParam<String>,
) -> Result<Json<Product>, ApiError> {
    store::get_product(&s.shop.db, &sku)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("product {sku} not found")))
}
