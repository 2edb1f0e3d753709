//! What `#[mq_listener]` and `#[transaction_listener]` register, collected with `inventory`.

use std::sync::Arc;
use std::time::Duration;

use mq_core::subscription::{ConsumeMode, MessageModel};

pub(crate) mod checks;

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

/// A typed attribute value: checked at compile time, or a string holding `${..}` placeholders
/// that is resolved from configuration and parsed at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeValue<T: 'static> {
    /// The value written in the attribute.
    Literal(T),
    /// The attribute's string, with its placeholders not yet resolved.
    Placeholder(&'static str),
}

impl<T: Copy + 'static> AttributeValue<T> {
    /// The value: a literal as is, a placeholder through `resolve` (placeholders to text) and
    /// `parse` (text to value).
    pub(crate) fn get<E>(
        self,
        resolve: impl FnOnce(&'static str) -> Result<String, E>,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            AttributeValue::Literal(v) => Ok(v),
            AttributeValue::Placeholder(text) => parse(&resolve(text)?),
        }
    }
}

/// One `#[mq_listener]`, as written in its attribute. String values may hold `${..}`
/// placeholders, resolved at start-up; numbers, durations, words and booleans are typed.
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
    /// The message model; `None`: the default (clustering).
    pub model: Option<AttributeValue<MessageModel>>,
    /// The consume mode; `None`: the default (concurrently).
    pub mode: Option<AttributeValue<ConsumeMode>>,
    /// Handlers running at once.
    pub concurrency: Option<AttributeValue<usize>>,
    /// Retries before the dead-letter queue.
    pub max_reconsume_times: Option<AttributeValue<u32>>,
    /// Consume timeout.
    pub consume_timeout: Option<AttributeValue<Duration>>,
    /// Largest batch of a batch listener.
    pub batch: Option<AttributeValue<usize>>,
    /// Idempotent consumption.
    pub idempotent: Option<IdempotencyKey>,
    /// Whether the listener runs.
    pub enabled: AttributeValue<bool>,
    /// The handler.
    pub handler: fn() -> BoxedHandler,
}

inventory::collect!(ListenerRegistration);

/// One `#[transaction_listener]`.
#[derive(Debug)]
pub struct TransactionRegistration {
    /// The name transactional sends use; also the producer name check-back is routed by.
    pub name: &'static str,
    /// Whether the listener is registered.
    pub enabled: AttributeValue<bool>,
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

#[cfg(test)]
mod tests {
    use super::AttributeValue;

    #[test]
    fn literals_are_kept_and_placeholders_resolved_then_parsed() {
        let resolve = |t: &str| Ok::<_, String>(t.replace("${n:3}", "3"));
        let parse = |t: &str| t.parse::<u32>().map_err(|e| e.to_string());
        assert_eq!(AttributeValue::Literal(7).get(resolve, parse), Ok(7));
        assert_eq!(
            AttributeValue::Placeholder("${n:3}").get(resolve, parse),
            Ok(3)
        );
        assert!(AttributeValue::Placeholder("${n:x}")
            .get(resolve, parse)
            .is_err());
    }
}
