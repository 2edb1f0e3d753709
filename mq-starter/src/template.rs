//! `MqTemplate`: the sender, like rocketmq-spring's `RocketMQTemplate`. Cheap to clone; use it
//! as axum state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mq_core::{
    Broker, BrokerError, Delay, Destination, Message, MessageId, MessageView, SendOptions,
    SendResult, Subscription, TransactionId, TxState,
};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, OnceCell};

use crate::config::ProducerSettings;
use crate::metrics::Metrics;
use crate::transaction::ErasedTransactionListener;

/// Property naming the topic a reply goes to.
pub const REPLY_TO: &str = "mq.reply-to";
/// Property matching a reply with its request.
pub const CORRELATION_ID: &str = "mq.correlation-id";
/// The topic replies travel on; every instance reads it (broadcasting) and keeps its own.
pub const REPLY_TOPIC: &str = "mq-reply";

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The payload does not serialize to JSON.
    #[error("payload does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// No answer from the broker within the send timeout (after the retries).
    #[error("send timed out after {0:?}")]
    Timeout(Duration),
    /// No transaction listener has this name.
    #[error("no transaction listener named {0:?}")]
    UnknownTransactionListener(String),
    /// The local transaction could not run.
    #[error("local transaction of {listener:?} failed: {message}")]
    LocalTransaction {
        /// The listener.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    ReplyTimeout(Duration),
    /// The reply does not deserialize.
    #[error("reply does not deserialize: {0}")]
    ReplyDecode(serde_json::Error),
}

/// What a transactional send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSendResult {
    /// The message id.
    pub message_id: MessageId,
    /// The half message's transaction.
    pub transaction: TransactionId,
    /// What the local transaction answered.
    pub state: TxState,
    /// Where the message was stored, once committed.
    pub send_result: Option<SendResult>,
}

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

    async fn ensure_reply_consumer(&self) -> Result<(), SendError> {
        self.inner
            .reply_consumer
            .get_or_try_init(|| async {
                let consumer = self
                    .inner
                    .broker
                    .subscribe(
                        Subscription::new(REPLY_TOPIC, "mq-reply")
                            .model(mq_core::MessageModel::Broadcasting),
                        mq_core::ConsumerOptions::new().instance(self.inner.instance.clone()),
                    )
                    .await?;
                let inner = Arc::downgrade(&self.inner);
                tokio::spawn(async move {
                    loop {
                        let batch = match consumer.receive(64, Duration::from_secs(1)).await {
                            Ok(b) => b,
                            Err(BrokerError::Closed) => return,
                            Err(e) => {
                                tracing::warn!(error = %e, "reply consumer failed; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        };
                        let Some(inner) = inner.upgrade() else {
                            let _ = consumer.close().await;
                            return;
                        };
                        let receipts: Vec<_> = batch.iter().map(|d| d.receipt.clone()).collect();
                        for d in batch {
                            let waiter = d
                                .message
                                .properties
                                .get(CORRELATION_ID)
                                .and_then(|c| inner.pending_replies.lock().remove(c));
                            if let Some(tx) = waiter {
                                let _ = tx.send(d.message);
                            }
                        }
                        let _ = consumer.ack(&receipts).await;
                    }
                });
                Ok::<(), SendError>(())
            })
            .await
            .map(|_| ())
    }

    /// Answers a request (used by the runtime after a reply handler returns).
    pub(crate) async fn reply(
        &self,
        request: &MessageView,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        let (Some(to), Some(correlation)) = (
            request.properties.get(REPLY_TO),
            request.properties.get(CORRELATION_ID),
        ) else {
            return Ok(());
        };
        let msg = Message::new(to.clone(), body).with_property(CORRELATION_ID, correlation.clone());
        self.send_message(msg, SendOptions::new()).await.map(|_| ())
    }
}

/// A message being built; finish with [`send`](Self::send) and friends.
pub struct MessageBuilder {
    template: MqTemplate,
    destination: Result<Destination, BrokerError>,
    body: Bytes,
    keys: Vec<String>,
    properties: Vec<(String, String)>,
    tag: Option<String>,
    options: SendOptions,
}

impl MessageBuilder {
    /// Adds a business key (the default idempotency key).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Sets the tag (overrides the destination's).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Sets a user property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// Sends to the queue of `key`, so that messages with one key stay in order.
    pub fn sharding_key(mut self, key: impl Into<String>) -> Self {
        self.options.queue = mq_core::QueueSelector::ShardingKey(key.into());
        self
    }

    /// Delays delivery.
    pub fn delay(mut self, delay: Delay) -> Self {
        self.options.delay = Some(delay);
        self
    }

    /// Sets the body to `payload` as JSON.
    pub fn json<T: Serialize + ?Sized>(mut self, payload: &T) -> Result<Self, SendError> {
        self.body = Bytes::from(serde_json::to_vec(payload)?);
        Ok(self)
    }

    /// Sets the body to raw bytes.
    pub fn bytes(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn build(self) -> Result<(MqTemplate, Message, SendOptions), SendError> {
        let dest = self.destination?;
        let mut msg = Message::to_destination(dest, self.body);
        if let Some(tag) = self.tag {
            msg = msg.with_tag(tag);
        }
        for k in self.keys {
            msg = msg.with_key(k);
        }
        for (k, v) in self.properties {
            msg = msg.with_property(k, v);
        }
        Ok((self.template, msg, self.options))
    }

    /// Sends and waits until the message is stored.
    pub async fn send(self) -> Result<SendResult, SendError> {
        let (template, msg, options) = self.build()?;
        template.send_message(msg, options).await
    }

    /// Sends without waiting: the returned task resolves when the message is stored.
    pub fn send_async(self) -> tokio::task::JoinHandle<Result<SendResult, SendError>> {
        tokio::spawn(self.send())
    }

    /// Sends and forgets: failures are logged, not returned.
    pub fn send_one_way(self) {
        tokio::spawn(async move {
            if let Err(e) = self.send().await {
                tracing::warn!(error = %e, "one-way send failed");
            }
        });
    }

    /// Sends a request and waits up to `timeout` for the reply of a listener that returns a
    /// value, decoded from JSON.
    pub async fn request<R: DeserializeOwned>(self, timeout: Duration) -> Result<R, SendError> {
        let (template, msg, options) = self.build()?;
        template.ensure_reply_consumer().await?;
        let correlation = MessageId::new().to_string();
        let (tx, rx) = oneshot::channel();
        template
            .inner
            .pending_replies
            .lock()
            .insert(correlation.clone(), tx);
        let msg = msg
            .with_property(REPLY_TO, REPLY_TOPIC)
            .with_property(CORRELATION_ID, correlation.clone());
        if let Err(e) = template.send_message(msg, options).await {
            template.inner.pending_replies.lock().remove(&correlation);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => serde_json::from_slice(&reply.body).map_err(SendError::ReplyDecode),
            _ => {
                template.inner.pending_replies.lock().remove(&correlation);
                Err(SendError::ReplyTimeout(timeout))
            }
        }
    }

    /// Sends as a transactional (half) message, runs the local transaction of the listener
    /// registered as `listener` with `arg`, then commits or rolls back by its answer; an
    /// unknown answer (or a panic) is left to check-back.
    pub async fn send_in_transaction<A: Send + 'static>(
        self,
        listener: &str,
        arg: A,
    ) -> Result<TransactionSendResult, SendError> {
        let (template, msg, options) = self.build()?;
        let local = template
            .inner
            .transactions
            .read()
            .get(listener)
            .cloned()
            .ok_or_else(|| SendError::UnknownTransactionListener(listener.to_owned()))?;
        let view_topic = msg.topic().to_owned();
        let view = MessageView {
            id: msg.id(),
            topic: msg.topic().to_owned(),
            tag: msg.tag().map(str::to_owned),
            keys: msg.keys().to_vec(),
            properties: msg.properties().clone(),
            body: msg.body().clone(),
            queue_id: 0,
            queue_offset: 0,
            born_timestamp: msg.born_timestamp(),
            store_timestamp: 0,
            reconsume_times: 0,
        };
        let prepared = template
            .inner
            .broker
            .prepare(msg, options, listener)
            .await?;
        let state = match local.execute(view, Box::new(arg)) {
            Ok(fut) => tokio::spawn(fut).await.unwrap_or_else(|e| {
                tracing::error!(listener, error = %e, "local transaction panicked; left to check-back");
                TxState::Unknown
            }),
            Err(message) => {
                template
                    .inner
                    .broker
                    .end_transaction(&prepared.transaction, TxState::Rollback)
                    .await?;
                return Err(SendError::LocalTransaction {
                    listener: listener.to_owned(),
                    message,
                });
            }
        };
        let topic = view_topic;
        let send_result = template
            .inner
            .broker
            .end_transaction(&prepared.transaction, state)
            .await?;
        if send_result.is_some() {
            template.inner.metrics.sent(&topic, 1);
        }
        Ok(TransactionSendResult {
            message_id: prepared.message_id,
            transaction: prepared.transaction,
            state,
            send_result,
        })
    }
}
