//! The shop's transactional producers: the local transaction writes the business change and a
//! transaction-log row in one database transaction; check-back looks that row up.

use mq_starter::prelude::*;
use serde::{Deserialize, Serialize};

use crate::domain::{FeePaid, Order, OrderCreated, OrderPaid};
use crate::store::{self, Db, Paid, StoreError};

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
        let created = store::create_order(
            &self.db,
            &arg.order_ref,
            &arg.user_id,
            &arg.lines,
            arg.placed_at_ms,
        )
        .await;
        let state = match &created {
            Ok(order) => {
                crash_point("order-after-local-tx", order.id).await;
                TxState::Commit
            }
            Err(StoreError::Db(e)) => {
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
        match store::tx_logged(&self.db, &store::order_created_key(&created.order_ref)).await {
            Ok(true) => TxState::Commit,
            Ok(false) => TxState::Rollback,
            Err(_) => TxState::Unknown,
        }
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
        match store::pay_order(&self.db, arg.order_id, &arg.payment_id).await {
            Ok(Paid::Now) => {
                crash_point("after-local-tx", arg.order_id).await;
                TxState::Commit
            }
            // The first payment's message is already out.
            Ok(Paid::Already) => TxState::Rollback,
            Err(StoreError::Db(e)) => {
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
        match store::tx_logged(&self.db, &store::order_paid_key(paid.order_id)).await {
            Ok(true) => TxState::Commit,
            Ok(false) => TxState::Rollback,
            Err(_) => TxState::Unknown,
        }
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
        match store::record_fee_payment(&self.db, arg.fee_id, &arg.transaction_id, arg.amount_cents)
            .await
        {
            Ok(()) => TxState::Commit,
            Err(StoreError::Db(e)) => {
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
        match store::tx_logged(&self.db, &store::fee_paid_key(&paid.transaction_id)).await {
            Ok(true) => TxState::Commit,
            Ok(false) => TxState::Rollback,
            Err(_) => TxState::Unknown,
        }
    }
}
