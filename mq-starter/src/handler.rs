//! Handlers: async functions whose arguments are extractors and whose return value says what
//! becomes of the message.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::context::{AppContext, DeliveryContext};
use crate::extract::{FromDelivery, Json, Rejection};

/// A boxed future, as handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What becomes of a delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge (and answer a request with this JSON, if it was one).
    Ack(Option<Vec<u8>>),
    /// Failed: retry on the back-off schedule, or after the given delay.
    Retry {
        /// What went wrong.
        reason: String,
        /// Retry after this long instead of the back-off.
        after: Option<Duration>,
    },
    /// Poison: send to the dead-letter queue now.
    DeadLetter(String),
}

impl Outcome {
    /// Acknowledge.
    pub fn ack() -> Self {
        Outcome::Ack(None)
    }

    /// Retry after `delay` (instead of the back-off schedule).
    pub fn retry_after(reason: impl Into<String>, delay: Duration) -> Self {
        Outcome::Retry {
            reason: reason.into(),
            after: Some(delay),
        }
    }

    /// Retry on the back-off schedule.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    /// Dead-letter now.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Outcome::DeadLetter(reason.into())
    }
}

impl From<Rejection> for Outcome {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Poison(reason) => Outcome::DeadLetter(reason),
            Rejection::Retry(reason) => Outcome::retry(reason),
        }
    }
}

/// What a handler may return.
///
/// - `()` acknowledges;
/// - `Result<(), E: Display>`: an error retries with back-off;
/// - [`Outcome`] or `Result<Outcome, E>`: an explicit outcome;
/// - `Json<T>` or `Result<Json<T>, E>`: acknowledges and answers a request with `T`.
pub trait IntoOutcome {
    /// The outcome.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::ack()
    }
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl<T: Serialize> IntoOutcome for Json<T> {
    fn into_outcome(self) -> Outcome {
        match serde_json::to_vec(&self.0) {
            Ok(bytes) => Outcome::Ack(Some(bytes)),
            Err(e) => Outcome::retry(format!("reply does not serialize: {e}")),
        }
    }
}

impl<T: IntoOutcome, E: Display> IntoOutcome for Result<T, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(v) => v.into_outcome(),
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}

/// An async function usable as a listener: every argument an extractor.
#[diagnostic::on_unimplemented(
    message = "this function cannot be a listener",
    note = "a listener is an `async fn` of at most 8 extractor arguments returning (), Outcome, Json<T> or a Result of those"
)]
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// Runs the handler on a delivery.
    fn call(&self, ctx: DeliveryContext) -> BoxFuture<Outcome>;

    /// Checks every extractor against the application at start-up.
    fn check(app: &AppContext) -> Result<(), String>;
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        impl<F, Fut, R, $($arg,)*> Handler<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoOutcome,
            $($arg: FromDelivery,)*
        {
            fn call(&self, ctx: DeliveryContext) -> BoxFuture<Outcome> {
                let f = self.clone();
                Box::pin(async move {
                    $(
                        let $arg = match $arg::from_delivery(&ctx) {
                            Ok(v) => v,
                            Err(r) => return Outcome::from(r),
                        };
                    )*
                    f($($arg),*).await.into_outcome()
                })
            }

            fn check(app: &AppContext) -> Result<(), String> {
                $( $arg::check(app)?; )*
                Ok(())
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);
impl_handler!(A1, A2, A3, A4, A5, A6, A7);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8);

/// A handler with its argument types erased, as the registry keeps it.
#[derive(Clone)]
pub struct BoxedHandler {
    call: Arc<dyn Fn(DeliveryContext) -> BoxFuture<Outcome> + Send + Sync>,
    check: fn(&AppContext) -> Result<(), String>,
}

impl BoxedHandler {
    /// Erases a handler.
    pub fn new<H: Handler<Args>, Args: 'static>(handler: H) -> Self {
        BoxedHandler {
            call: Arc::new(move |ctx| handler.call(ctx)),
            check: H::check,
        }
    }

    /// Runs it.
    pub fn call(&self, ctx: DeliveryContext) -> BoxFuture<Outcome> {
        (self.call)(ctx)
    }

    /// Checks its extractors.
    pub fn check(&self, app: &AppContext) -> Result<(), String> {
        (self.check)(app)
    }
}

impl std::fmt::Debug for BoxedHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxedHandler")
    }
}
