//! `/api/products`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, Body, ErrorBody, PathParam};
use super::validate;
use super::ApiState;
use crate::domain::Product;
use crate::store;

/// A new product.
#[derive(Deserialize, ToSchema)]
pub struct NewProduct {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub sku: String,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "validate::integer")]
    pub price_cents: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "validate::integer")]
    pub stock: i64,
}

/// Adds a product.
#[utoipa::path(post, path = "/api/products", request_body = NewProduct,
    responses((status = 201, description = "the product", body = Product), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 409, description = "the sku exists", body = ErrorBody), (status = 413, description = "a body larger than 64 KiB", body = ErrorBody), (status = 422, description = "a field breaks its documented rule", body = ErrorBody)))]
pub async fn create_product(
    State(s): State<ApiState>,
    Body(p): Body<NewProduct>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    validate::text("sku", &p.sku)?;
    validate::text("name", &p.name)?;
    validate::int("price_cents", p.price_cents, 0, validate::MAX_CENTS)?;
    validate::int("stock", p.stock, 0, validate::MAX_STOCK)?;
    let product =
        store::create_product(&s.shop.db, &p.sku, &p.name, p.price_cents, p.stock).await?;
    Ok((StatusCode::CREATED, Json(product)))
}

/// A product with its stock and reservations.
#[utoipa::path(get, path = "/api/products/{sku}", params(("sku" = String, Path)),
    responses((status = 200, description = "the product", body = Product), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 404, description = "no such product", body = ErrorBody)))]
pub async fn get_product(
    State(s): State<ApiState>,
    PathParam(sku): PathParam<String>,
) -> Result<Json<Product>, ApiError> {
    store::get_product(&s.shop.db, &sku)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("product {sku} not found")))
}
