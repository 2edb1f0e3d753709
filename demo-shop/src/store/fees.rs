//! Property-fee bills, their payments and the ledger.

use sqlx::Row;

use super::Db;

use super::StoreError;
use crate::domain::{now, Fee, LedgerEntry};

fn fee_of(r: &sqlx::any::AnyRow) -> Fee {
    Fee {
        id: r.get("id"),
        household: r.get("household"),
        period: r.get("period"),
        amount_cents: r.get("amount_cents"),
        status: r.get("status"),
        receipt_no: r.get("receipt_no"),
        created_at: r.get("created_at"),
        message_key: r.get("ref"),
    }
}

/// Issues a bill.
pub async fn create_fee(
    pool: &Db,
    household: &str,
    period: &str,
    amount_cents: i64,
) -> Result<Fee, StoreError> {
    let row = sqlx::query(
        "INSERT INTO fees (ref, household, period, amount_cents, status, created_at) VALUES ($1, $2, $3, $4, 'UNPAID', $5) \
         ON CONFLICT (household, period) DO NOTHING RETURNING *",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(household)
    .bind(period)
    .bind(amount_cents)
    .bind(now())
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| {
        StoreError::Conflict(format!("household {household} already has a bill for {period}"))
    })?;
    Ok(fee_of(&row))
}

/// A bill.
pub async fn get_fee(pool: &Db, id: i64) -> Result<Option<Fee>, StoreError> {
    Ok(sqlx::query("SELECT * FROM fees WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| fee_of(&r)))
}

/// The transaction-log key of a payment callback.
pub fn fee_paid_key(transaction_id: &str) -> String {
    format!("fee-paid:{transaction_id}")
}

/// Records a provider's payment and its transaction log, in one database transaction;
/// repeated callbacks change nothing.
pub async fn record_fee_payment(
    pool: &Db,
    fee_id: i64,
    transaction_id: &str,
    amount_cents: i64,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO fee_payments (transaction_id, fee_id, amount_cents, at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(transaction_id)
    .bind(fee_id)
    .bind(amount_cents)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO tx_log (tx_key, created_at) VALUES ($1, $2) ON CONFLICT (tx_key) DO NOTHING",
    )
    .bind(fee_paid_key(transaction_id))
    .bind(now())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Posts the one ledger entry of a bill and marks it paid with a receipt number. Returns
/// whether it posted now.
pub async fn post_ledger(
    pool: &Db,
    fee_id: i64,
    transaction_id: &str,
    amount_cents: i64,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let receipt = format!("R-{fee_id:08}");
    let inserted = sqlx::query(
        "INSERT INTO ledger (fee_id, transaction_id, amount_cents, receipt_no, at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (fee_id) DO NOTHING",
    )
    .bind(fee_id)
    .bind(transaction_id)
    .bind(amount_cents)
    .bind(&receipt)
    .bind(now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE fees SET status = 'PAID', receipt_no = $1 WHERE id = $2")
        .bind(&receipt)
        .bind(fee_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// The ledger entries of a bill.
pub async fn ledger_of(pool: &Db, fee_id: i64) -> Result<Vec<LedgerEntry>, StoreError> {
    Ok(
        sqlx::query("SELECT * FROM ledger WHERE fee_id = $1 ORDER BY id")
            .bind(fee_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| LedgerEntry {
                id: r.get("id"),
                fee_id: r.get("fee_id"),
                transaction_id: r.get("transaction_id"),
                amount_cents: r.get("amount_cents"),
                receipt_no: r.get("receipt_no"),
                at: r.get("at"),
            })
            .collect(),
    )
}
