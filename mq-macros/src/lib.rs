//! The attribute macros of mq: `#[mq_listener]` and `#[transaction_listener]`.
//!
//! Applications use them through `mq-starter`, which re-exports both; the code they expand to
//! calls `mq_starter`'s public API only. Attributes are parsed with syn, and every error points
//! at the offending token.
//!
//! ```
//! use mq_starter::prelude::*;
//!
//! #[derive(Debug, serde::Deserialize)]
//! struct OrderTimeout {
//!     order_id: u64,
//! }
//!
//! #[mq_listener(topic = "order-timeout", group = "order-cancel", tag = "created")]
//! async fn cancel_unpaid(Json(t): Json<OrderTimeout>, msg: MessageView) -> Result<(), String> {
//!     println!("cancel order {} (attempt {})", t.order_id, msg.attempt());
//!     Ok(())
//! }
//!
//! #[derive(Clone)]
//! struct PaymentTx;
//!
//! #[transaction_listener(name = "payment")]
//! impl TransactionListener for PaymentTx {
//!     type Arg = u64;
//!
//!     async fn execute(&self, _msg: &MessageView, _order: u64) -> TxState {
//!         TxState::Commit
//!     }
//!
//!     async fn check(&self, _msg: &MessageView) -> TxState {
//!         TxState::Commit
//!     }
//! }
//!
//! // Both are registered: `MqApplication::start` finds them.
//! assert!(mq_starter::registry::listeners().any(|l| l.name == "cancel_unpaid"));
//! assert!(mq_starter::registry::transaction_listeners().any(|t| t.name == "payment"));
//! ```

mod attrs;
mod listener;
mod transaction;

use proc_macro::TokenStream;

/// Registers an async function as a message listener.
///
/// Keys: `topic` (a string or a list of strings, required), `group` (required), `tag`
/// (default `"*"`), `model = clustering | broadcasting`, `mode = concurrently | orderly`,
/// `concurrency`, `max_reconsume_times`, `consume_timeout` (e.g. `"30s"`), `batch` (largest
/// batch; the handler then takes `Vec<Json<T>>`), `idempotent = key | id`, `enabled`. String
/// values may be `${a.b.c}` or `${a.b.c:default}` placeholders, resolved from configuration at
/// start-up. Every argument must be an extractor (`Json<T>`, `MessageView`, `State<T>`,
/// `MqTemplate`, ...).
#[proc_macro_attribute]
pub fn mq_listener(attr: TokenStream, item: TokenStream) -> TokenStream {
    listener::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Registers an `impl TransactionListener for T` under a name, so that
/// `template.message(..).send_in_transaction("name", arg)` runs its local transaction and the
/// broker's check-back reaches its `check`. The listener's value comes from the application's
/// state (`with_state`). Keys: `name` (required), `enabled` (a boolean or a placeholder).
#[proc_macro_attribute]
pub fn transaction_listener(attr: TokenStream, item: TokenStream) -> TokenStream {
    transaction::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
