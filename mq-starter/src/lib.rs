//! What applications of mq use: annotated listeners, YAML configuration, the runtime, the
//! template sender and idempotent consumption, over the broker of `mq-core`.
//!
//! Cargo features: `embedded` (default) opens the embedded broker, `redis` the Redis Streams
//! broker and the Redis idempotency store; a configuration that selects a backend the build
//! lacks fails at start-up with [`config::ConfigError::FeatureNotCompiled`]. `admin` (default)
//! adds the admin API: [`Running::admin_router`] returns an axum router of JSON routes under
//! `/mq/api/` (health, listeners with pause and resume, topics, groups with lag, offset reset,
//! dead letters with resend), documented in OpenAPI ([`admin::openapi`]), protected by
//! `mq.admin.token`, and a web console at `/mq/`.
//!
//! ```no_run
//! use mq_starter::prelude::*;
//!
//! #[derive(Clone)]
//! struct Shop;
//!
//! #[derive(serde::Deserialize)]
//! struct OrderTimeout { order_id: u64 }
//!
//! #[mq_listener(topic = "order-timeout", group = "order-cancel", tag = "created")]
//! async fn cancel_unpaid(State(_shop): State<Shop>, Json(t): Json<OrderTimeout>, msg: MessageView) -> Result<(), String> {
//!     tracing::info!(order = t.order_id, attempt = msg.attempt(), "cancelling");
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), StartError> {
//! let running = MqApplication::from_config()?.with_state(Shop).start().await?;
//! running.template().send("order-timeout:created", &serde_json::json!({"order_id": 1})).await.ok();
//! running.shutdown().await
//! # }
//! ```

#[cfg(feature = "admin")]
pub mod admin;
pub mod config;
mod context;
pub mod extract;
pub mod handler;
pub mod idempotency;
mod listener;
pub mod metrics;
pub mod registry;
mod runtime;
pub mod template;
pub mod trace;
pub mod transaction;

pub use mq_core as core;
pub use mq_macros::{mq_listener, transaction_listener};

pub use context::{AppContext, DeliveryContext, States};
pub use extract::{Body, FromDelivery, Json, Rejection, State};
pub use handler::{Handler, IntoOutcome, Outcome};
pub use metrics::Metrics;
pub use runtime::{shutdown_signal, MqApplication, Running, ShutdownHandle, StartError};
pub use template::{MessageBuilder, MqTemplate, SendError, TransactionSendResult};
pub use transaction::TransactionListener;

/// The names an application usually needs.
pub mod prelude {
    pub use crate::core::{Delay, MessageView, TxState};
    pub use crate::{
        mq_listener, transaction_listener, Json, MqApplication, MqTemplate, Outcome, StartError,
        State, TransactionListener,
    };
}

/// What the attribute macros expand to. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::BoxedHandler;
    pub use crate::registry::checks::{
        check_model_and_mode, mode, mode_or_default, model, model_or_default,
    };
    pub use crate::registry::{
        AttributeValue, IdempotencyKey, ListenerRegistration, TransactionRegistration,
    };
    pub use crate::transaction::make_listener;
    pub use inventory;

    /// Fails to compile, at the argument, when a handler argument is not an extractor.
    pub const fn assert_extractor<T: crate::FromDelivery>() {}

    /// Fails to compile when the annotated impl is not a `TransactionListener`.
    pub const fn assert_transaction_listener<T: crate::TransactionListener>() {}
}
