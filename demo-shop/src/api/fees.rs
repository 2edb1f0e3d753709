//! `/api/fees`: property-fee bills and the payment provider's callback.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, Body, ErrorBody, PathParam};
use super::ApiState;
use crate::domain::{Fee, FeePaid, LedgerEntry};
use crate::store;

/// A new bill.
#[derive(Deserialize, ToSchema)]
pub struct NewFee {
    pub household: String,
    pub period: String,
    pub amount_cents: i64,
}

/// Issues a bill.
#[utoipa::path(post, path = "/api/fees", request_body = NewFee,
    responses((status = 201, body = Fee), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_fee(
    State(s): State<ApiState>,
    Body(f): Body<NewFee>,
) -> Result<(StatusCode, Json<Fee>), ApiError> {
    if f.household.trim().is_empty() || f.period.trim().is_empty() {
        return Err(ApiError::invalid("household and period must not be empty"));
    }
    if f.amount_cents <= 0 {
        return Err(ApiError::invalid("amount_cents must be positive"));
    }
    let fee = store::create_fee(&s.shop.db, &f.household, &f.period, f.amount_cents).await?;
    Ok((StatusCode::CREATED, Json(fee)))
}

async fn fee_or_404(s: &ApiState, id: i64) -> Result<Fee, ApiError> {
    store::get_fee(&s.shop.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("fee {id} not found")))
}

/// A bill.
#[utoipa::path(get, path = "/api/fees/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = Fee), (status = 404, body = ErrorBody)))]
pub async fn get_fee(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Fee>, ApiError> {
    Ok(Json(fee_or_404(&s, id).await?))
}

/// The provider's callback.
#[derive(Deserialize, ToSchema)]
pub struct PaymentNotice {
    pub transaction_id: String,
}

/// The payment provider's callback, which providers repeat: a transactional `fee-paid`
/// message whose local transaction records the payment and the transaction log. The ledger
/// listener posts one entry per bill, however often this is called.
#[utoipa::path(post, path = "/api/fees/{id}/payment-notify", params(("id" = i64, Path)), request_body = PaymentNotice,
    responses((status = 200, body = Fee), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn payment_notify(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
    Body(n): Body<PaymentNotice>,
) -> Result<Json<Fee>, ApiError> {
    if n.transaction_id.trim().is_empty() {
        return Err(ApiError::invalid("transaction_id must not be empty"));
    }
    let fee = fee_or_404(&s, id).await?;
    if fee.status == "PAID" {
        return Ok(Json(fee));
    }
    let paid = FeePaid {
        fee_id: id,
        transaction_id: n.transaction_id.clone(),
        amount_cents: fee.amount_cents,
    };
    s.template
        .message("fee-paid")
        .key(s.shop.message_key(id))
        .json(&paid)
        .map_err(ApiError::from)?
        .send_in_transaction("fee-paid", paid.clone())
        .await?;
    Ok(Json(fee_or_404(&s, id).await?))
}

/// The ledger entries of a bill (at most one).
#[utoipa::path(get, path = "/api/fees/{id}/ledger", params(("id" = i64, Path)),
    responses((status = 200, body = Vec<LedgerEntry>), (status = 404, body = ErrorBody)))]
pub async fn fee_ledger(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Vec<LedgerEntry>>, ApiError> {
    fee_or_404(&s, id).await?;
    Ok(Json(store::ledger_of(&s.shop.db, id).await?))
}
