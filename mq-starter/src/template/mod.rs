//! `MqTemplate`: the sender, like rocketmq-spring's `RocketMQTemplate`. Cheap to clone; use it
//! as axum state.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | the template and its one-call sends |
//! | `builder.rs` | [`MessageBuilder`]: keys, tag, properties, queue, delay, body |
//! | `error.rs` | [`SendError`] |
//! | `timeout.rs` | how long a send may take: send timeout, retries, request timeout |
//! | `request.rs` | request-reply: the reply consumer, requests and replies |
//! | `transaction.rs` | transactional sends |

mod builder;
mod error;
mod request;
mod timeout;
mod transaction;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use mq_core::{
    Broker, BrokerError, Delay, Destination, Message, MessageId, MessageView, SendOptions,
    SendResult,
};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{oneshot, OnceCell};

use self::timeout::SendPolicy;
use crate::config::ProducerSettings;
use crate::metrics::Metrics;
use crate::transaction::ErasedTransactionListener;

pub use builder::MessageBuilder;
pub use error::SendError;
pub(crate) use request::ReplyAddress;
pub use request::{CORRELATION_ID, REPLY_TO, REPLY_TOPIC};
pub use transaction::TransactionSendResult;

struct Inner {
    broker: Arc<dyn Broker>,
    settings: ProducerSettings,
    metrics: Arc<Metrics>,
    transactions: RwLock<HashMap<String, Arc<dyn ErasedTransactionListener>>>,
    pending_replies: Mutex<HashMap<String, oneshot::Sender<MessageView>>>,
    reply_consumer: OnceCell<()>,
    instance: String,
}

/// Sends messages: JSON or bytes, with keys, tag and properties, orderly, delayed, in batches,
/// in a transaction, or as a request awaiting its reply.
///
/// ```no_run
/// # async fn demo(template: mq_starter::MqTemplate) -> Result<(), mq_starter::SendError> {
/// #[derive(serde::Serialize)]
/// struct OrderCreated { id: u64 }
/// template.send("order:created", &OrderCreated { id: 42 }).await?;
/// template
///     .message("order-timeout")
///     .key("42")
///     .delay(mq_starter::core::Delay::After(std::time::Duration::from_secs(1800)))
///     .json(&OrderCreated { id: 42 })?
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MqTemplate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MqTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqTemplate")
            .field("backend", &self.inner.broker.backend())
            .finish_non_exhaustive()
    }
}

impl MqTemplate {
    /// A template over `broker`.
    pub fn new(broker: Arc<dyn Broker>, settings: ProducerSettings, metrics: Arc<Metrics>) -> Self {
        MqTemplate {
            inner: Arc::new(Inner {
                broker,
                settings,
                metrics,
                transactions: RwLock::new(HashMap::new()),
                pending_replies: Mutex::new(HashMap::new()),
                reply_consumer: OnceCell::new(),
                instance: format!("{}-{}", std::process::id(), MessageId::new()),
            }),
        }
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    pub(crate) fn add_transaction_listener(
        &self,
        name: &str,
        listener: Arc<dyn ErasedTransactionListener>,
    ) {
        self.inner
            .transactions
            .write()
            .insert(name.to_owned(), listener);
    }

    /// Starts a message to `destination` (`"topic"` or `"topic:tag"`).
    pub fn message(&self, destination: &str) -> MessageBuilder {
        MessageBuilder {
            template: self.clone(),
            destination: Destination::parse(destination).map_err(BrokerError::from),
            body: Bytes::new(),
            keys: Vec::new(),
            properties: Vec::new(),
            tag: None,
            options: SendOptions::new(),
        }
    }

    /// Sends `payload` as JSON and waits until it is stored.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        destination: &str,
        payload: &T,
    ) -> Result<SendResult, SendError> {
        self.message(destination).json(payload)?.send().await
    }

    /// Sends raw bytes.
    pub async fn send_bytes(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
    ) -> Result<SendResult, SendError> {
        self.message(destination).bytes(body).send().await
    }

    /// Sends so that every message with `sharding_key` goes to one queue, in order.
    pub async fn send_orderly<T: Serialize + ?Sized>(
        &self,
        destination: &str,
        payload: &T,
        sharding_key: &str,
    ) -> Result<SendResult, SendError> {
        self.message(destination)
            .sharding_key(sharding_key)
            .json(payload)?
            .send()
            .await
    }

    /// Sends a message that becomes visible after `delay`.
    pub async fn send_delayed<T: Serialize + ?Sized>(
        &self,
        destination: &str,
        payload: &T,
        delay: Delay,
    ) -> Result<SendResult, SendError> {
        self.message(destination)
            .delay(delay)
            .json(payload)?
            .send()
            .await
    }

    /// Sends several payloads to one queue in one write, in order: one attempt, without
    /// retries, within the send and request timeouts.
    pub async fn send_batch<T: Serialize>(
        &self,
        destination: &str,
        payloads: &[T],
    ) -> Result<Vec<SendResult>, SendError> {
        let dest = Destination::parse(destination).map_err(BrokerError::from)?;
        let mut messages = Vec::with_capacity(payloads.len());
        for p in payloads {
            messages.push(Message::to_destination(
                dest.clone(),
                serde_json::to_vec(p)?,
            ));
        }
        let topic = dest.topic.clone();
        let results = self
            .policy()
            .once()
            .run(|| {
                self.inner
                    .broker
                    .send_batch(messages.clone(), SendOptions::new())
            })
            .await?;
        self.inner.metrics.sent(&topic, results.len() as u64);
        Ok(results)
    }

    /// Sends `message`, retrying failures up to `mq.producer.retries` times with the same
    /// message id, each attempt within `mq.producer.send-timeout` and the whole within
    /// `mq.producer.request-timeout`.
    pub async fn send_message(
        &self,
        message: Message,
        options: SendOptions,
    ) -> Result<SendResult, SendError> {
        let result = self
            .policy()
            .run(|| self.inner.broker.send(message.clone(), options.clone()))
            .await?;
        self.inner.metrics.sent(message.topic(), 1);
        Ok(result)
    }

    /// The time limits and retries of `mq.producer`.
    fn policy(&self) -> SendPolicy {
        SendPolicy::of(&self.inner.settings)
    }
}
