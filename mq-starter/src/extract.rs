//! Extractors: what a handler takes as arguments, in axum's style.
//!
//! | argument | gives |
//! | --- | --- |
//! | `Json<T>` | the body, deserialized (a body that does not deserialize is a poison message: dead-lettered at once with the serde error) |
//! | `MessageView` | id, keys, tag, properties, attempt, queue and offset |
//! | `State<T>` | application state registered with `with_state` (checked at start-up) |
//! | `MqTemplate` | the template, to send more messages |
//! | `Body` | the raw body |
//! | `Vec<Json<T>>`, `Vec<MessageView>` | every message of a batch (batch listeners) |

use std::any::type_name;

use bytes::Bytes;
use mq_core::MessageView;
use serde::de::DeserializeOwned;

use crate::context::{AppContext, DeliveryContext};
use crate::template::MqTemplate;

/// Why an extractor could not produce its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The message can never be handled (e.g. its body does not deserialize): dead-letter it.
    Poison(String),
    /// It may work later: retry with back-off.
    Retry(String),
}

/// Produces a handler argument from a delivery.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a listener",
    label = "not an extractor",
    note = "listener arguments are extractors: Json<T>, MessageView, State<T>, MqTemplate, Body, or Vec<Json<T>> and Vec<MessageView> for batches"
)]
pub trait FromDelivery: Sized + Send + 'static {
    /// Checked once at start-up, so that a missing state fails the start, not every message.
    fn check(_app: &AppContext) -> Result<(), String> {
        Ok(())
    }

    /// The argument for this delivery.
    fn from_delivery(ctx: &DeliveryContext) -> Result<Self, Rejection>;
}

/// A JSON body, deserialized with serde.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

fn first(ctx: &DeliveryContext) -> Result<&MessageView, Rejection> {
    ctx.messages
        .first()
        .ok_or_else(|| Rejection::Poison("empty delivery".into()))
}

fn parse<T: DeserializeOwned>(msg: &MessageView) -> Result<T, Rejection> {
    serde_json::from_slice(&msg.body).map_err(|e| {
        Rejection::Poison(format!(
            "body does not deserialize into {}: {e}",
            type_name::<T>()
        ))
    })
}

impl<T: DeserializeOwned + Send + 'static> FromDelivery for Json<T> {
    fn from_delivery(ctx: &DeliveryContext) -> Result<Self, Rejection> {
        parse(first(ctx)?).map(Json)
    }
}

impl<T: DeserializeOwned + Send + 'static> FromDelivery for Vec<Json<T>> {
    fn from_delivery(ctx: &DeliveryContext) -> Result<Self, Rejection> {
        ctx.messages.iter().map(|m| parse(m).map(Json)).collect()
    }
}

impl FromDelivery for MessageView {
    fn from_delivery(ctx: &DeliveryContext) -> Result<Self, Rejection> {
        first(ctx).cloned()
    }
}

impl FromDelivery for Vec<MessageView> {
    fn from_delivery(ctx: &DeliveryContext) -> Result<Self, Rejection> {
        Ok(ctx.messages.clone())
    }
}

/// The raw body of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(pub Bytes);

impl FromDelivery for Body {
    fn from_delivery(ctx: &DeliveryContext) -> Result<Self, Rejection> {
        Ok(Body(first(ctx)?.body.clone()))
    }
}

/// Application state registered with
/// [`MqApplication::with_state`](crate::MqApplication::with_state).
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromDelivery for State<T> {
    fn check(app: &AppContext) -> Result<(), String> {
        if app.states.contains::<T>() {
            Ok(())
        } else {
            Err(format!(
                "no state of type {} is registered: call .with_state(..) with one",
                type_name::<T>()
            ))
        }
    }

    fn from_delivery(ctx: &DeliveryContext) -> Result<Self, Rejection> {
        ctx.app
            .states
            .get::<T>()
            .map(State)
            .ok_or_else(|| Rejection::Retry(format!("state {} missing", type_name::<T>())))
    }
}

impl FromDelivery for MqTemplate {
    fn from_delivery(ctx: &DeliveryContext) -> Result<Self, Rejection> {
        Ok(ctx.app.template.clone())
    }
}
