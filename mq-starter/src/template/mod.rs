//! `MqTemplate`: the sender, like rocketmq-spring's `RocketMQTemplate`. Cheap to clone; use it
//! as axum state.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | the template and its one-call sends |
//! | `builder.rs` | [`MessageBuilder`]: keys, tag, properties, queue, delay, body |
//! | `error.rs` | [`SendError`] |
//! | `request.rs` | request-reply: the reply consumer, requests and replies |
//! | `transaction.rs` | transactional sends |

mod builder;
mod error;
mod request;
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

use crate::config::ProducerSettings;
use crate::metrics::Metrics;
use crate::transaction::ErasedTransactionListener;

pub use builder::MessageBuilder;
pub use error::SendError;
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

    /// Sends several payloads to one queue in one write, in order.
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
        let results = tokio::time::timeout(
            self.inner.settings.send_timeout,
            self.inner.broker.send_batch(messages, SendOptions::new()),
        )
        .await
        .map_err(|_| SendError::Timeout(self.inner.settings.send_timeout))??;
        self.inner.metrics.sent(&topic, results.len() as u64);
        Ok(results)
    }

    /// Sends `message` with the send timeout, retrying failures up to `retries` times with the
    /// same message id.
    pub async fn send_message(
        &self,
        message: Message,
        options: SendOptions,
    ) -> Result<SendResult, SendError> {
        let timeout = self.inner.settings.send_timeout;
        let mut attempt = 0;
        loop {
            let outcome = tokio::time::timeout(
                timeout,
                self.inner.broker.send(message.clone(), options.clone()),
            )
            .await;
            let retriable = match outcome {
                Ok(Ok(result)) => {
                    self.inner.metrics.sent(message.topic(), 1);
                    return Ok(result);
                }
                Ok(Err(e)) => {
                    if !matches!(e, BrokerError::Backend { .. } | BrokerError::Io { .. })
                        || attempt >= self.inner.settings.retries
                    {
                        return Err(e.into());
                    }
                    tracing::warn!(error = %e, attempt, "send failed; retrying");
                    true
                }
                Err(_) => {
                    if attempt >= self.inner.settings.retries {
                        return Err(SendError::Timeout(timeout));
                    }
                    tracing::warn!(attempt, "send timed out; retrying");
                    true
                }
            };
            debug_assert!(retriable);
            attempt += 1;
        }
    }
}
