//! The shop's transactional producers: the local transaction writes the business change and a
//! transaction-log row in one database transaction; check-back looks that row up.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mq_starter::prelude::*;
use serde::{Deserialize, Serialize};

use crate::domain::{FeePaid, Order, OrderCreated, OrderPaid};
use crate::store::{self, Db, Paid, StoreError};

/// How long a local transaction may take. Check-back answers "unknown" (not "rolled back")
/// for a half message younger than this whose transaction-log row is missing, since its local
/// transaction may still be running and commit; and a local transaction gives up after half
/// of it, so that none commits after check-back has rolled its message back. (Without this, a
/// local transaction slower than the broker's first check-back, `transaction.timeout`, lost
/// its message: an order stayed `CREATED` for ever, a payment gave no points.)
const LOCAL_TX_LIMIT: Duration = Duration::from_secs(4);

/// Runs a local transaction within half of [`LOCAL_TX_LIMIT`].
async fn bounded<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(LOCAL_TX_LIMIT / 2, work)
        .await
        .unwrap_or(Err(StoreError::TimedOut))
}

/// Check-back's answer for `msg` from the transaction log: committed if its row is there;
/// rolled back if not, once its local transaction can no longer be running; else unknown.
async fn logged_state(db: &Db, key: &str, msg: &MessageView) -> TxState {
    match store::tx_logged(db, key).await {
        Ok(true) => TxState::Commit,
        Ok(false) => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if now_ms < msg.born_timestamp + LOCAL_TX_LIMIT.as_millis() as u64 {
                TxState::Unknown
            } else {
                TxState::Rollback
            }
        }
        Err(_) => TxState::Unknown,
    }
}

/// Fault injection for the crash tests: with `DEMO_SHOP_HANG_AT=<point>`, a local transaction
/// announces the point on stdout and hangs there, so that a test can kill the process between
/// the half message and its commit.
async fn crash_point(point: &str, order_id: i64) {
    if std::env::var("DEMO_SHOP_HANG_AT").is_ok_and(|p| p == point) {
        println!("HANGING at {point} for order {order_id}");
        std::future::pending::<()>().await;
    }
}

/// The argument of an order creation's local transaction; `outcome` carries the created order
/// or the reason it was refused back to the request.
#[derive(Debug)]
pub struct CreateOrder {
    pub order_ref: String,
    pub user_id: String,
    pub lines: Vec<(String, i64)>,
    pub placed_at_ms: u64,
    pub outcome: tokio::sync::oneshot::Sender<Result<Order, StoreError>>,
}

/// Inserts an order with its `order-created` message, so that an order exists if and only if
/// its message does (and with it the delayed cancellation that message schedules).
#[derive(Clone)]
pub struct OrderCreatedTx {
    pub db: Db,
}

#[transaction_listener(name = "order-created")]
impl TransactionListener for OrderCreatedTx {
    type Arg = CreateOrder;

    async fn execute(&self, _msg: &MessageView, arg: CreateOrder) -> TxState {
        let created = bounded(store::create_order(
            &self.db,
            &arg.order_ref,
            &arg.user_id,
            &arg.lines,
            arg.placed_at_ms,
        ))
        .await;
        let state = match &created {
            Ok(order) => {
                crash_point("order-after-local-tx", order.id).await;
                TxState::Commit
            }
            Err(e @ (StoreError::Db(_) | StoreError::TimedOut)) => {
                tracing::warn!(order_ref = %arg.order_ref, error = %e, "order creation outcome unknown; left to check-back");
                TxState::Unknown
            }
            Err(_) => TxState::Rollback,
        };
        // The request may have gone; the outcome stands either way.
        let _ = arg.outcome.send(created);
        state
    }

    async fn check(&self, msg: &MessageView) -> TxState {
        let Ok(created) = serde_json::from_slice::<OrderCreated>(&msg.body) else {
            return TxState::Rollback;
        };
        logged_state(&self.db, &store::order_created_key(&created.order_ref), msg).await
    }
}

/// The argument of an order payment's local transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayOrder {
    pub order_id: i64,
    pub payment_id: String,
}

/// Marks an order paid with its `order-paid` message.
#[derive(Clone)]
pub struct OrderPaidTx {
    pub db: Db,
}

#[transaction_listener(name = "order-paid")]
impl TransactionListener for OrderPaidTx {
    type Arg = PayOrder;

    async fn execute(&self, _msg: &MessageView, arg: PayOrder) -> TxState {
        crash_point("before-local-tx", arg.order_id).await;
        match bounded(store::pay_order(&self.db, arg.order_id, &arg.payment_id)).await {
            Ok(Paid::Now) => {
                crash_point("after-local-tx", arg.order_id).await;
                TxState::Commit
            }
            // The first payment's message is already out.
            Ok(Paid::Already) => TxState::Rollback,
            Err(e @ (StoreError::Db(_) | StoreError::TimedOut)) => {
                tracing::warn!(order = arg.order_id, error = %e, "payment outcome unknown; left to check-back");
                TxState::Unknown
            }
            Err(e) => {
                tracing::info!(order = arg.order_id, error = %e, "payment refused");
                TxState::Rollback
            }
        }
    }

    async fn check(&self, msg: &MessageView) -> TxState {
        let Ok(paid) = serde_json::from_slice::<OrderPaid>(&msg.body) else {
            return TxState::Rollback;
        };
        logged_state(&self.db, &store::order_paid_key(paid.order_id), msg).await
    }
}

/// Records a payment provider's callback with its `fee-paid` message.
#[derive(Clone)]
pub struct FeePaidTx {
    pub db: Db,
}

#[transaction_listener(name = "fee-paid")]
impl TransactionListener for FeePaidTx {
    type Arg = FeePaid;

    async fn execute(&self, _msg: &MessageView, arg: FeePaid) -> TxState {
        match bounded(store::record_fee_payment(
            &self.db,
            arg.fee_id,
            &arg.transaction_id,
            arg.amount_cents,
        ))
        .await
        {
            Ok(()) => TxState::Commit,
            Err(e @ (StoreError::Db(_) | StoreError::TimedOut)) => {
                tracing::warn!(fee = arg.fee_id, error = %e, "fee payment outcome unknown; left to check-back");
                TxState::Unknown
            }
            Err(_) => TxState::Rollback,
        }
    }

    async fn check(&self, msg: &MessageView) -> TxState {
        let Ok(paid) = serde_json::from_slice::<FeePaid>(&msg.body) else {
            return TxState::Rollback;
        };
        logged_state(&self.db, &store::fee_paid_key(&paid.transaction_id), msg).await
    }
}
