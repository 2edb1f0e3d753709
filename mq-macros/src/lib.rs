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
/// `concurrency` (an integer, at least 1), `max_reconsume_times` (an integer),
/// `consume_timeout` (a duration string in the configuration's syntax, e.g. `"30s"`), `batch`
/// (largest batch, at least 1; the handler then takes `Vec<Json<T>>`), `idempotent = key | id`,
/// `enabled` (`true` or `false`). Numbers, durations, words and booleans are checked at compile
/// time; any of them may instead be a string holding `${a.b.c}` or `${a.b.c:default}`
/// placeholders, resolved from configuration (and then checked) at start-up, as may `topic`,
/// `group` and `tag`. Every argument must be an extractor (`Json<T>`, `MessageView`,
/// `State<T>`, `MqTemplate`, ...).
///
/// Up to `concurrency` deliveries run at once, several of them in one task: the handler must
/// not block its thread (blocking work belongs in `tokio::task::spawn_blocking`). A handler
/// that panics fails its delivery, which is retried like an error.
///
/// ```
/// use mq_starter::prelude::*;
///
/// #[mq_listener(
///     topic = "order-events",
///     group = "timeline",
///     mode = orderly,
///     concurrency = 4,
///     max_reconsume_times = 16,
///     consume_timeout = "1m 30s",
///     enabled = "${shop.timeline.enabled:true}",
/// )]
/// async fn timeline(msg: MessageView) {
///     let _ = msg;
/// }
/// ```
#[proc_macro_attribute]
pub fn mq_listener(attr: TokenStream, item: TokenStream) -> TokenStream {
    keep_item_on_error(item, |item| listener::expand(attr.into(), item))
}

/// Registers an `impl TransactionListener for T` under a name, so that
/// `template.message(..).send_in_transaction("name", arg)` runs its local transaction and the
/// broker's check-back reaches its `check`. The listener's value comes from the application's
/// state (`with_state`). Keys: `name` (required), `enabled` (`true`, `false` or a
/// placeholder).
#[proc_macro_attribute]
pub fn transaction_listener(attr: TokenStream, item: TokenStream) -> TokenStream {
    keep_item_on_error(item, |item| transaction::expand(attr.into(), item))
}

/// The expansion, or on error the user's item unchanged followed by the errors: were the item
/// dropped, every use of it would fail too and bury the error that matters.
fn keep_item_on_error(
    item: TokenStream,
    expand: impl FnOnce(proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream>,
) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match expand(item.clone()) {
        Ok(expanded) => expanded.into(),
        Err(e) => {
            let error = e.into_compile_error();
            quote::quote!(#item #error).into()
        }
    }
}
