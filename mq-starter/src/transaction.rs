//! Transaction listeners: the local transaction of a transactional send, and its check-back.

use std::any::{type_name, Any};
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::{MessageView, TransactionChecker, TxState};

use crate::context::AppContext;
use crate::handler::BoxFuture;

/// The local transaction of a transactional send, and how to check it later.
///
/// Register an implementation with `#[transaction_listener(name = "...")]`; its value comes
/// from the application's state (`with_state`), so it can hold a database pool. An application
/// may have any number, each under its own name.
pub trait TransactionListener: Clone + Send + Sync + 'static {
    /// The argument the sender passes to the local transaction.
    type Arg: Send + 'static;

    /// Runs the local transaction for the stored half message.
    fn execute(&self, msg: &MessageView, arg: Self::Arg) -> impl Future<Output = TxState> + Send;

    /// Says whether the local transaction of `msg` committed, when the broker asks.
    fn check(&self, msg: &MessageView) -> impl Future<Output = TxState> + Send;
}

/// A transaction listener with its argument type erased.
pub trait ErasedTransactionListener: Send + Sync + 'static {
    /// Runs the local transaction; the argument must be the listener's `Arg`.
    fn execute(
        &self,
        msg: MessageView,
        arg: Box<dyn Any + Send>,
    ) -> Result<BoxFuture<TxState>, String>;

    /// Check-back.
    fn check(&self, msg: MessageView) -> BoxFuture<TxState>;
}

struct Erased<T>(T);

impl<T: TransactionListener> ErasedTransactionListener for Erased<T> {
    fn execute(
        &self,
        msg: MessageView,
        arg: Box<dyn Any + Send>,
    ) -> Result<BoxFuture<TxState>, String> {
        let arg = arg.downcast::<T::Arg>().map_err(|_| {
            format!(
                "the argument of transaction listener {} must be a {}",
                type_name::<T>(),
                type_name::<T::Arg>()
            )
        })?;
        let listener = self.0.clone();
        Ok(Box::pin(async move { listener.execute(&msg, *arg).await }))
    }

    fn check(&self, msg: MessageView) -> BoxFuture<TxState> {
        let listener = self.0.clone();
        Box::pin(async move { listener.check(&msg).await })
    }
}

/// Builds a registered listener from the state of its type.
pub fn make_listener<T: TransactionListener>(
    app: &AppContext,
) -> Result<Arc<dyn ErasedTransactionListener>, String> {
    app.states
        .get::<T>()
        .map(|t| Arc::new(Erased(t)) as Arc<dyn ErasedTransactionListener>)
        .ok_or_else(|| {
            format!(
                "transaction listener {} is not registered as state: call .with_state({}{{..}})",
                type_name::<T>(),
                type_name::<T>()
            )
        })
}

/// Answers the broker's check-back through a listener.
pub(crate) struct Checker(pub Arc<dyn ErasedTransactionListener>);

#[async_trait]
impl TransactionChecker for Checker {
    async fn check(&self, half: &MessageView) -> TxState {
        self.0.check(half.clone()).await
    }
}
