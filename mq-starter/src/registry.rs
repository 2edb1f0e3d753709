//! What `#[mq_listener]` and `#[transaction_listener]` register, collected with `inventory`.

use std::sync::Arc;

use crate::context::AppContext;
use crate::handler::BoxedHandler;
use crate::transaction::ErasedTransactionListener;

/// Which message field keys idempotency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyKey {
    /// The first business key (falling back to the message id when there is none).
    Key,
    /// The message id.
    Id,
}

/// One `#[mq_listener]`, as written in its attribute. String values may hold `${..}`
/// placeholders, resolved at start-up.
#[derive(Debug)]
pub struct ListenerRegistration {
    /// The handler function's name; configuration overrides go under `mq.listeners.<name>`.
    pub name: &'static str,
    /// Where the handler is defined (`module_path!()`), for logs.
    pub module: &'static str,
    /// The topics.
    pub topics: &'static [&'static str],
    /// The consumer group.
    pub group: &'static str,
    /// The tag expression.
    pub tag: &'static str,
    /// `clustering` or `broadcasting`.
    pub model: &'static str,
    /// `concurrently` or `orderly`.
    pub mode: &'static str,
    /// Handlers running at once.
    pub concurrency: Option<&'static str>,
    /// Retries before the dead-letter queue.
    pub max_reconsume_times: Option<&'static str>,
    /// Consume timeout, e.g. `15m`.
    pub consume_timeout: Option<&'static str>,
    /// Largest batch of a batch listener.
    pub batch: Option<&'static str>,
    /// Idempotent consumption.
    pub idempotent: Option<IdempotencyKey>,
    /// `true`, `false` or a placeholder.
    pub enabled: &'static str,
    /// The handler.
    pub handler: fn() -> BoxedHandler,
}

inventory::collect!(ListenerRegistration);

/// One `#[transaction_listener]`.
#[derive(Debug)]
pub struct TransactionRegistration {
    /// The name transactional sends use; also the producer name check-back is routed by.
    pub name: &'static str,
    /// `true`, `false` or a placeholder.
    pub enabled: &'static str,
    /// Builds the listener from the application's state.
    pub make: fn(&AppContext) -> Result<Arc<dyn ErasedTransactionListener>, String>,
}

inventory::collect!(TransactionRegistration);

/// Every registered listener.
pub fn listeners() -> impl Iterator<Item = &'static ListenerRegistration> {
    inventory::iter::<ListenerRegistration>.into_iter()
}

/// Every registered transaction listener.
pub fn transaction_listeners() -> impl Iterator<Item = &'static TransactionRegistration> {
    inventory::iter::<TransactionRegistration>.into_iter()
}
