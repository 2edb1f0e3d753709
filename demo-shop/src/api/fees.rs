//! `/api/fees`: property-fee bills and the payment provider's callback.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mq_starter::core::TxState;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, Body, ErrorBody, PathParam};
use super::validate;
use super::ApiState;
use crate::domain::{Fee, FeePaid, LedgerEntry};
use crate::store;

/// A new bill.
#[derive(Deserialize, ToSchema)]
pub struct NewFee {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub household: String,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub period: String,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "validate::integer")]
    pub amount_cents: i64,
}

/// Issues a bill.
#[utoipa::path(post, path = "/api/fees", request_body = NewFee,
    responses((status = 201, description = "the bill", body = Fee), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 409, description = "the household already has a bill for the period", body = ErrorBody), (status = 413, description = "a body larger than 64 KiB", body = ErrorBody), (status = 422, description = "a field breaks its documented rule", body = ErrorBody)))]
pub async fn create_fee(
    State(s): State<ApiState>,
    Body(f): Body<NewFee>,
) -> Result<(StatusCode, Json<Fee>), ApiError> {
    validate::text("household", &f.household)?;
    validate::text("period", &f.period)?;
    validate::int("amount_cents", f.amount_cents, 1, validate::MAX_CENTS)?;
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
    responses((status = 200, description = "the bill", body = Fee), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 404, description = "no such bill", body = ErrorBody)))]
pub async fn get_fee(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Fee>, ApiError> {
    Ok(Json(fee_or_404(&s, id).await?))
}

/// The provider's callback.
#[derive(Deserialize, ToSchema)]
pub struct PaymentNotice {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub transaction_id: String,
}

/// The payment provider's callback, which providers repeat: a transactional `fee-paid`
/// message whose local transaction records the payment and the transaction log. The ledger
/// listener posts one entry per bill, however often this is called.
#[utoipa::path(post, path = "/api/fees/{id}/payment-notify", params(("id" = i64, Path)), request_body = PaymentNotice,
    responses((status = 200, description = "the bill, paid or being paid", body = Fee), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 404, description = "no such bill", body = ErrorBody), (status = 413, description = "a body larger than 64 KiB", body = ErrorBody), (status = 422, description = "a field breaks its documented rule", body = ErrorBody), (status = 503, description = "the broker did not take the message, or the payment is not recorded yet: repeat the callback", body = ErrorBody)))]
pub async fn payment_notify(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
    Body(n): Body<PaymentNotice>,
) -> Result<Json<Fee>, ApiError> {
    validate::text("transaction_id", &n.transaction_id)?;
    let fee = fee_or_404(&s, id).await?;
    if fee.status == "PAID" {
        return Ok(Json(fee));
    }
    let paid = FeePaid {
        fee_id: id,
        transaction_id: n.transaction_id.clone(),
        amount_cents: fee.amount_cents,
    };
    let sent = s
        .template
        .message("fee-paid")
        .key(fee.message_key.clone())
        .json(&paid)
        .map_err(ApiError::from)?
        .send_in_transaction("fee-paid", paid.clone())
        .await?;
    let fee = fee_or_404(&s, id).await?;
    match sent.state {
        TxState::Commit => Ok(Json(fee)),
        _ if fee.status == "PAID" => Ok(Json(fee)),
        // Not recorded, or not known to be: a 200 would tell the provider to stop repeating a
        // payment that check-back may still roll back. Repeating it is safe (one entry per
        // transaction id).
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "pending",
            "the payment is not recorded yet; repeat the callback",
        )),
    }
}

/// The ledger entries of a bill (at most one).
#[utoipa::path(get, path = "/api/fees/{id}/ledger", params(("id" = i64, Path)),
    responses((status = 200, description = "at most one entry", body = Vec<LedgerEntry>), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 404, description = "no such bill", body = ErrorBody)))]
pub async fn fee_ledger(
    State(s): State<ApiState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Vec<LedgerEntry>>, ApiError> {
    fee_or_404(&s, id).await?;
    Ok(Json(store::ledger_of(&s.shop.db, id).await?))
}
